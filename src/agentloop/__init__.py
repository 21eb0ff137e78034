"""loop: drive a coding agent through edit -> sandbox deploy -> test -> logs -> fix, then open a PR."""

__version__ = "0.1.0"
