"""Keep secrets out of what the model is sent, out of every record and out of the pull request.

A `Redactor` masks two kinds of secret as `[REDACTED]`:

- **Known values**, the secrets loop itself holds: the values of secret-named environment variables
  (`*_KEY`, `*_TOKEN`, `*_SECRET`, ...), of the variables `policy.secrets` names, the GitHub App's webhook
  secret and private key (the PEM, also when `GITHUB_APP_PRIVATE_KEY` names a file), and the password of
  every `scheme://user:pass@host` URL in the environment (`LOOP_DATABASE_URL` among them). Their JSON-,
  XML- and URL-escaped forms are masked too, since records hold text in those shapes.
- **High-confidence patterns**: detect-secrets' detectors for credentials whose shape alone says
  "secret" (AWS, GitHub, GitLab, Slack, Stripe, Twilio, SendGrid, npm, PyPI, Discord, Telegram, JWTs,
  private keys, passwords in URLs, ...), plus Anthropic API keys and GitHub fine-grained tokens, which it
  lacks (and GitHub's classic tokens of any length). Its keyword and entropy detectors are left out on
  purpose: they flag ordinary code (`password = "hunter22"` in a test), and records must stay faithful to
  what the model saw -- its str_replace calls must match the file.

One Redactor is built per run (`Redactor.for_run`) and handed to whatever sends or writes text; nothing
here is global. `leaks()` finds secrets among the lines a diff adds, so a change that adds one is never
committed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape as xml_escape

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

if TYPE_CHECKING:
    from agentloop.config import LoopConfig

log = logging.getLogger(__name__)

MASK = "[REDACTED]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|AUTH|DATABASE_URL|DSN)", re.IGNORECASE)
APP_PRIVATE_KEY_ENV = "GITHUB_APP_PRIVATE_KEY"
# Secrets of the GitHub App (`loop serve`): known by name, whatever their length.
_APP_SECRETS = (APP_PRIVATE_KEY_ENV, "GITHUB_WEBHOOK_SECRET")
# Shorter values would mask ordinary words; variables only *named* like secrets need a longer value.
_MIN_KNOWN = 6
_MIN_GUESSED = 8
_MIN_LINE = 16  # a line of a multi-line secret (a PEM's body) masked on its own
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:([^/\s@]+)@")

_T = TypeVar("_T")


# -- patterns -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    group: int = 0  # the group that holds the secret (0: the whole match)
    tail: re.Pattern[str] | None = None  # what continues a token past the pattern's fixed length
    valid: Callable[[str], bool] | None = None


_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-]*")
_JWT_TAIL = re.compile(r"[A-Za-z0-9_\-.+/=]*")
# A password in a URL template or an example is no secret: `postgresql://{user}:{password}@{host}` and
# `https://user:pass@host` stay as written.
_PLACEHOLDER = re.compile(r"\{.*\}|<.*>|%\(?\w*\)?s|\*+|x+|\.{3}|pass(?:word|wd)?|pwd?|secret", re.IGNORECASE)
# detect-secrets' detectors whose match is the token itself (its length fixed by the pattern, so the
# rest of a longer token is masked too) ...
_WHOLE_TOKEN: tuple[type[RegexBasedDetector], ...] = (
    AzureStorageKeyDetector, DiscordBotTokenDetector, GitHubTokenDetector, GitLabTokenDetector, MailchimpDetector,
    OpenAIDetector, PypiTokenDetector, SendGridDetector, SlackDetector, SquareOAuthDetector, StripeDetector,
    TelegramBotTokenDetector, TwilioKeyDetector,
)
# ... and those whose first group is the secret inside some context (`://user:PASS@`, `aws_key = "..."`).
_SECRET_IN_GROUP: tuple[type[RegexBasedDetector], ...] = (AWSKeyDetector, BasicAuthDetector, NpmDetector)
# Left out: the keyword and entropy detectors (they flag ordinary code), IBM/Cloudant/SoftLayer (keyword
# patterns: `token = "<44 chars>"`), Artifactory (`AP` + 9 letters is an ordinary word) and public IPs.


def _denylist(plugin: type[RegexBasedDetector]) -> list[re.Pattern[str]]:
    # a class attribute in every plugin, typed by the base class as an (abstract) property
    return list(cast("Iterable[re.Pattern[str]]", plugin.denylist))


def _detectors() -> tuple[_Detector, ...]:
    found: list[_Detector] = []
    for plugin in _WHOLE_TOKEN:
        found += [_Detector(str(plugin.secret_type), regex, tail=_TOKEN_TAIL) for regex in _denylist(plugin)]
    for plugin in _SECRET_IN_GROUP:
        for regex in _denylist(plugin):
            grouped = regex.groups >= 1
            found.append(_Detector(str(plugin.secret_type), regex, group=1 if grouped else 0,
                                   tail=None if grouped else _TOKEN_TAIL))
    found += [_Detector(str(JwtTokenDetector.secret_type), regex, tail=_JWT_TAIL,
                        valid=JwtTokenDetector.is_formally_valid) for regex in _denylist(JwtTokenDetector)]
    # detect-secrets finds a private key by its header only; the whole block is what must go.
    found += [_Detector(str(PrivateKeyDetector.secret_type), regex) for regex in _denylist(PrivateKeyDetector)]
    found.append(_Detector(str(PrivateKeyDetector.secret_type), re.compile(
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]*)", re.DOTALL)))
    found.append(_Detector("Anthropic API Key", re.compile(r"sk-ant-[A-Za-z0-9_\-]{16,}")))
    # detect-secrets knows GitHub's classic tokens by their exact length only; any length from 20 is as sure
    github = str(GitHubTokenDetector.secret_type)
    found.append(_Detector(github, re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{20,}")))
    found.append(_Detector(github, re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")))
    return tuple(found)


_DETECTORS = _detectors()
_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY|BEGIN SSH2 ENCRYPTED PRIVATE KEY|PuTTY-User-Key-File")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]*PRIVATE KEY|END SSH2 ENCRYPTED PRIVATE KEY|Private-MAC:")
_MAX_KEY_LINES = 200  # a BEGIN line with no END does not mask the rest of a log


def _pattern_spans(text: str) -> Iterator[tuple[int, int, str]]:
    for detector in _DETECTORS:
        for match in detector.pattern.finditer(text):
            group = detector.group if match.group(detector.group) else 0
            start, end = match.span(group)
            secret = text[start:end]
            if start == end or (detector.valid is not None and not detector.valid(secret)):
                continue
            if group and _PLACEHOLDER.fullmatch(secret):
                continue
            if detector.tail is not None:
                tail = detector.tail.match(text, end)
                end = tail.end() if tail else end
            yield start, end, detector.kind


# -- known values ---------------------------------------------------------------------------------

def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def known_values(env: Mapping[str, str], *, names: Iterable[str] = (), extra: Iterable[str] = ()) -> set[str]:
    """The secret values loop holds in `env`: see the module's docstring. `names` are the variables
    `policy.secrets` names; `extra` values known otherwise (a forge's token)."""
    named = set(names)
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if name == APP_PRIVATE_KEY_ENV:  # the key itself, or the path of its file (which is no secret)
            found |= _usable(name, _private_key(value), _MIN_KNOWN)
            found |= set() if _is_path(value) else _usable(name, value, _MIN_KNOWN)
            continue
        if name in named or name in _APP_SECRETS:
            found |= _usable(name, value, _MIN_KNOWN, warn=name in named)
        elif is_secret_name(name) and not _is_path(value):
            found |= _usable(name, value, _MIN_GUESSED)
        for match in _URL_PASSWORD.finditer(value):
            found |= _usable(name, unquote(match.group(1)), _MIN_KNOWN) | _usable(name, match.group(1), _MIN_KNOWN)
    found |= {value for value in extra if value and len(value) >= _MIN_KNOWN}
    return found


def _usable(name: str, value: str, minimum: int, *, warn: bool = False) -> set[str]:
    if len(value.strip()) >= minimum:
        return {value}
    if warn:  # the user named it in policy.secrets: say why it is not masked (never what it is)
        log.warning("policy.secrets: the value of %s is shorter than %d characters, too short to mask without "
                    "masking ordinary text; it is not masked", name, minimum)
    return set()


def _is_path(value: str) -> bool:
    # `SSH_AUTH_SOCK=/tmp/ssh-x/agent.1` names a path, which is no secret and is shown everywhere.
    return value.startswith("/") and "\n" not in value and len(value) < 4096 and Path(value).exists()


def _private_key(value: str) -> str:
    """The PEM behind `GITHUB_APP_PRIVATE_KEY` (the key itself, or the path of its file, as
    forge.auth.load_private_key reads it)."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.replace("\\n", "\n")
    path = Path(text).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip() if len(text) < 4096 and path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def _variants(value: str) -> set[str]:
    """`value` and the forms records hold it in: JSON- and XML-escaped, percent-encoded, and each long
    line of a multi-line value (a PEM printed line by line)."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], xml_escape(value),
             quote(value, safe="")}
    lines = [line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_LINE]
    if len(lines) > 1:
        forms |= {form for line in lines for form in _variants(line)}
    return {form for form in forms if len(form) >= _MIN_KNOWN}


