"""What a simple command really runs, once its wrappers are taken off.

`env -i curl x`, `timeout 5 curl x`, `xargs curl`, `bash -c 'curl x'`, `eval "curl x"` and `find -exec curl`
all run something other than their first word. `resolve` turns the words of one simple command into every
command it runs (each wrapper's own layer, then the program it starts), or into an `Unknown` when that
program is known only once the line runs. Shell code inside a word (`-c` strings, `eval`, `trap`, aliases)
goes back to the parser through `Nested`; git has its own rules in command_git.py, and the words and findings
shared by both live in command_words.py. Used by command_policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agentloop.agent.command_git import resolve_git
from agentloop.agent.command_words import SUBSCRIPT_CODE, Context, Finding, Nested, Word, code, joined

MAX_DEPTH = 10
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_STDIN_SCRIPT = re.compile(r"^/dev/(stdin|fd/\d+)$|^/proc/[^/]+/fd/\d+$")
# Builtins that evaluate array subscripts in their arguments: `let "a[\$(cmd)]=1"` runs cmd.
_EVALUATES_SUBSCRIPTS = frozenset({"let", "declare", "typeset", "local", "export", "readonly", "read",
                                   "printf", "mapfile", "readarray", "unset", "test", "[", "wait"})
_INPUT = Word("…", static=False, splits=True)  # the items xargs appends, read when the line runs


def resolve(words: list[Word], source: str, depth: int, env: Mapping[str, Word | None],
            nested: Nested) -> list[Finding]:
    """Every command that the simple command `words` runs."""
    return resolve_in(words, Context(source, depth, env, nested, resolve_in))


def resolve_in(words: list[Word], ctx: Context) -> list[Finding]:
    if ctx.depth > MAX_DEPTH:
        return ctx.unknown(f"it nests wrappers or shell code more than {MAX_DEPTH} levels deep")
    if not words:
        return ctx.findings
    head = words[0]
    if not head.static:
        return ctx.unknown(f"its program `{head.text}` is computed only when the line runs")
    if head.text in ("{", "(", "!"):  # `time { cmd; }` reaches us as words: the group is transparent
        return resolve_in(words[1:], ctx.deeper())
    prog = head.text.rstrip("/").rsplit("/", 1)[-1] or head.text
    texts = (prog, *(w.text for w in words[1:]))
    if prog in _EVALUATES_SUBSCRIPTS and any(w.static and SUBSCRIPT_CODE.search(w.text) for w in words[1:]):
        return ctx.unknown("an array subscript in its arguments holds code that bash runs",
                           "run the commands directly")
    handler = _HANDLERS.get(prog)
    if handler is not None:
        return handler(words, texts, ctx)
    if prog in _SHELLS:
        return _shell(words, texts, ctx)
    if prog in _WRAPPERS:
        return _wrapper(words, texts, ctx)
    return ctx.ran(texts)


@dataclass(frozen=True)
class _Spec:
    with_arg: frozenset[str] = frozenset()  # options that take an argument (short letters or long names)
    operands: int = 0  # words between the options and the program, like timeout's duration
    assignments: bool = False  # NAME=value words (and `-`) may precede the program (env, sudo)
    shell_opt: frozenset[str] = frozenset()  # options whose argument is shell code (flock -c)
    no_command: frozenset[str] = frozenset()  # options after which the words name no program (command -v)
    attached: frozenset[str] = frozenset()  # options whose argument, if any, is attached (xargs -i, -e, -l)


def _f(*names: str) -> frozenset[str]:
    return frozenset(names)


_WRAPPERS: dict[str, _Spec] = {
    "env": _Spec(with_arg=_f("u", "C", "S", "unset", "chdir", "split-string"), assignments=True),
    "command": _Spec(no_command=_f("v", "V")),
    "builtin": _Spec(),
    "exec": _Spec(with_arg=_f("a")),
    "nohup": _Spec(),
    "nice": _Spec(with_arg=_f("n", "adjustment")),
    "timeout": _Spec(with_arg=_f("s", "k", "signal", "kill-after"), operands=1),
    "stdbuf": _Spec(with_arg=_f("i", "o", "e", "input", "output", "error")),
    "setsid": _Spec(),
    "sudo": _Spec(with_arg=_f("u", "g", "h", "p", "r", "t", "C", "D", "T", "U", "R", "user", "group", "host",
                              "prompt", "role", "type", "close-from", "chdir", "command-timeout",
                              "other-user", "chroot"),
                  assignments=True, no_command=_f("e", "l", "V", "edit", "list")),
    "doas": _Spec(with_arg=_f("u", "C")),
    "time": _Spec(with_arg=_f("f", "o", "format", "output")),
    "ionice": _Spec(with_arg=_f("c", "n", "class", "classdata")),
    "taskset": _Spec(operands=1),
    "chrt": _Spec(operands=1),
    "chroot": _Spec(with_arg=_f("userspec", "groups"), operands=1),
    "unshare": _Spec(with_arg=_f("S", "G", "R", "w", "setuid", "setgid", "root", "wd", "propagation",
                                 "setgroups", "map-user", "map-group", "map-users", "map-groups")),
    "flock": _Spec(with_arg=_f("w", "E", "timeout", "conflict-exit-code"), operands=1,
                   shell_opt=_f("c", "command")),
    "script": _Spec(with_arg=_f("E", "I", "O", "B", "T", "m", "echo", "log-in", "log-out", "log-io",
                                "log-timing", "logging-format"), shell_opt=_f("c", "command")),
    "strace": _Spec(with_arg=_f("e", "o", "p", "s", "u", "E", "a", "b", "I", "O", "P", "S", "X")),
    "unbuffer": _Spec(),
    "xargs": _Spec(with_arg=_f("a", "d", "E", "I", "L", "n", "P", "s", "arg-file", "delimiter", "eof",
                               "max-lines", "max-args", "max-procs", "max-chars", "process-slot-var"),
                   attached=_f("e", "i", "l", "replace")),
}
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "yash", "posh", "lksh", "pdksh"}


@dataclass
class _Options:
    program: int | None  # index of the program's word, None when the words name no program
    seen: dict[str, Word | None] = field(default_factory=dict)


def _options(words: list[Word], spec: _Spec) -> _Options | str:
    """Skip a wrapper's options; a string says why the program cannot be known."""
    parsed = _Options(None)
    i = 1
    while i < len(words):
        word, text = words[i], words[i].text
        if spec.assignments and (text == "-" or ASSIGNMENT.match(text)) and not word.splits:
            i += 1  # `env PATH="$PATH:x" cmd`: a computed value, but still one assignment
            continue
        if not word.static:
            return (f"`{text}` stands where the program or an option is, and is computed only when the line "
                    "runs")
        if text == "--":
            i += 1
            break
        if text.startswith("--") and len(text) > 2:
            name, eq, value = text[2:].partition("=")
            arg: Word | None = Word(value) if eq else None
            if name in spec.no_command:
                return parsed
            if arg is None and (name in spec.with_arg or name in spec.shell_opt):
                if i + 1 >= len(words):
                    return parsed
                arg, i = words[i + 1], i + 1
            parsed.seen[name] = arg
            i += 1
            continue
        if text.startswith("-") and len(text) > 1:
            for j, letter in enumerate(text[1:], start=2):
                if letter in spec.no_command:
                    return parsed
                if letter in spec.attached:
                    parsed.seen[letter] = Word(text[j:]) if text[j:] else None
                    break
                if letter in spec.with_arg or letter in spec.shell_opt:
                    if text[j:]:
                        parsed.seen[letter] = Word(text[j:])
                    elif i + 1 < len(words):
                        parsed.seen[letter], i = words[i + 1], i + 1
                    break
                parsed.seen[letter] = None
            i += 1
            continue
        break
    for key, arg in parsed.seen.items():
        if arg is not None and arg.splits:
            return (f"the argument `{arg.text}` of its option {key} may split into several words when the "
                    "line runs")
    for _ in range(spec.operands):
        if i >= len(words):
            return parsed
        if words[i].splits:
            return f"`{words[i].text}` may split into several words when the line runs"
        i += 1
    parsed.program = i if i < len(words) else None
    return parsed


