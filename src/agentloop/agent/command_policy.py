"""`policy.commands` / `policy.deny`: which command lines the agent's bash tool may run.

This is defence in depth, not the boundary: the bubblewrap confinement (no network, read-only system, only
the worktree writable, no secrets in the environment) is what holds when a command gets through. The policy
refuses early, with a reason the model can act on, the commands a project does not want run.

It checks the *resolved program* of every command the line runs: every simple command anywhere in it
(pipelines, lists, subshells, `$(…)`, backticks, `<(…)`, here-strings, unquoted heredoc bodies, compound
commands, function bodies), with quotes and backslashes removed (`c''url`, `\\curl`), paths reduced to the
basename (`/usr/bin/curl`), wrappers taken off (`env`, `timeout 5`, `xargs`, `nohup`, `sudo`…), shell code
inside words parsed in turn (`bash -c`, `eval`, `trap`, aliases, `find -exec`) and git's global options
dropped (`git -C . push` is `git push`); see command_wrappers.py. Each result is matched, as `prog args…`,
against the fnmatch patterns of loop.yaml. A program that is known only when the line runs (`$X args`,
`"$(echo curl)" x`) or a line that does not parse is refused whenever the policy restricts anything.

The parser is tree-sitter-bash, not bashlex or shlex. bashlex (last release 2023) raises on `case`, `[[ ]]`,
`$(( ))`, `time` and quoted heredoc delimiters, all ordinary in an agent's commands; shlex is a tokenizer (it
takes `#` inside a word for a comment, which is how `echo a#b; curl x` hid `curl x`) and knows no command
substitution, heredoc or compound command. tree-sitter-bash is maintained, ships wheels, and parses all of
these. Where its tree differs from what bash runs, this module corrects it: a backslash-newline inside a word
(`cu\\<newline>rl`), which it splits; backticks in unquoted heredoc bodies, inside `${…}` and nested in
backticks, which it leaves as text; `time { …; }`, which it reads as words. Each correction has a case in
tests/agent/test_command_policy.py, which also runs every bypass through real bash to show it reaches curl.

Not covered, by design (the confinement is what holds there): code in files the agent wrote and then runs
(`./script.sh`, `make`, `python x.py`, a copy of curl under another name), languages other than the shell
(`python -c`, `perl -e`, `awk`, `sed e`), and settings that persist between calls (a git alias or hook
written by an earlier command).
"""

from __future__ import annotations

import fnmatch
import functools
import re

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from agentloop.agent.command_words import COMMAND_VARIABLES, SUBSCRIPT_CODE, Finding, Run, Unknown, Word
from agentloop.agent.command_wrappers import resolve
from agentloop.config import PolicyConfig

_CONTINUATION = re.compile(r"(?:\\\n)*")
_GLOB = re.compile(r"(?<!\\)(?:\\\\)*(?:[*?]|\[[^\]]+\])")
_BRACE = re.compile(r"(?<!\\)\{[^{}\s]*(?:,|\.\.)[^{}\s]*\}")
_UNQUOTED_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_DOUBLE_QUOTED_ESCAPE = re.compile(r"\\([$`\"\\\n])")
_ANSI_C = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)", re.DOTALL)
_ANSI_C_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                  "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
_UNPARSED_SUBSTITUTION = re.compile(r"(?<!\\)(?:\\\\)*\$\(")
_STATIC_KINDS = ("word", "number", "raw_string", "string", "ansi_c_string", "concatenation")


@functools.cache
def _language() -> Language:
    return Language(tree_sitter_bash.language())


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", errors="replace")