# -- the redactor ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leak:
    """A secret among the lines a change adds: where, and what kind (never the value)."""

    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.kind})"


class Redactor:
    """Masks the known `values` and the high-confidence patterns in text and in JSON-like data."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values = frozenset(value for value in values if value)
        variants = sorted({form for value in self._values for form in _variants(value)}, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, variants))) if variants else None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, *, names: Iterable[str] = (),
                         extra: Iterable[str] = ()) -> Redactor:
        return cls(known_values(os.environ if env is None else env, names=names, extra=extra))

    @classmethod
    def for_run(cls, config: LoopConfig, env: Mapping[str, str] | None = None, *,
                extra: Iterable[str] = ()) -> Redactor:
        """The run's redactor: the environment's secrets, those `policy.secrets` names, and `extra`."""
        return cls.from_environment(env, names=config.policy.secrets, extra=extra)

    def with_values(self, *values: str) -> Redactor:
        """A redactor that also masks `values`."""
        return Redactor({*self._values, *(value for value in values if value and len(value) >= _MIN_KNOWN)})

    @property
    def values(self) -> frozenset[str]:
        return self._values

    def findings(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, kind) of every secret in `text`, overlapping ones merged, in order."""
        spans = [(m.start(), m.end(), "known secret value") for m in self._known.finditer(text)] if self._known else []
        spans += _pattern_spans(text)
        merged: list[tuple[int, int, str]] = []
        for start, end, kind in sorted(spans):
            if merged and start <= merged[-1][1]:
                last = merged[-1]
                merged[-1] = (last[0], max(last[1], end), last[2])
            else:
                merged.append((start, end, kind))
        return merged

    def mask(self, text: str) -> str:
        if not text:
            return text
        parts: list[str] = []
        position = 0
        for start, end, _ in self.findings(text):
            parts += [text[position:start], MASK]
            position = end
        return "".join(parts) + text[position:] if parts else text

    def line_mask(self) -> Callable[[str], str]:
        """A mask for a stream of lines (a service's log, one line at a time): a private key's body lines,
        which look like nothing on their own, are masked from its BEGIN line to its END line."""
        inside = 0

        def mask_line(line: str) -> str:
            nonlocal inside
            if inside:
                inside = 0 if _PEM_END.search(line) or inside > _MAX_KEY_LINES else inside + 1
                return MASK
            if _PEM_BEGIN.search(line) and not _PEM_END.search(line):
                inside = 1
            return self.mask(line)

        return mask_line

    def mask_data(self, value: _T) -> _T:
        """`value` with every string in it masked (dicts, lists and tuples are walked; keys kept)."""
        return self._walk(value)  # type: ignore[no-any-return]

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {key: self._walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._walk(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._walk(item) for item in value)
        return value

    def mask_file(self, path: Path) -> bool:
        """Mask a text file in place (atomically); binary bytes pass through. True when it changed."""
        try:
            raw = path.read_bytes()
        except OSError:
            return False
        text = raw.decode("utf-8", errors="surrogateescape")
        masked = self.mask(text)
        if masked == text:
            return False
        tmp = path.with_name(f".{path.name}.masking")
        tmp.write_bytes(masked.encode("utf-8", errors="surrogateescape"))
        os.replace(tmp, path)
        return True

    def mask_tree(self, folder: Path, *, skip: Sequence[str] = ()) -> list[Path]:
        """Mask every file under `folder` (but those whose name is in `skip`); the files changed."""
        changed = []
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.is_symlink() and path.name not in skip and self.mask_file(path):
                changed.append(path)
        return changed

    def leaks(self, patch: str) -> list[Leak]:
        """The secrets among the lines a unified diff adds, by file and line of the new version."""
        found: list[Leak] = []
        path, line, in_hunk = "", 0, False
        for raw in patch.splitlines():
            if raw.startswith("diff --git "):
                path, line, in_hunk = _new_path(raw.rsplit(" b/", 1)[-1]), 0, False
            elif not in_hunk and raw.startswith("+++ "):
                path = _new_path(raw[4:].removeprefix("b/")) if raw[4:] != "/dev/null" else path
            elif raw.startswith("@@"):
                hunk = re.match(r"@@ -\d+(?:,\d+)? \+(\d+)", raw)
                line, in_hunk = (int(hunk.group(1)) if hunk else 0), True
            elif in_hunk and raw.startswith("+"):
                kinds = sorted({kind for _, _, kind in self.findings(raw[1:])})
                if kinds:
                    found.append(Leak(path, line, ", ".join(kinds)))
                line += 1
            elif in_hunk and raw.startswith(" "):
                line += 1
            elif in_hunk and not raw.startswith(("-", "\\")):
                in_hunk = False  # `GIT binary patch` and the like: no lines to scan
        return found


def _new_path(text: str) -> str:
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):  # git quotes unusual names C-style
        text = text[1:-1].encode("latin-1", errors="ignore").decode("unicode_escape", errors="replace")
        text = text.removeprefix("b/")
    return text


def describe_leaks(leaks: Sequence[Leak], limit: int = 10) -> str:
    """One sentence naming where the secrets are (never what they are) and what to do."""
    shown = ", ".join(str(leak) for leak in leaks[:limit])
    more = f" and {len(leaks) - limit} more" if len(leaks) > limit else ""
    return (f"the change adds what looks like a secret at {shown}{more}; it was not committed or published "
            "(read secrets from the environment instead of writing them into the code)")


# -- helpers for code without a run's redactor ------------------------------------------------------

def redact(text: str, extra: Iterable[str] = (), env: Mapping[str, str] | None = None) -> str:
    """Mask the environment's secrets, `extra` values and secret patterns in `text` (for messages
    written outside a run, where no run's Redactor is at hand)."""
    return Redactor.from_environment(env, extra=extra).mask(text)


def scrubbed_env(env: Mapping[str, str] | None = None, keep: Iterable[str] = ()) -> dict[str, str]:
    """A copy of the environment without secret-looking variables."""
    source = os.environ if env is None else env
    allowed = set(keep)
    return {k: v for k, v in source.items() if k in allowed or not _SECRET_NAME.search(k)}
