"""`loop init` on hostile repositories: alias bombs, deep nesting, huge files, symlinks out, FIFOs, odd
names, shell and YAML in values. Each is refused with a line or written as inert text, the rest of the
repository is still read, the written loop.yaml loads, and nothing of the repository runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from init_cli import Cli, cli, guessed, init
from looptest import MakeRepo

__all__ = ["cli"]  # the fixture, used by name

# -- hostile repositories -----------------------------------------------------------------------------

def test_an_alias_bomb_in_compose_is_refused_and_the_rest_still_read(cli: Cli, make_repo: MakeRepo) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)) + "services: {web: {build: ., command: *i}}\n"
    repo = make_repo({"compose.yaml": bomb, "Procfile": "web: python app.py --port $PORT\n"})
    config, text, result = init(cli, repo)
    assert "compose.yaml: its anchors and aliases expand to more than" in " ".join(result.stderr.split())
    assert "# Not used:" in text
    assert config.services["web"].run == "python app.py --port {port}"  # from the Procfile


@pytest.mark.parametrize("compose", [
    "services: &s {web: {build: ., command: [*s]}}\n",  # an alias inside the node it names
    "services: " + "[" * 400_000 + "]" * 400_000 + "\n",  # nesting that would exhaust a recursive parser
    "services:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 400)),  # the same in block style
    "services:\n  web:\n    build: .\n    command: python app.py\n" + "# padding\n" * 120_000,  # over 1 MiB
    "services: {web: {build: ., command: x}}\nservices: {}\n",  # a key given twice
    "\xff\xfe not utf-8".encode("latin-1").decode("latin-1"),
])
def test_unreadable_compose_files_are_refused_with_a_line(cli: Cli, make_repo: MakeRepo, compose: str) -> None:
    repo = make_repo({"README.md": "a repository\n"})
    (repo / "compose.yaml").write_bytes(compose.encode("latin-1") if compose.startswith("\xff") else compose.encode())
    config, text, result = init(cli, repo)
    assert config.services == {}
    assert "not used: compose.yaml: " in " ".join(result.stderr.split())
    assert "# Not used:" in text


def test_a_compose_symlink_out_of_the_repository_is_refused(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    outside = tmp_path / "secret-compose.yaml"
    outside.write_text("services: {stolen: {build: ., command: cat /etc/shadow}}\n")
    repo = make_repo({"README.md": "a repository\n"})
    (repo / "compose.yaml").symlink_to(outside)
    config, text, result = init(cli, repo)
    assert config.services == {} and "stolen" not in text
    assert "compose.yaml: a symlink leading out of the repository" in " ".join(result.stderr.split())


def test_a_fifo_named_compose_yaml_does_not_hang_init(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({"README.md": "a repository\n"})
    os.mkfifo(repo / "compose.yaml")
    config, _, result = init(cli, repo)
    assert config.services == {} and "compose.yaml: not a regular file" in result.stderr


def test_odd_names_and_shell_in_commands_are_kept_as_text_and_never_run(
    cli: Cli, make_repo: MakeRepo, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    compose = {"services": {
        "My_API!": {"build": ".", "command": f"sh -c 'touch {marker}; echo $(id) `id` | tee /dev/null' && exit 0",
                    "ports": ["9000"]},
        "my-api": {"build": ".", "command": "python b.py --port 9001", "ports": ["9001"]},
        "true": {"build": ".", "command": "python c.py"},
        "evil\nforge: {kind: github}": {"build": ".", "command": "python d.py"},
        "templ": {"build": ".", "command": "python e.py --name {name}"},
        "web": {"build": ".", "command": "python f.py", "environment": {
            "INJECT": "x\nforge: {kind: github, repo: evil/evil}\n# ", "BRACES": "{not_a_placeholder}",
            "bad key": "1", "OK": "fine"}},
        "outside": {"build": "../../etc", "command": "python g.py"},
        "loop_a": {"build": ".", "command": "a", "depends_on": ["loop_b"]},
        "loop_b": {"build": ".", "command": "b", "depends_on": ["loop_a"]},
    }}
    repo = make_repo({"compose.yaml": yaml.safe_dump(compose)})
    config, text, result = init(cli, repo)
    assert not marker.exists()  # init runs nothing of the repository's
    services = config.services
    assert services["my-api"].run == f"sh -c 'touch {marker}; echo $(id) `id` | tee /dev/null' && exit 0"
    assert services["my-api-2"].run == "python b.py --port {port}"
    assert services["true"].run == "python c.py"  # a YAML word, quoted as a name
    assert services["evil-forge-kind-github"].run == "python d.py"
    assert "templ" not in services and "its command has {name}" in text
    assert services["web"].env == {"INJECT": "x\nforge: {kind: github, repo: evil/evil}\n# ", "OK": "fine"}
    assert "outside" not in services and "is not a directory of the repository" in text
    assert services["loop-a"].depends_on == [] and services["loop-b"].depends_on == []
    assert config.forge.kind == "local"
    guessed(text, "my-api:", "'My_API!'", "renamed 'my-api'")
    assert "evil" not in "".join(line for line in text.splitlines() if line.startswith("forge"))
    assert all(line.startswith(("#", " ", "-")) or not line or line.split(":")[0] in {
        "base_branch", "setup", "path", "services", "validate", "forge"} for line in text.splitlines())
    assert "Traceback" not in result.stderr


def test_every_value_reads_back_as_written() -> None:
    """Values are written plain only when YAML reads them back as the same string, in a mapping and in a
    flow list alike; anything else is double-quoted with escapes."""
    from agentloop.init.writer import _scalar

    alphabet = "aZ_./@+= &$'\"|>!%*~^()?<;\\-:#,[]{}\t\n0é\u2028"
    cases = [a + b for a in alphabet for b in alphabet] + [
        ".5", "1e3", "yes", "No", "null", "~", "0x1f", "12:30", "2024-01-01", "<<", "- x", "? x", "x #y", "x: y"]
    for text in cases:
        written = _scalar(text)
        assert yaml.safe_load(f"k: {written}")["k"] == text, (text, written)
        assert yaml.safe_load(f"k: [{written}, z]")["k"][0] == text, (text, written)