def _ansi_c(body: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in _ANSI_C_SIMPLE:
            return _ANSI_C_SIMPLE[code]
        if code[0] in "xuU" and len(code) > 1:
            return chr(min(int(code[1:], 16), 0x10FFFF))
        if code[0].isdigit():
            return chr(int(code, 8) & 0xFF)
        if code[0] == "c" and len(code) == 2:
            return chr(ord(code[1].upper()) ^ 0x40)
        return "\\" + code

    return _ANSI_C.sub(one, body)


def _word(node: Node) -> Word:
    """What bash makes of one word node (before word splitting)."""
    kind, raw = node.type, _text(node)
    if kind in ("word", "number"):
        if _expands(raw):
            return Word(raw, static=False, splits=True)
        return Word(_UNQUOTED_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), raw))
    if kind == "raw_string":
        return Word(raw[1:-1])
    if kind == "ansi_c_string":
        return Word(_ansi_c(raw[2:-1]))
    if kind == "string":
        parts = node.named_children
        if all(c.type == "string_content" for c in parts):
            return Word("".join(_DOUBLE_QUOTED_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1),
                                                          _text(c)) for c in parts))
        return Word(raw, static=False)
    if kind == "concatenation":
        return _join(node.named_children, raw)
    return Word(raw, static=False, splits=kind not in ("process_substitution",))


def _expands(unquoted: str) -> bool:
    """Whether unquoted text is a glob or a brace expansion: bash may turn it into other words."""
    return bool(_GLOB.search(unquoted) or _BRACE.search(unquoted))


def _unquoted(nodes: list[Node]) -> str:
    """The unquoted text of adjacent nodes, each quoted part replaced by a placeholder."""
    return "".join(_text(n) if n.type in ("word", "number") else _unquoted(n.named_children)
                   if n.type == "concatenation" else "_" for n in nodes)


def _join(nodes: list[Node], raw: str) -> Word:
    """One word made of adjacent pieces: `c''url`, `./cur[l]` (a glob only as a whole), `{cu,}rl`."""
    if _expands(_unquoted(nodes).replace("\\\n", "")):
        return Word(raw, static=False, splits=True)
    parts = [_word(n) for n in nodes]
    static = all(p.static for p in parts)
    text = "".join(p.text for p in parts) if static else raw
    return Word(text, static=static, splits=any(p.splits for p in parts))


def _command_words(node: Node, source: bytes) -> list[Word]:
    """The words of a `command` node. Pieces that bash reads as one word are joined: tree-sitter splits a word
    at a backslash-newline (`cu\\<newline>rl`) and leaves some prefixes (`$"…"`) as separate nodes."""
    pieces = [c for i, c in enumerate(node.children) if node.field_name_for_child(i) in ("name", "argument")]
    groups: list[list[Node]] = []
    for piece in pieces:
        target = piece.named_children[0] if piece.type == "command_name" and piece.named_children else piece
        gap = source[groups[-1][-1].end_byte:target.start_byte] if groups else b" "
        if groups and _CONTINUATION.fullmatch(gap.decode("utf-8", errors="replace")):
            groups[-1].append(target)
        else:
            groups.append([target])
    words: list[Word] = []
    for group in groups:
        if len(group) == 1:
            words.append(_word(group[0]))
        else:
            raw = source[group[0].start_byte:group[-1].end_byte].decode("utf-8", errors="replace")
            words.append(_join(group, raw.replace("\\\n", "")))
    return words


class _Analysis:
    """Walks one piece of shell code; nested code (`bash -c`, `eval`…) comes back through `line`."""

    def line(self, text: str, source: str, depth: int) -> list[Finding]:
        return analyse(text, source or None, depth)

    def words(self, text: str) -> list[Word] | None:
        encoded = text.encode()
        tree = Parser(_language()).parse(encoded)
        commands = [c for c in tree.root_node.named_children if c.type != "comment"]
        if tree.root_node.has_error or len(commands) != 1 or commands[0].type != "command":
            return None
        return _command_words(commands[0], encoded)


def analyse(line: str, source: str | None = None, depth: int = 0) -> list[Finding]:
    """Every command `line` runs, in order (a command before those in its substitutions). `source` names the
    part of the outer line that nested code came from."""
    encoded = line.encode()
    tree = Parser(_language()).parse(encoded)
    found: list[Finding] = []
    if tree.root_node.has_error:
        near = _first_error(tree.root_node, encoded)
        found.append(Unknown(source or near, f"it does not parse as bash (near `{near}`)", "fix the quoting"))
    env = _assignments(tree.root_node)
    nested = _Analysis()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        found += _node(node, encoded, source, depth, env, nested)
        stack.extend(reversed(node.children))
    return found


