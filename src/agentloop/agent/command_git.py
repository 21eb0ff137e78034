"""What a `git` command runs: `git [global options] sub args…` is matched as `git sub args…`.

Global options are dropped (`git -C . push` is `git push`), aliases given on the line are expanded
(`git -c alias.p=push p`, GIT_CONFIG_KEY_<n>/GIT_CONFIG_VALUE_<n>, and `git config alias.p push` is judged as
the `git push` it prepares), and settings whose values git runs as commands (pagers, editors, ssh commands,
`!` aliases…) are checked as shell code, as are `submodule foreach`, `rebase --exec` and `bisect run`.
"""

from __future__ import annotations

import fnmatch

from agentloop.agent.command_words import Context, Finding, Word, code, joined

_WITH_ARG = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--super-prefix",
                       "--config-env", "--attr-source"})
_COMMAND_KEYS = (
    "core.pager", "core.editor", "core.sshcommand", "core.fsmonitor", "core.askpass", "core.gitproxy",
    "sequence.editor", "pager.*", "diff.external", "diff.*.command", "diff.*.textconv", "difftool.*.cmd",
    "mergetool.*.cmd", "merge.*.driver", "filter.*.clean", "filter.*.smudge", "filter.*.process",
    "credential.helper", "credential.*.helper", "gpg.program", "gpg.*.program", "remote.*.receivepack",
    "remote.*.uploadpack",
)
# Options whose value git runs as a command, for any subcommand (long) or for one (short).
_CODE_OPTIONS = frozenset({
    "--exec", "--extcmd", "--upload-pack", "--receive-pack", "--open-files-in-pager", "--tree-filter",
    "--index-filter", "--msg-filter", "--env-filter", "--parent-filter", "--commit-filter",
    "--tag-name-filter", "--setup",
})
_SHORT_CODE_OPTIONS = {("rebase", "-x"), ("difftool", "-x"), ("clone", "-u"), ("grep", "-O")}


def _env_config(ctx: Context) -> dict[str, Word | None]:
    """Settings passed through GIT_CONFIG_KEY_<n>/GIT_CONFIG_VALUE_<n> on the line."""
    config: dict[str, Word | None] = {}
    for name, key in ctx.env.items():
        if name.startswith("GIT_CONFIG_KEY_") and key is not None and key.static:
            config[key.text.lower()] = ctx.env.get("GIT_CONFIG_VALUE_" + name.removeprefix("GIT_CONFIG_KEY_"))
    return config


def _setting(key: str, value: Word | None, ctx: Context,
             call: tuple[list[Word], list[Word]] = ([], [])) -> list[Finding]:
    """A setting that runs a command is checked as what it runs; `call` holds the global options and the
    arguments an alias is called with."""
    key = key.lower()
    if not key.startswith("alias.") and not any(fnmatch.fnmatchcase(key, p) for p in _COMMAND_KEYS):
        return ctx.findings
    if value is None or not value.static:
        return ctx.unknown(f"its git setting {key} is computed only when the line runs")
    if key.startswith("alias.") and not value.text.startswith("!"):
        options, args = call
        expanded = ctx.nested.words(value.text) or [Word(value.text)]
        return ctx.deeper(("git", key[len("alias."):])).resolve([Word("git"), *options, *expanded, *args])
    return code(Word(value.text.removeprefix("!")), ctx)


def resolve_git(words: list[Word], texts: tuple[str, ...], ctx: Context) -> list[Finding]:
    if "GIT_CONFIG_PARAMETERS" in ctx.env:
        return ctx.unknown("it sets GIT_CONFIG_PARAMETERS, whose aliases and commands cannot be checked")
    config = _env_config(ctx)
    settings: list[Word] = []  # the `-c k=v` words, passed on to what an alias expands to
    i = 1
    while i < len(words):
        word = words[i]
        if not word.static:
            return ctx.unknown(f"`{word.text}` stands where git's subcommand is, and is computed only when "
                               "the line runs")
        name, eq, value = word.text.partition("=")
        if not name.startswith("-"):
            break
        if name in _WITH_ARG and not eq:
            i += 1
            if i < len(words) and not words[i].static and name in ("-c", "--config-env"):
                return ctx.unknown(f"its git setting `{words[i].text}` is computed only when the line runs")
            value = words[i].text if i < len(words) else ""
        if name == "-c":
            key, _, assigned = value.partition("=")
            config[key.lower()] = Word(assigned)
            settings += [Word("-c"), Word(value)]
        elif name == "--config-env":
            config[value.partition("=")[0].lower()] = None
        i += 1
    if i >= len(words):
        return ctx.ran(("git",))
    sub, rest = words[i].text, words[i + 1:]
    for key, setting in config.items():
        if not key.startswith("alias."):
            ctx = ctx.having(_setting(key, setting, ctx))
    alias = f"alias.{sub.lower()}"
    if alias in config:
        return _setting(alias, config[alias], ctx, (settings, rest))
    return _subcommand(sub, rest, ctx.having(ctx.ran(("git", sub, *(w.text for w in rest)))))


def _subcommand(sub: str, rest: list[Word], ctx: Context) -> list[Finding]:
    """Subcommands that run commands given on the line."""
    texts = [w.text for w in rest]
    if sub == "submodule" and "foreach" in texts:
        foreach = [w for w in rest[texts.index("foreach") + 1:] if w.text != "--recursive"]
        return joined(foreach, ctx) if foreach else ctx.findings
    if sub == "bisect" and texts[:1] == ["run"]:
        return ctx.deeper().resolve(rest[1:])
    if sub == "config":
        values = [w for w in rest if not w.text.startswith("-")]
        values = values[1:] if values[:1] and values[0].text == "set" else values
        return _setting(values[0].text, values[1], ctx) if len(values) >= 2 else ctx.findings
    for i, word in enumerate(rest):
        option, eq, value = word.text.partition("=")
        if word.text.startswith("ext::"):
            return ctx.unknown("git's ext:: transport runs a command that is not checked",
                               "use another remote")
        if (sub, word.text[:2]) in _SHORT_CODE_OPTIONS and len(word.text) > 2:
            ctx = ctx.having(code(Word(word.text[2:]), ctx))  # `-Ocmd`
        elif option in _CODE_OPTIONS or (sub, option) in _SHORT_CODE_OPTIONS:
            given = Word(value) if eq else (rest[i + 1] if i + 1 < len(rest) else None)
            if given is not None:
                ctx = ctx.having(code(given, ctx))
    return ctx.findings
