"""The App's tests share the forge's far end: a loopback GitHub, a target repository on it, an App key."""

from forge.conftest import SLUG, app_key, github, shop

__all__ = ["SLUG", "app_key", "github", "shop"]
