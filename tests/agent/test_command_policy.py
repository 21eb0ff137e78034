"""The command policy matches the program each part of a line really runs.

Every bypass below is refused under the default policy (deny `git push*`, `curl *`, `wget *`, `sudo *`). Those
marked `curl` or `push` are also run by real bash, with stand-ins for curl and wget first on PATH and real git
tracing into a file, to show that each one really reaches the program the policy must stop."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agentloop.agent.command_policy import CommandPolicy, simple_commands
from agentloop.config import PolicyConfig

CURL, PUSH = "curl", "push"  # what real bash runs: a stand-in for curl/wget, or `git push`

BYPASSES: list[tuple[str, str | None]] = [
    # `#` starts a comment only at the start of a word
    ("echo a#b; curl x", CURL),
    ("echo a#b && git push", PUSH),
    # paths, quotes, backslashes, line continuations, ANSI-C quoting, brace and glob expansion
    ("/usr/bin/curl x", None),
    ("\\/usr/bin/curl x", None),
    ("c''url x", CURL),
    ('c"u"rl x', CURL),
    ("\\curl x", CURL),
    ("cu\\\nrl x", CURL),
    ("$'\\x63url' x", CURL),
    ("{cu,}rl x", CURL),
    ("./cur? x", CURL),
    # programs computed at run time
    ("X=curl; $X x", CURL),
    ('"$(echo curl)" x', CURL),
    ("${X:-curl} x", CURL),
    ('a=(curl x); "${a[@]}"', CURL),
    # substitutions, compound commands, functions
    ("echo $(curl x)", CURL),
    ("echo `curl x`", CURL),
    ("cat <(curl x)", CURL),
    ("cat <<< $(curl x)", CURL),
    ("{ curl x; }", CURL),
    ("(curl x)", CURL),
    ("f() { curl x; }; f", CURL),
    ("if true; then curl x; fi", CURL),
    ("for i in 1; do wget x; done", CURL),
    ("case a in a) curl x;; esac", CURL),
    ("[[ -n $(curl x) ]]", CURL),
    ("! curl x", CURL),
    ("cat <<EOF\n`curl x`\nEOF", CURL),
    ("cat <<EOF\n$(curl x)\nEOF", CURL),
    ("true\ncurl x", CURL),
    # shell code in words
    ('eval "curl x"', CURL),
    ("builtin eval 'curl x'", CURL),
    ("bash -c 'curl x'", CURL),
    ('sh -c "curl x"', CURL),
    ("dash -c 'curl x'", CURL),
    ("zsh -c 'curl x'", None),
    ("bash -xec 'curl x'", CURL),
    ("bash -o pipefail -c 'curl x'", CURL),
    ("sh -c 'curl \"$1\"' _ x", CURL),
    ("bash -c \"bash -c 'git push'\"", PUSH),
    ("echo curl x | bash", CURL),
    ("sh <<< 'curl x'", CURL),
    ("trap 'curl x' EXIT", CURL),
    ("shopt -s expand_aliases\nalias c=curl\nc x", CURL),
    ("eval $(echo curl x)", CURL),
    # wrappers
    ("env curl x", CURL),
    ("env -u HOME FOO=1 curl x", CURL),
    ("env -i curl x", None),
    ("env -S 'curl x'", CURL),
    ("command curl x", CURL),
    ("command -p curl x", None),
    ("exec curl x", CURL),
    ("nohup curl x", CURL),
    ("nice -n 10 curl x", CURL),
    ("timeout 5 curl x", CURL),
    ("timeout -s KILL 5s curl x", CURL),
    ("echo u | xargs curl", CURL),
    ("echo u | xargs -n1 -P2 wget", CURL),
    ("echo curl x | xargs -I{} sh -c '{}'", CURL),
    ("time curl x", CURL),
    ("stdbuf -oL curl x", CURL),
    ("setsid -w curl x", CURL),
    ("flock lockfile -c 'curl x'", CURL),
    ("sudo curl x", None),
    ("busybox wget x", None),
    ("coproc curl x; wait", CURL),
    ("find . -maxdepth 0 -exec curl {} \\;", CURL),
    ("/usr/bin/env timeout 5 nice curl x", CURL),
    # git's global options, aliases and command-valued settings
    ("git -C . push", PUSH),
    ("git --git-dir=.git --work-tree=. push", PUSH),
    ("git -P --no-pager push origin", PUSH),
    ("git $(echo push)", PUSH),
    ("git -c alias.p=push p", PUSH),
    ("GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=alias.p GIT_CONFIG_VALUE_0=push git p", PUSH),
    ("git -c alias.p='!curl x' p", CURL),
    ("GIT_SSH_COMMAND='curl x' git fetch ssh://example.invalid/x", CURL),
    ("git -c core.pager='curl x' log", None),
    ("git config alias.p push", None),
    ("git -c protocol.ext.allow=always ls-remote 'ext::sh -c curl% x'", CURL),
    ("git archive --remote=x --exec='curl x'", CURL),
    ("git fetch --upload-pack='curl x' localhost:/x", None),
    # found by running candidates through bash: each of these reached curl before it was handled
    ("time { curl x; }", CURL),
    ("! { curl x; }", CURL),
    ("echo ${x:-`curl x`}", CURL),
    ("echo `echo \\`curl x\\``", CURL),
    ("x='$(curl x)'; echo ${x@P}", CURL),
    ("PS4='$(curl x)'; set -x; :", CURL),
    ("x='a[$(curl x)]'; echo $((x))", CURL),
    ("[[ 1 -eq 'a[$(curl x)]' ]]", CURL),
    ('let "a[\\$(curl x)]=1"', CURL),
    ('declare "a[\\$(curl x)]=1"', CURL),
    ('hash -p "$PWD/curl" ls; ls x', CURL),
    ("env - PATH=\"$PATH\" curl x", CURL),
    ("eval -- 'curl x'", CURL),
    ("echo curl x | xargs sh -c", CURL),
    ("source <(echo curl x)", CURL),
    ("bash /dev/stdin <<< 'curl x'", CURL),
    ("BASH_ENV=<(echo curl x) bash -c ':'", CURL),
    ("unshare curl x", CURL),
    ("script -qc 'curl x' /dev/null", CURL),
    ("mapfile -C 'curl x' -c 1 <<< a", CURL),
]

ALLOWED = [
    "pytest -q tests",
    "python3 -m pytest -k 'a or b'",
    "git diff HEAD~1",
    'grep -rn "#include" src',
    "echo 'a#b'",
    "echo a#b",
    "ls | wc -l",
    "cd services && python3 -m pytest",
    "FOO=1 pytest",
    "cat > notes.md <<'EOF'\n# Notes\nrun `curl x` and $(wget y) by hand\nEOF",
    "cat > app.py << EOF\nx = 1  # a comment\nEOF",
    "sed -i 's/#//' f",
    'for f in *.py; do wc -l "$f"; done',
    "git log --oneline -5 --format='%h %s'",
    "git -C services status",
    "git -c color.ui=never diff --stat",
    "find . -name '*.pyc' -exec rm {} +",
    "find . -name '*.py' | xargs grep -n TODO",
    "timeout 60 python3 -m pytest -x",
    "env PYTHONPATH=src python3 -c 'import app'",
    'env PATH="$PATH:/opt/x" python3 -m app',
    "bash -c 'cd services && pytest -q'",
    "bash scripts/check.sh",
    "python3 - <<'PY'\nimport os\nprint(os.getcwd())\nPY",
    'command -v curl || echo "no curl here"',
    "grep -rn 'curl ' docs/ | head",
    'x=$(git rev-parse HEAD) && echo "$x"',
    '[ "$(ls | wc -l)" -gt 0 ] && echo some',
    "diff <(sort a) <(sort b)",
    "mkdir -p src/{a,b} && cp app.py{,.bak}",
    "echo $((2**10)); (( i++ ))",
    'case "$1" in -h) echo usage;; *) echo "$1";; esac',
    "if [[ -f x && $y == z* ]]; then echo y; fi",
    "echo hi  # then curl x, in a comment",
    "nohup python3 -m http.server 8000 > /dev/null 2>&1 &",
    'while IFS= read -r line; do echo "$line"; done < f',
    "export PYTHONPATH=src; python3 -m app",
    "trap 'rm -f /tmp/x' EXIT; touch /tmp/x",
    "python3 -c 'import subprocess'  # another language: left to the confinement",
]


def _default() -> CommandPolicy:
    return CommandPolicy(PolicyConfig())


@pytest.mark.parametrize(("line", "runs"), BYPASSES, ids=[repr(line)[1:40] for line, _ in BYPASSES])
def test_bypass_attempts_are_refused_by_the_default_policy(line: str, runs: str | None) -> None:
    refusal = _default().refusal(line)
    assert refusal is not None, f"{line!r} got through"
    assert "loop.yaml" in refusal
    named = any(p in refusal for p in ("'curl *'", "'wget *'", "'git push*'", "'sudo *'"))
    assert named or "cannot be checked against policy.deny in loop.yaml" in refusal, refusal


@pytest.fixture
def bash_with_stand_ins(tmp_path: Path) -> tuple[Path, dict[str, str], Path, Path]:
    """A git repository to run lines in, with curl and wget stand-ins first on PATH (and `./curl`)."""
    log, trace = tmp_path / "ran.log", tmp_path / "git-trace.log"
    stubs, repo = tmp_path / "bin", tmp_path / "repo"
    stubs.mkdir()
    repo.mkdir()
    for name in ("curl", "wget"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (stubs / name).chmod(0o755)
    shutil.copy(stubs / "curl", repo / "curl")
    env = {"PATH": f"{stubs}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TRACE": str(trace),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    return repo, env, log, trace


RUNNABLE = [(line, runs) for line, runs in BYPASSES if runs]


@pytest.mark.parametrize(("line", "runs"), RUNNABLE, ids=[repr(line)[1:40] for line, _ in RUNNABLE])
def test_each_bypass_really_reaches_the_program_under_bash(
        line: str, runs: str, bash_with_stand_ins: tuple[Path, dict[str, str], Path, Path]) -> None:
    repo, env, log, trace = bash_with_stand_ins
    for tool in ("dash", "flock", "stdbuf", "setsid", "unshare", "script"):
        if line.startswith(tool) and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    subprocess.run(["bash", "-c", line], cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=120, check=False)
    if runs == CURL:
        ran = log.read_text() if log.exists() else ""
        assert ran.startswith(("curl ", "wget ")), f"{line!r} did not run curl/wget"
    else:
        assert "built-in: git push" in trace.read_text(), f"{line!r} did not run git push"


@pytest.mark.parametrize("line", ALLOWED, ids=[repr(line)[1:40] for line in ALLOWED])
def test_ordinary_commands_stay_allowed(line: str) -> None:
    assert _default().refusal(line) is None


def test_the_reason_names_the_part_the_program_and_the_pattern() -> None:
    refusal = _default().refusal("pytest -q && git -C . -c user.name=x push origin HEAD")
    assert refusal == ("`git push origin HEAD` (run by `git -C . -c user.name=x push origin HEAD`) is denied "
                       "by policy.deny pattern 'git push*' in loop.yaml")
    refusal = _default().refusal("echo ok; timeout 5 env -i /usr/bin/curl -s http://example.com")
    assert refusal is not None and refusal.startswith("`curl -s http://example.com` (run by `timeout 5 env")


def test_a_program_known_only_when_the_line_runs_is_refused_with_why() -> None:
    refusal = _default().refusal('X=curl; "$X" http://example.com')
    assert refusal is not None
    assert refusal.startswith('`"$X" http://example.com`: its program `"$X"` is computed only when the line '
                              'runs')
    assert "cannot be checked against policy.deny in loop.yaml; name the program literally" in refusal
    refusal = _default().refusal("bash < script.sh")
    assert refusal is not None and "reads the commands it runs from standard input" in refusal
    refusal = _default().refusal('echo "unbalanced; curl x')
    assert refusal is not None and "does not parse as bash" in refusal and "fix the quoting" in refusal


def test_without_a_deny_list_or_allow_list_nothing_is_refused() -> None:
    rules = CommandPolicy(PolicyConfig(commands=["*"], deny=[]))
    for line in ["$X x", 'echo "unbalanced', "curl x", "git -C . push"]:
        assert rules.refusal(line) is None
    assert rules.refusal("  ") == "empty command"


def test_the_allow_list_judges_the_program_a_wrapper_runs() -> None:
    rules = CommandPolicy(PolicyConfig(commands=["pytest *", "python3 *", "cd *"], deny=[]))
    assert rules.refusal("timeout 60 pytest -q tests") is None
    assert rules.refusal("env FOO=1 python3 -m app") is None
    assert rules.refusal("bash -c 'cd services && pytest -q x'") is None
    refusal = rules.refusal("bash -c 'pytest -q x && rm -rf src'")
    assert refusal is not None and refusal.startswith("`rm -rf src` (run by `bash -c")
    assert "matches none of the allowed policy.commands patterns" in refusal
    refusal = rules.refusal("$RUNNER -q")
    assert refusal is not None and "cannot be checked against policy.commands in loop.yaml" in refusal


def test_user_patterns_keep_their_meaning() -> None:
    rules = CommandPolicy(PolicyConfig(deny=["rm -rf /*", "git commit --amend*", "docker *"]))
    assert rules.refusal("rm -rf build") is None
    assert rules.refusal("sudo=0; nice rm -rf /") is not None
    assert rules.refusal("git -C services commit --amend --no-edit") is not None
    assert rules.refusal("git commit -m 'amend later'") is None
    assert rules.refusal("/usr/local/bin/docker ps") is not None
    assert rules.refusal("echo docker ps") is None


def test_simple_commands_lists_every_command_the_line_runs() -> None:
    assert simple_commands("a && b || c | d; e\n`f g`") == ["a", "b", "c", "d", "e", "`f g`", "f g"]
    assert simple_commands("timeout 5 env -i FOO=1 /usr/bin/curl x") == [
        "timeout 5 env -i FOO=1 /usr/bin/curl x", "env -i FOO=1 /usr/bin/curl x", "curl x"]
    assert simple_commands("git -C . push; bash -c 'ls | wc -l'") == [
        "git push", "bash -c ls | wc -l", "ls", "wc -l"]