def _node(node: Node, encoded: bytes, source: str | None, depth: int, env: dict[str, Word | None],
          nested: _Analysis) -> list[Finding]:
    """What one node of the tree runs (its children are walked separately)."""
    kind = node.type
    if kind == "command":
        return resolve(_command_words(node, encoded), source or _text(node), depth, env, nested)
    if kind == "variable_assignment":
        return _assignment(node, source or _text(node.parent or node), depth)
    if kind in ("declaration_command", "unset_command", "test_command"):
        return _subscripts(node, source or _text(node))
    if kind == "expansion" and _text(node).endswith("@P}"):  # prompt expansion runs the `$(…)` in a value
        return [Unknown(source or _text(node), f"`{_text(node)}` expands a value as a prompt, which runs the "
                                               "code in it", "run the commands directly")]
    if kind == "command_substitution" and _text(node).startswith("`") and "\\`" in _text(node):
        # Inside backticks, \` opens a nested substitution that tree-sitter leaves as text.
        return analyse(re.sub(r"\\([`$\\])", r"\1", _text(node)[1:-1]), source or _text(node), depth + 1)
    if kind == "word":
        return _unparsed_substitutions(_text(node), _text(node), source, depth)
    if kind == "heredoc_body" and _unquoted_heredoc(node):
        plain = "".join(_text(c) for c in node.children if c.type == "heredoc_content")
        return _unparsed_substitutions(_text(node), plain, source, depth)
    return []


def _subscript_code(source: str, text: str) -> Unknown:
    return Unknown(source, f"the array subscript in `{text}` holds code that bash runs",
                   "run the commands directly")


def _subscripts(node: Node, source: str) -> list[Finding]:
    """`declare "a[\\$(cmd)]=1"`, `unset`, `[[ -v … ]]`: bash evaluates array subscripts, and runs the code
    in them."""
    stack = list(node.named_children)
    while stack:
        child = stack.pop()
        word = _word(child) if child.type in _STATIC_KINDS else None
        if word is not None and word.static and SUBSCRIPT_CODE.search(word.text):
            return [_subscript_code(source, _text(child))]
        stack.extend(child.named_children)
    return []


def _unparsed_substitutions(text: str, plain: str, source: str | None, depth: int) -> list[Finding]:
    """Command substitutions that tree-sitter leaves as plain text (`plain`, part of `text`): backticks in
    unquoted heredoc bodies and inside `${…}`, where bash runs them."""
    if "`" not in text and "$(" not in plain:
        return []
    found: list[Finding] = []
    for code in _backticks(text):
        found += analyse(code, source or code, depth + 1)
    if _UNPARSED_SUBSTITUTION.search(re.sub(r"`[^`]*`", "", plain)):
        found.append(Unknown(source or text, "it holds a command substitution this parser cannot see into"))
    return found


def _assignments(root: Node) -> dict[str, Word | None]:
    """Every `NAME=value` on the line (prefix, standalone or exported), None where the value is computed."""
    env: dict[str, Word | None] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "variable_assignment":
            name = node.child_by_field_name("name")
            value = node.child_by_field_name("value")
            if name is not None:
                word = _word(value) if value is not None else Word("")
                env[_text(name)] = word if word.static else None
        stack.extend(node.children)
    return env


def _assignment(node: Node, source: str, depth: int) -> list[Finding]:
    """`GIT_SSH_COMMAND=…`, `PAGER=…` and the like hold commands that git or the shell run; `BASH_ENV=…` a
    script; `x='a[$(cmd)]'` code that `$((x))` runs."""
    name = node.child_by_field_name("name")
    if name is not None and name.type == "subscript" and re.search(r"\$\(|`", _text(name)) \
            and not any(c.type == "command_substitution" for c in name.named_children):
        return [_subscript_code(source, _text(name))]
    value = node.child_by_field_name("value")
    word = _word(value) if value is not None else Word("")
    if word.static and SUBSCRIPT_CODE.search(word.text):  # `$((x))` evaluates x's value, subscripts and all
        return [_subscript_code(source, _text(node))]
    if name is None or _text(name) not in COMMAND_VARIABLES | {"BASH_ENV", "ENV"}:
        return []
    variable = _text(name)
    if variable in ("BASH_ENV", "ENV"):  # a script that bash sources: a file is not on this line
        why = f"its {variable} script is produced only when the line runs"
        return [] if word.static else [Unknown(source, why, "run the commands directly")]
    if not word.static:
        return [Unknown(source, f"it sets {variable}, a command, to `{word.text}`, which is computed only "
                                "when the line runs")]
    return analyse(word.text, source, depth + 1) if word.text.strip() else []


