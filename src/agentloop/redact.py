"""Keep secrets out of logs, transcripts, evidence and PR bodies.

Two layers: the values of secret-looking environment variables (whatever their shape), and
token shapes that are secret wherever they appear (Anthropic and GitHub tokens, bearer headers,
PEM private keys, `password=`-style assignments).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

MASK = "[REDACTED]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|AUTH|DATABASE_URL|DSN)", re.IGNORECASE)
_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"(?i)(authorization\s*[:=]\s*)(?:bearer|token|basic)\s+[^\s\"',]+"),
    re.compile(r"(?i)((?:x-api-key|api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
    re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"),
]


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to be worth masking)."""
    source = os.environ if env is None else env
    return sorted(
        {value for name, value in source.items() if _SECRET_NAME.search(name) and len(value) >= 8},
        key=len,
        reverse=True,
    )


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(text: str, extra: Iterable[str] = (), env: Mapping[str, str] | None = None) -> str:
    """Mask every known secret value and every secret-shaped token in `text`."""
    for value in [*sorted(set(extra), key=len, reverse=True), *secret_values(env)]:
        if value and len(value) >= 6:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: (m.group(1) or "") + MASK, text)
        else:
            text = pattern.sub(MASK, text)
    return text


def scrubbed_env(env: Mapping[str, str] | None = None, keep: Iterable[str] = ()) -> dict[str, str]:
    """A copy of the environment without secret-looking variables (the agent's commands get this)."""
    source = os.environ if env is None else env
    allowed = set(keep)
    return {k: v for k, v in source.items() if k in allowed or not _SECRET_NAME.search(k)}
