"""GitHub's rules for owner and repository names, checked before a name becomes part of a path or URL.

A webhook is signed by GitHub, but the names it carries end up as directories of the App's work
directory and in API paths; `../../x` must never get that far.
"""

from __future__ import annotations

import re

from agentloop.errors import LoopError

# 1-39 characters, letters, digits and single hyphens, neither first nor last (GitHub's sign-up rule)
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class BadRepositoryName(LoopError):
    """An owner/name that GitHub would never have issued."""


def split_slug(slug: str) -> tuple[str, str]:
    """`owner/name` -> (owner, name), or BadRepositoryName saying which part breaks which rule."""
    owner, sep, name = slug.partition("/") if isinstance(slug, str) else ("", "", "")
    if not sep:
        raise BadRepositoryName(f"repository {slug!r}: expected owner/name")
    if not _OWNER.fullmatch(owner):
        raise BadRepositoryName(
            f"repository {slug!r}: owner {owner!r} is not a GitHub account name "
            "(1-39 letters, digits or single hyphens, not starting or ending with a hyphen)"
        )
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise BadRepositoryName(
            f"repository {slug!r}: name {name!r} is not a GitHub repository name "
            "(1-100 letters, digits, '.', '_' or '-', and not '.' or '..')"
        )
    return owner, name

