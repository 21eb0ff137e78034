"""Who may see a run page: a signed, expiring token bound to one run (HS256 with the server's secret), or
the person at the machine when `loop ui` serves on 127.0.0.1.

`run_page_url(run_id)` is what the publish step can put in a pull request: `$LOOP_PUBLIC_URL/ui/runs/<id>?token=...`.
The secret is `LOOP_PAGES_SECRET`, or one derived from `GITHUB_WEBHOOK_SECRET` (so `loop serve` needs no new
setting); without either, no URL can be made and None is returned."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from urllib.parse import quote

import jwt

SECRET_ENV = "LOOP_PAGES_SECRET"
PUBLIC_URL_ENV = "LOOP_PUBLIC_URL"
MOUNT = "/ui"
DEFAULT_TTL = 7 * 24 * 3600  # a pull request is usually reviewed within a week
ALL_RUNS = "*"  # a token for the list of runs and every run page (an operator's)
_ALGORITHM = "HS256"
_AUDIENCE = "loop-run-page"


def pages_secret(env: Mapping[str, str] | None = None) -> bytes | None:
    """The secret tokens are signed from: LOOP_PAGES_SECRET, else the App's webhook secret."""
    source = os.environ if env is None else env
    explicit = source.get(SECRET_ENV, "").strip()
    if explicit:
        return explicit.encode()
    webhook = source.get("GITHUB_WEBHOOK_SECRET", "").strip()
    return webhook.encode() if webhook else None


def _signing_key(secret: bytes) -> bytes:
    """Tokens are signed with a key derived from the secret, never the secret itself (a webhook secret
    signs webhooks), and of HS256's full length whatever the secret's."""
    return hmac.new(secret, b"loop run pages v1", hashlib.sha256).digest()


def make_token(secret: bytes, run_id: str, ttl: float = DEFAULT_TTL, now: float | None = None) -> str:
    """A token that opens the page of `run_id` (or every page, with ALL_RUNS) for `ttl` seconds."""
    issued = int(now if now is not None else time.time())
    claims = {"run": run_id, "aud": _AUDIENCE, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, _signing_key(secret), algorithm=_ALGORITHM)


def token_allows(secret: bytes, token: str | None, run_id: str | None) -> bool:
    """Whether `token` is signed with `secret`, unexpired, and for `run_id` (None: the list of runs)."""
    if not token or len(token) > 4096:
        return False
    try:
        claims = jwt.decode(token, _signing_key(secret), algorithms=[_ALGORITHM], audience=_AUDIENCE,
                            options={"require": ["exp", "run", "aud"]})
    except jwt.PyJWTError:
        return False
    granted = claims.get("run")
    return granted == ALL_RUNS or (run_id is not None and granted == run_id)


def run_page_url(run_id: str, *, base_url: str | None = None, ttl: float = DEFAULT_TTL,
                 env: Mapping[str, str] | None = None) -> str | None:
    """The run page's address with a token, for a pull request body; None when LOOP_PUBLIC_URL (or
    `base_url`) or the secret is not set."""
    source = os.environ if env is None else env
    base = (base_url or source.get(PUBLIC_URL_ENV, "")).strip().rstrip("/")
    secret = pages_secret(source)
    if not base or secret is None:
        return None
    return f"{base}{MOUNT}/runs/{quote(run_id, safe='')}?token={make_token(secret, run_id, ttl)}"
