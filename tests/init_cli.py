"""`loop init` run through the real command line, and checks of what it wrote (for tests/test_init*.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentloop.cli.main import main
from agentloop.config import LoopConfig, load_config

# -- the command line ---------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    def run(*args: str, cwd: Path) -> Result:
        monkeypatch.chdir(cwd)
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own
        capfd.readouterr()
        try:
            with pytest.raises(SystemExit) as exited:
                main(["init", *args])
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capfd.readouterr()
        code = exited.value.code
        return Result(code if isinstance(code, int) else int(code is not None), out, err)

    return run


def init(cli: Cli, repo: Path, *args: str) -> tuple[LoopConfig, str, Result]:
    """Run `loop init`, check it succeeded and that what it wrote loads; (config, text, result)."""
    result = cli(*args, cwd=repo)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"wrote {repo / 'loop.yaml'}" in " ".join(result.stderr.split())
    return load_config(repo), (repo / "loop.yaml").read_text(), result


def line_of(text: str, needle: str) -> str:
    """The line of `text` holding `needle` (exactly one)."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def guessed(text: str, needle: str, *reason: str) -> None:
    """The line with `needle` is marked as a guess, saying what it was guessed from."""
    line = line_of(text, needle)
    assert "# guessed: " in line, line
    for word in reason:
        assert word in line.split("# guessed: ", 1)[1], (word, line)
