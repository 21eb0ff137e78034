"""App auth against the loopback GitHub, and `loop serve`'s configuration errors."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from forge.fake_github import FakeGitHub

from agentloop.app.auth import AppAuth, AppAuthError, load_private_key
from agentloop.cli.serve import build_app
from agentloop.errors import ConfigError


def test_jwt_is_rs256_backdated_and_short(app_key: tuple[str, str]) -> None:
    token = AppAuth("42", app_key[0]).app_jwt(now=1_700_000_000)
    claims = jwt.decode(token, app_key[1], algorithms=["RS256"], options={"verify_exp": False})
    assert claims["iss"] == "42" and claims["iat"] == 1_700_000_000 - 60
    assert claims["exp"] - 1_700_000_000 <= 600


def test_installation_token_is_exchanged_once_and_cached(github: FakeGitHub, app_key: tuple[str, str]) -> None:
    auth = AppAuth(github.app_id, app_key[0], api_url=github.api_url)
    first = auth.installation_token(4242)
    assert auth.token_for(4242)() == first and github.issued_tokens == 1
    assert first in github.tokens


def test_wrong_key_is_a_clear_error(github: FakeGitHub) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(AppAuthError, match="401.*GITHUB_APP_PRIVATE_KEY"):
        AppAuth(github.app_id, other, api_url=github.api_url).installation_token(1)


def test_private_key_from_path_or_pem(tmp_path: Path, app_key: tuple[str, str]) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text(app_key[0])
    assert load_private_key(str(pem)) == app_key[0]
    assert load_private_key(app_key[0]).strip() == app_key[0].strip()
    with pytest.raises(ConfigError, match="GITHUB_APP_PRIVATE_KEY"):
        load_private_key(str(tmp_path / "missing.pem"))


def test_serve_names_the_missing_setting(tmp_path: Path, app_key: tuple[str, str]) -> None:
    env = {"GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": app_key[0]}
    with pytest.raises(ConfigError, match="GITHUB_WEBHOOK_SECRET is not set"):
        build_app(workdir=tmp_path, env=env)
    app = build_app(workdir=tmp_path, env={**env, "GITHUB_WEBHOOK_SECRET": "s"})
    assert app is not None and (tmp_path / "queue.sqlite3").exists()
