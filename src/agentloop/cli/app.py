"""`loop app manifest`: the GitHub App manifest for `loop serve`, and (`--exchange CODE`) the App's credentials.

The manifest goes to standard output as JSON (or, with `--form FILE`, into a page that POSTs it to GitHub);
the exchange writes the private key and an environment file for `loop serve`, both 0600, and prints only
where they are, never a secret.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from agentloop.app.manifest import DEFAULT_NAME, build_manifest, creation_url, exchange_code, manifest_form
from agentloop.errors import ConfigError

app = typer.Typer(help="Set the GitHub App up: its manifest and credentials.", no_args_is_help=True)
_err = Console(stderr=True, highlight=False)


def default_app_dir() -> Path:
    """Outside any repository (a key must never be committed): $XDG_CONFIG_HOME/loop/app."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "loop" / "app"


@app.command("manifest")
def manifest(
    url: Annotated[str | None, typer.Option(
        "--url", envvar="LOOP_PUBLIC_URL", show_envvar=True,
        help="The public https address of loop serve; webhooks go to URL/webhook.")] = None,
    name: Annotated[str, typer.Option(help="The App's name (unique on GitHub, at most 34 characters).")] = DEFAULT_NAME,
    redirect_url: Annotated[str | None, typer.Option(
        "--redirect-url", help="Where GitHub sends the browser with ?code= after creating the App (default: --url).")
    ] = None,
    form: Annotated[Path | None, typer.Option(
        "--form", help="Also write a page that POSTs the manifest to GitHub; open it in a browser.")] = None,
    org: Annotated[str | None, typer.Option(help="With --form: create the App in this organization.")] = None,
    github_url: Annotated[str, typer.Option(
        "--github-url", help="With --form: GitHub's web address (GitHub Enterprise Server).")] = "https://github.com",
    exchange: Annotated[str | None, typer.Option(
        "--exchange", metavar="CODE",
        help="Instead: trade the code from the redirect for the App's id, key and webhook secret.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --exchange: where the key and app.env go (default: $XDG_CONFIG_HOME/loop/app).")] = None,
) -> None:
    """Print the GitHub App manifest loop serve needs (permissions, events, webhook URL)."""
    if exchange is not None:
        _exchange(exchange, (out or default_app_dir()).expanduser())
        return
    if not url:
        raise ConfigError("--url is not set (nor LOOP_PUBLIC_URL); give the public https address GitHub "
                          "reaches loop serve at, e.g. --url https://loop.example.com")
    document = build_manifest(url, name=name, redirect_url=redirect_url)
    if form is not None:
        form.write_text(manifest_form(document, creation_url(org, github_url)), encoding="utf-8")
        _err.print(Text(f"wrote {form}: open it in a browser and press the button to create the App"),
                   soft_wrap=True)
    typer.echo(json.dumps(document, indent=2))


def _exchange(code: str, directory: Path) -> None:
    created = exchange_code(code, directory, api_url=os.environ.get("GITHUB_API_URL") or "https://api.github.com")
    lines = [
        f"created the GitHub App {created.slug} (id {created.id}) {created.html_url}".rstrip(),
        f"private key: {created.key_file} (0600)",
        f"environment for loop serve: {created.env_file} (0600; it holds the webhook secret)",
        f"next: install the App on your repositories ({_install_url(created.html_url)}), then",
        f"  set -a; . {created.env_file}; set +a; loop serve --host 0.0.0.0",
    ]
    for line in lines:
        _err.print(Text(line), soft_wrap=True)


def _install_url(html_url: str) -> str:
    return f"{html_url}/installations/new" if html_url else "the App's page on GitHub, Install App"
