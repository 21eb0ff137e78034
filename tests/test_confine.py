"""The jail itself, tried as hostile code would: every escape below must fail while loop carries on.

Real bubblewrap, real processes; skipped where bubblewrap is not usable (the README says what then holds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentloop.config import Limits, PolicyConfig
from agentloop.confine import JAIL_UID_ENV, Confinement, ConfinementUnavailable, Finished

JAIL = Confinement(PolicyConfig())
needs_bwrap = pytest.mark.skipif(not JAIL.confined, reason="bubblewrap is not usable on this machine")


def _run(tmp_path: Path, script: str, *, network: bool = False, timeout: float = 60, **limits: int) -> Finished:
    worktree = tmp_path / "worktree"
    worktree.mkdir(exist_ok=True)
    confinement = Confinement(PolicyConfig(limits=Limits(**limits)))
    home = tmp_path / "home"
    env = confinement.env({}, home=home, path_first=[Path(sys.executable).parent])
    return confinement.run(
        ["/bin/bash", "-c", script], cwd=worktree, env=env, writable=[worktree],
        home=home, network=network, timeout=timeout, output_limit=20_000, watch_disk=worktree,
    )


@needs_bwrap
def test_loops_processes_and_their_environment_are_invisible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-value-0123456789")
    result = _run(tmp_path, "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ls /proc | grep -c '^[0-9]'; env")
    assert "sk-ant-planted" not in result.output
    # only the jail's own few processes exist in its PID namespace
    counts = [int(line) for line in result.output.splitlines() if line.isdigit()]
    assert counts and counts[0] < 10
    assert str(os.getpid()) not in result.output.split()


@needs_bwrap
def test_the_host_is_out_of_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_home = tmp_path / "user-home"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "id_rsa").write_text("PLANTED-PRIVATE-KEY\n")
    monkeypatch.setenv("HOME", str(fake_home))
    outside = tmp_path / "outside.txt"
    host_tmp = Path("/tmp") / f"loop-escape-{os.getpid()}"
    result = _run(tmp_path, f"cat {fake_home}/.ssh/id_rsa; cat /etc/shadow; ls /root; echo x > {outside}; "
                            f"echo x > {host_tmp}; echo inside > made.txt; echo $HOME")
    assert "PLANTED-PRIVATE-KEY" not in result.output
    assert "root:" not in result.output  # /etc/shadow is hidden
    assert not outside.exists() and not host_tmp.exists()
    assert (tmp_path / "worktree" / "made.txt").read_text() == "inside\n"
    assert str(fake_home) not in result.output.splitlines()[-1]


@needs_bwrap
def test_a_fork_bomb_is_contained_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The process limit counts every process of the jail's uid on the machine: with the shared default uid, the
    # jails of tests running beside this one would share (and be starved by) the bomb's 64 processes.
    monkeypatch.setenv(JAIL_UID_ENV, "64999")
    result = _run(tmp_path, "bomb() { bomb | bomb & }; bomb; sleep 600", timeout=10, processes=64)
    assert "Resource temporarily unavailable" in result.output  # the process limit held
    assert result.timed_out and "killed after" in (result.stopped_for or "")
    # the jail and every process in it are gone; the next command runs as usual
    assert _run(tmp_path, "echo next").output.strip() == "next"


@needs_bwrap
def test_a_huge_file_is_cut_at_the_file_size_limit(tmp_path: Path) -> None:
    result = _run(tmp_path, "head -c 50M /dev/zero > big.bin; echo exit=$?", file_size_mb=8)
    big = tmp_path / "worktree" / "big.bin"
    assert big.stat().st_size <= 8 * 1024 * 1024
    assert "exit=0" not in result.output


@needs_bwrap
def test_many_files_stop_at_the_disk_limit(tmp_path: Path) -> None:
    script = "for i in $(seq 1 400); do head -c 1M /dev/urandom > f$i.bin || break; done; sleep 30"
    result = _run(tmp_path, script, disk_mb=16, file_size_mb=4, timeout=120)
    assert result.stopped_for and "policy.limits.disk_mb" in result.stopped_for
    assert not result.timed_out


@needs_bwrap
def test_the_private_tmp_is_bounded(tmp_path: Path) -> None:
    result = _run(tmp_path, "head -c 40M /dev/zero > /tmp/fill; echo exit=$?; df -m /tmp | tail -1", tmp_mb=16)
    assert "exit=0" not in result.output and "No space left" in result.output


def test_endless_output_keeps_a_head_and_a_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not JAIL.confined:
        monkeypatch.setenv("LOOP_ALLOW_UNCONFINED", "1")
    result = _run(tmp_path, "echo FIRST; head -c 300M /dev/zero | tr '\\0' 'x'; echo; echo LAST")
    assert result.truncated and result.exit_code == 0
    assert result.output.startswith("FIRST") and result.output.rstrip().endswith("LAST")
    assert len(result.output) < 25_000


@needs_bwrap
def test_commands_have_no_network_unless_the_policy_allows(tmp_path: Path) -> None:
    server = subprocess.Popen(["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split("port ")[1].split(" ")[0]
        probe = f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/').status)\""
        assert "200" not in _run(tmp_path, probe, network=False).output
        assert "200" in _run(tmp_path, probe, network=True).output
    finally:
        server.kill()
        server.wait()


def test_without_bubblewrap_nothing_runs_unless_the_user_opts_in(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOP_ALLOW_UNCONFINED", raising=False)
    refused = Confinement(PolicyConfig(), use_bwrap=False)
    with pytest.raises(ConfinementUnavailable, match="--allow-unconfined"):
        refused.argv(["true"], cwd=tmp_path, writable=[tmp_path], home=tmp_path / "h", network=False)
    allowed = Confinement(PolicyConfig(allow_unconfined=True), use_bwrap=False)
    assert allowed.argv(["true"], cwd=tmp_path, writable=[tmp_path], home=tmp_path / "h", network=False)[-1] == "true"
    assert allowed.describe()["confined"] is False