def _unquoted_heredoc(body: Node) -> bool:
    start = body.parent.child_by_field_name("start") if body.parent is not None else None
    if start is None:
        starts = [c for c in (body.parent.children if body.parent else []) if c.type == "heredoc_start"]
        start = starts[0] if starts else None
    return start is not None and not any(q in _text(start) for q in "'\"\\")


def _backticks(body: str) -> list[str]:
    """The code of each `…` in an unquoted heredoc body (bash runs them; tree-sitter leaves them as text)."""
    found, i, start = [], 0, -1
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == "`":
            if start < 0:
                start = i + 1
            else:
                found.append(re.sub(r"\\([`$\\])", r"\1", body[start:i]))
                start = -1
        i += 1
    return found


def _first_error(root: Node, source: bytes) -> str:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            start = max(node.start_byte - 10, 0)
            return source[start:node.end_byte + 10][:60].decode("utf-8", errors="replace").strip()
        stack.extend(reversed(node.children))
    return source[:60].decode("utf-8", errors="replace")


def _short(text: str, limit: int = 200) -> str:
    """A part of the line as quoted in a reason: long ones are cut in the middle."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:limit // 2]} … {text[-limit // 2:]}"


def simple_commands(command: str) -> list[str]:
    """Every command `command` runs, as matched against loop.yaml's patterns (`prog args…`, wrappers' own
    layers included); a part whose program is computed at run time appears as its source text."""
    return [f.text if isinstance(f, Run) else f.source for f in analyse(command)]


class CommandPolicy:
    """Allow/deny patterns from `loop.yaml`'s policy, checked against the resolved program of every part."""

    def __init__(self, policy: PolicyConfig) -> None:
        self._allow = policy.commands
        self._deny = policy.deny

    @property
    def _restricted(self) -> bool:
        return bool(self._deny) or "*" not in self._allow

    def _checked_by(self) -> str:
        lists = ["policy.deny"] if self._deny else []
        return " and ".join(lists + (["policy.commands"] if "*" not in self._allow else []))

    def refusal(self, command: str) -> str | None:
        """Why `command` may not run, or None when it may."""
        if not command.strip():
            return "empty command"
        if not self._restricted:
            return None
        for finding in analyse(command):
            reason = self._judge(finding)
            if reason is not None:
                return reason
        return None

    def _judge(self, finding: Finding) -> str | None:
        if isinstance(finding, Unknown):
            why, lists = _short(finding.why, 400), self._checked_by()
            return (f"`{_short(finding.source)}`: {why}, so it cannot be checked against {lists} in "
                    f"loop.yaml; {finding.hint}")
        simple = finding.text
        shown = _short(simple)
        origin = f" (run by `{_short(finding.source)}`)" if finding.source.strip() != simple else ""
        for pattern in self._deny:
            # `curl *` also denies a bare `curl`.
            bare = pattern.rstrip("*").rstrip()
            if fnmatch.fnmatchcase(simple, pattern) or fnmatch.fnmatchcase(simple, bare):
                return f"`{shown}`{origin} is denied by policy.deny pattern {pattern!r} in loop.yaml"
        if finding.final and not any(fnmatch.fnmatchcase(simple, pattern) for pattern in self._allow):
            allowed = ", ".join(repr(p) for p in self._allow)
            return (f"`{shown}`{origin} matches none of the allowed policy.commands patterns ({allowed}) "
                    "in loop.yaml")
        return None
