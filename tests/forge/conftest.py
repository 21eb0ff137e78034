"""Fixtures: a loopback GitHub (REST + git smart HTTP), a small target repository, an App key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from looptest import MakeRepo

from .fake_github import FakeGitHub

SLUG = "acme/shop"
SHOP_FILES = {"app.py": "def total(a, b):\n    return a - b\n"}
SHOP_CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "pytest -q"}], "forge": {"kind": "github"}}


@pytest.fixture(scope="session")
def app_key() -> tuple[str, str]:
    """(private PEM, public PEM), generated per test session: no key is ever committed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def github(tmp_path: Path, app_key: tuple[str, str]) -> Iterator[FakeGitHub]:
    server = FakeGitHub(tmp_path / "github", app_public_key=app_key[1]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shop(github: FakeGitHub, make_repo: MakeRepo) -> Path:
    """`acme/shop` on the fake GitHub, with a loop.yaml and issue #7."""
    source = make_repo(SHOP_FILES, SHOP_CONFIG, name="shop-source")
    github.add_repo(SLUG, source)
    github.add_issue(SLUG, 7, "total() subtracts", "total(2, 3) should be 5", labels=("loop",))
    return source