def _wrapper(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    prog, spec = texts[0], _WRAPPERS[texts[0]]
    parsed = _options(words, spec)
    if isinstance(parsed, str):
        return ctx.unknown(parsed)
    inner = ctx.deeper(texts)
    rest = [] if parsed.program is None else words[parsed.program:]
    if spec.shell_opt and rest and rest[0].text.lstrip("-").partition("=")[0] in spec.shell_opt:
        parsed = _options([Word(prog), *rest], spec)  # `flock FILE -c CODE`: the option follows the operand
        if isinstance(parsed, str):
            return ctx.unknown(parsed)
    for name in spec.shell_opt & parsed.seen.keys():
        arg = parsed.seen[name]
        if arg is not None:
            return code(arg, inner)
    if prog == "script":
        return ctx.unknown("`script` without -c runs a shell that reads its commands from standard input",
                           "pass the code with -c")
    if prog == "xargs":
        marker = parsed.seen.get("I") or parsed.seen.get("i") or parsed.seen.get("replace")
        if marker is None and not {"i", "replace"} & parsed.seen.keys():
            return resolve_in([*(rest or [Word("echo")]), _INPUT], inner)  # xargs appends what it reads
        mark = marker.text if marker is not None and marker.text else "{}"
        return resolve_in([Word(w.text, False, False) if mark in w.text else w for w in rest], inner)
    split = parsed.seen.get("S") or parsed.seen.get("split-string")
    if prog == "env" and split is not None:
        head = ctx.nested.words(split.text) if split.static else None
        if head is None:
            return ctx.unknown(f"its -S string `{split.text}` is split into words only when the line runs")
        rest = head + rest
    if prog == "sudo" and {"s", "i", "shell", "login"} & parsed.seen.keys() and rest:
        return joined(rest, inner)
    return resolve_in(rest, inner)


def _shell(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    """`bash [options] -c CODE`, `bash script`, or a shell that reads its commands from standard input."""
    command_mode = stdin_mode = False
    i = 1
    while i < len(words):
        word = words[i]
        if not word.static:
            break
        text = word.text
        if text in ("--", "-"):
            i += 1
            break
        if text.startswith("--"):
            i += 2 if text in ("--rcfile", "--init-file") else 1
            continue
        if text[:1] in "-+" and len(text) > 1:
            letters = text[1:]
            command_mode |= text[0] == "-" and "c" in letters
            stdin_mode |= "s" in letters
            i += 1 + letters.count("o") + letters.count("O")
            continue
        break
    operands = words[i:]
    if command_mode:
        return code(operands[0], ctx.deeper(texts)) if operands else ctx.findings
    if stdin_mode or not operands:
        return ctx.unknown(f"`{texts[0]}` reads the commands it runs from standard input",
                           "pass the code with -c, or run the commands directly")
    return _script(operands[0], texts, ctx)


def _script(script: Word, texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    """A script file: what it runs is not on this line (the confinement holds there), unless it is the
    standard input or a process substitution in disguise."""
    if not script.static or _STDIN_SCRIPT.match(script.text):
        return ctx.unknown(f"the script `{script.text}` it runs is produced only when the line runs",
                           "run the commands directly")
    return ctx.ran(texts)


def _operands(words: list[Word]) -> list[Word]:
    """A builtin's words after its name and an optional `--`."""
    return words[2:] if words[1:2] and words[1].text == "--" else words[1:]


def _source(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    operands = _operands(words)
    return _script(operands[0], texts, ctx) if operands else ctx.findings


def _eval(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    return joined(_operands(words), ctx.deeper(texts))


def _trap(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    operands = _operands(words)
    if len(operands) < 2 or operands[0].text.startswith("-"):
        return ctx.ran(texts)
    return code(operands[0], ctx.deeper(texts))


def _alias(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    inner = ctx.deeper(texts)
    for word in words[1:]:
        _, eq, value = word.text.partition("=")
        if eq and word.static:
            inner = inner.having(code(Word(value), inner))
        elif "=" in word.text or not word.static:
            return inner.unknown(f"it defines an alias from `{word.text}`, computed only when the line runs")
    return inner.findings


def _mapfile(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    parsed = _options(words, _Spec(with_arg=_f("d", "n", "O", "s", "u", "c"), shell_opt=_f("C")))
    if isinstance(parsed, str):
        return ctx.unknown(parsed)
    callback = parsed.seen.get("C")
    return code(callback, ctx.deeper(texts)) if callback else ctx.ran(texts)


def _watch(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    """watch joins its arguments and runs them with `sh -c` (with -x, as words)."""
    spec = _Spec(with_arg=_f("n", "interval", "q", "equexit"), attached=_f("d", "differences"))
    parsed = _options(words, spec)
    if isinstance(parsed, str):
        return ctx.unknown(parsed)
    rest = [] if parsed.program is None else words[parsed.program:]
    if {"x", "exec"} & parsed.seen.keys():
        return resolve_in(rest, ctx.deeper(texts))
    return joined(rest, ctx.deeper(texts)) if rest else ctx.findings


def _hash(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    """`hash -p /usr/bin/curl ls` makes `ls` run curl: judge the path it names."""
    parsed = _options(words, _Spec(with_arg=_f("p")))
    if isinstance(parsed, str):
        return ctx.unknown(parsed)
    path = parsed.seen.get("p")
    return resolve_in([path], ctx.deeper(texts)) if path is not None else ctx.ran(texts)


def _busybox(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    if len(words) < 2 or words[1].text.startswith("-"):
        return ctx.ran(texts)
    return resolve_in(words[1:], ctx.deeper(texts))


def _coproc(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    # `coproc NAME { cmd; }` reaches us as words; NAME only comes before a group.
    named = len(words) > 2 and words[2].text in ("{", "(")
    return resolve_in(words[2:] if named else words[1:], ctx.deeper(texts))


def _find(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    found = ctx.having(ctx.ran(texts))
    i = 1
    while i < len(words):
        if words[i].text in ("-exec", "-execdir", "-ok", "-okdir"):
            end = i + 1
            while end < len(words) and words[end].text not in (";", "+"):
                end += 1
            command = [Word(w.text, False, False) if "{}" in w.text else w for w in words[i + 1:end]]
            found = found.having(resolve_in(command, found.deeper()))
            i = end
        i += 1
    return found.findings


_HANDLERS: dict[str, Callable[[list[Word], tuple[str, ...], Context], list[Finding]]] = {
    "eval": _eval, "trap": _trap, "alias": _alias, "busybox": _busybox, "coproc": _coproc, "find": _find,
    "git": resolve_git, "source": _source, ".": _source, "mapfile": _mapfile, "readarray": _mapfile, "watch": _watch,
    "hash": _hash,
}
