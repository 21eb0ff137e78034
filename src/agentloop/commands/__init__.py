"""CLI sub-commands that live outside cli.py (each exposes a typer command function)."""
