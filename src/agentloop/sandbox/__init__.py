"""Sandbox backends: the protocol in `base`, one implementation per module."""
