"""GitHub App authentication: an RS256 JWT for the App, exchanged for installation tokens.

The JWT is short-lived (issued 60 s in the past against clock drift, expiring within 10 minutes, as
GitHub requires). Installation tokens live an hour; they are cached per installation and renewed a few
minutes before they expire. Neither the key nor a token is ever logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt

from agentloop.errors import ConfigError, LoopError

log = logging.getLogger(__name__)

_JWT_BACKDATE = 60
_JWT_LIFETIME = 9 * 60  # GitHub rejects an exp more than 10 minutes ahead; leave room for drift
_RENEW_BEFORE = 5 * 60


class AppAuthError(LoopError):
    """GitHub refused the App's credentials (wrong app id, key or installation)."""


def load_private_key(value: str) -> str:
    """`GITHUB_APP_PRIVATE_KEY` may hold the PEM itself or a path to it."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.replace("\\n", "\n") + "\n"
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            "GITHUB_APP_PRIVATE_KEY: neither a PEM (-----BEGIN ... PRIVATE KEY-----) nor a readable file; "
            "set it to the App's private key or the path of the .pem file GitHub gave you"
        )
    return path.read_text(encoding="utf-8")


class AppAuth:
    """Tokens for one GitHub App. Thread-safe: the worker pool shares one instance."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        *,
        api_url: str = "https://api.github.com",
        transport: httpx.BaseTransport | None = None,
    ):
        if not str(app_id).strip():
            raise ConfigError("GITHUB_APP_ID is empty; set it to the App ID shown on the App's settings page")
        self.app_id = str(app_id).strip()
        self._key = private_key
        self._api_url = api_url.rstrip("/")
        self._transport = transport
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[str, float]] = {}

    def app_jwt(self, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time()) - _JWT_BACKDATE
        claims = {"iat": issued, "exp": issued + _JWT_BACKDATE + _JWT_LIFETIME, "iss": self.app_id}
        try:
            return jwt.encode(claims, self._key, algorithm="RS256")
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"GITHUB_APP_PRIVATE_KEY: not a usable RSA private key ({type(exc).__name__}); "
                "download a new key from the App's settings page"
            ) from None

    def installation_token(self, installation_id: int) -> str:
        """A token for the installation, from the cache while it has more than a few minutes left."""
        with self._lock:
            cached = self._cache.get(installation_id)
            if cached and cached[1] - _RENEW_BEFORE > time.time():
                return cached[0]
            token, expires_at = self._exchange(installation_id)
            self._cache[installation_id] = (token, expires_at)
            return token

    def token_for(self, installation_id: int | None) -> Callable[[], str]:
        """A callable for GitHubForge(token=...) that always yields a fresh-enough token."""
        if installation_id is None:
            raise AppAuthError("the webhook carried no installation id; is the App installed on the repository?")
        return _InstallationToken(self, installation_id)

    def _exchange(self, installation_id: int) -> tuple[str, float]:
        url = f"{self._api_url}/app/installations/{installation_id}/access_tokens"
        headers = {
            "Authorization": f"Bearer {self.app_jwt()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        with httpx.Client(transport=self._transport, timeout=30.0) as client:
            try:
                response = client.post(url, headers=headers)
            except httpx.HTTPError as exc:
                raise AppAuthError(f"{url}: cannot reach GitHub ({type(exc).__name__}); check GITHUB_API_URL") from None
        if response.status_code != 201:
            raise AppAuthError(
                f"installation {installation_id}: GitHub answered {response.status_code} to the token exchange; "
                "check GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY and that the App is installed on the repository"
            )
        try:
            data = response.json()
            token = data["token"]
        except (ValueError, KeyError, TypeError):
            data, token = {}, None
        if not isinstance(token, str) or not token:
            raise AppAuthError(f"installation {installation_id}: GitHub's token exchange answer carries no token; "
                               "check GITHUB_API_URL points at the GitHub API")
        log.info("installation %s: new access token", installation_id)
        return token, _parse_time(str(data.get("expires_at", "")))


class _InstallationToken:
    def __init__(self, auth: AppAuth, installation_id: int):
        self._auth = auth
        self._installation_id = installation_id

    def __call__(self) -> str:
        return self._auth.installation_token(self._installation_id)


def _parse_time(value: str) -> float:
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return time.time() + 3600  # GitHub's documented lifetime when it leaves expires_at out
