"""Forges: where issues and pull requests live. The protocol in `base`, one implementation per module."""
