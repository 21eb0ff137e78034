"""`loop init`: a commented loop.yaml guessed from a repository's own files (see repo.py)."""

from agentloop.init.repo import ConfigExists, InitResult, init_repo, inspect

__all__ = ["ConfigExists", "InitResult", "init_repo", "inspect"]
