"""The route key: how a request names its sandbox. One grammar, read by the local router (`route_key_of`)
and turned into Istio VirtualService matches (`istio_matches`) that accept exactly the same requests.

Where the key is read, the first source that gives one wins:

1. `baggage` (W3C Baggage): a comma-separated list of members `key OWS "=" OWS value *(OWS ";" property)`,
   OWS being spaces and tabs. The member whose key is `sd-routing-key` (`entry`) gives the key: its value
   up to the first `;` (what follows are that member's properties), OWS trimmed, percent-decoded. In
   `a=1;sd-routing-key=K` the key is a property of the member `a`, so it does not count. Only the first
   `sd-routing-key` member counts; an empty value, or one with a character the spec forbids in a value
   (space, `"`, `,`, `;`, `\\`), gives no key from this header. Members that are not `key=value` are skipped.
2. `tracestate`: the same list shape (what the router has always read there, and how Signadot writes its
   entry: `sd-routing-key=K` among the vendors' entries), but the value is taken literally, not decoded.
3. The project's own header (`sandbox.route_header`): its whole value, OWS trimmed.
4. The `loop-route` cookie the preview link sets: the first `loop-route` pair of the `Cookie` header
   (pairs separated by `;`), its value trimmed and unwrapped from double quotes.

A header sent several times counts as its values joined with `,`, as Envoy joins them before matching.

Istio matches are RE2 regular expressions on whole header values (no lookarounds, no backreferences), so
"the first member whose key is `sd-routing-key`" is written as "any number of members that are not
`sd-routing-key` members, then the one with the key". A lower source is only consulted when the higher
ones give no key, which Istio expresses as `withoutHeaders` (it treats a missing header as empty there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from multidict import MultiMapping

ENTRY = "sd-routing-key"
COOKIE = "loop-route"
_OWS = " \t"
# W3C baggage-octet, which is also RFC 6265's cookie-octet: visible ASCII but `"` `,` `;` `\`.
_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('",;\\')
_W = r"[ \t]*"
_OCTET_CLASS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]"
_SPECIAL = set("\\.+*?()|[]{}^$")
_SPECIAL_IN_CLASS = set("\\]^-[&~|")


@dataclass(frozen=True)
class _ListHeader:
    """A header holding a list of `name=value` items."""

    header: str
    separator: str  # between items
    properties: bool  # `;` ends an item's value (what follows belongs to the item)
    decode: Literal["percent", "literal", "quotes"]


BAGGAGE = _ListHeader("baggage", ",", True, "percent")
TRACESTATE = _ListHeader("tracestate", ",", True, "literal")
COOKIES = _ListHeader("cookie", ";", False, "quotes")


def _joined(headers: MultiMapping[str], name: str) -> str:
    return ",".join(headers.getall(name, []))


def _item_value(text: str, name: str, grammar: _ListHeader) -> str | None:
    for item in text.split(grammar.separator):
        head = item.split(";", 1)[0] if grammar.properties else item
        label, eq, raw = head.partition("=")
        if not eq or label.strip(_OWS) != name:
            continue
        value = raw.strip(_OWS)
        if grammar.decode == "quotes" and len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not value or not set(value) <= _OCTETS:
            return None
        return unquote(value, errors="replace") if grammar.decode == "percent" else value
    return None


def route_key_of(headers: MultiMapping[str], route_header: str, entry: str = ENTRY) -> str | None:
    """The route key a request carries, if any (see the module docstring for where and how it is read)."""
    for grammar in (BAGGAGE, TRACESTATE):
        key = _item_value(_joined(headers, grammar.header), entry, grammar)
        if key:
            return key
    own = _joined(headers, route_header).strip(_OWS)
    if own:
        return own
    return _item_value(_joined(headers, COOKIES.header), COOKIE, COOKIES)


# -- the same grammar as regular expressions (RE2 syntax, which Python's `re` also reads alike) ---------


def _lit(text: str) -> str:
    return "".join(f"\\x{ord(c):02x}" if c in _SPECIAL else ("\\t" if c == "\t" else c) for c in text)


def _not(chars: str) -> str:
    body = "".join(f"\\x{ord(c):02x}" if c in _SPECIAL_IN_CLASS else ("\\t" if c == "\t" else c)
                   for c in sorted(set(chars)))
    return f"[^{body}]"


def _other_item(name: str, separator: str) -> str:
    """An item that is not `OWS name OWS "=" ...` (another key, a property-only item, or no `=` at all).

    Built as a trie over `name`: after its first i characters, the item may end, go on with any other
    character, or match the next one; after all of them, only an `=` (past OWS) would make it `name`'s."""
    rest_of_item = f"[^{separator}]*"
    tail = f"{_W}(?:{_not(separator + '= ' + chr(9))}{rest_of_item})?"
    for i in reversed(range(len(name))):
        other = _not(separator + name[i] + (_OWS if i == 0 else ""))
        tail = f"(?:{other}{rest_of_item}|{_lit(name[i])}{tail})?"
    return _W + tail


def _list_regex(grammar: _ListHeader, name: str, value: str) -> str:
    sep = grammar.separator
    named = f"{_W}{_lit(name)}{_W}={_W}{value}{_W}" + (f"(?:;[^{sep}]*)?" if grammar.properties else "")
    return f"(?:{_other_item(name, sep)}{sep})*{named}(?:{sep}[^{sep}]*)*"


def _check(key: str, entry: str) -> None:
    if not key or not set(key) <= _OCTETS - {"%"}:
        raise ValueError(f"route key {key!r}: use visible ASCII without % \" , ; \\ (loop makes hex keys)")
    if not entry or set(entry) & set(_OWS + ',;="'):
        raise ValueError(f"route key entry {entry!r}: use a token without spaces , ; = \"")


def _percent_or_literal(char: str) -> str:
    code = f"{ord(char):02X}"
    hex_digits = "".join(d if d.isdigit() else f"[{d}{d.lower()}]" for d in code)
    return f"(?:{_lit(char)}|%{hex_digits})"


def header_regexes(key: str, route_header: str, entry: str = ENTRY) -> dict[str, tuple[str, str]]:
    """Per header (lowercase name): (regex for "this header gives `key`", regex for "it gives a key")."""
    _check(key, entry)
    cookie_value = f'(?:{_lit(key)}|"{_lit(key)}")'
    return {
        BAGGAGE.header: (_list_regex(BAGGAGE, entry, "".join(_percent_or_literal(c) for c in key)),
                         _list_regex(BAGGAGE, entry, f"{_OCTET_CLASS}+")),
        TRACESTATE.header: (_list_regex(TRACESTATE, entry, _lit(key)),
                            _list_regex(TRACESTATE, entry, f"{_OCTET_CLASS}+")),
        route_header.lower(): (f"{_W}{_lit(key)}{_W}", r".*[^ \t].*"),
        COOKIES.header: (_list_regex(COOKIES, COOKIE, cookie_value),
                         _list_regex(COOKIES, COOKIE, f'(?:{_OCTET_CLASS}+|"{_OCTET_CLASS}+")')),
    }


def istio_matches(key: str, route_header: str, entry: str = ENTRY) -> list[dict[str, Any]]:
    """Istio HTTPMatchRequests (ORed) that take a request exactly when `route_key_of` reads `key` from it:
    one per source, each also requiring that no higher source gives a key."""
    regexes = header_regexes(key, route_header, entry)
    matches: list[dict[str, Any]] = []
    higher: dict[str, Mapping[str, str]] = {}
    for header, (gives_key, gives_any) in regexes.items():
        match: dict[str, Any] = {"headers": {header: {"regex": gives_key}}}
        if higher:
            match["withoutHeaders"] = dict(higher)
        matches.append(match)
        higher[header] = {"regex": gives_any}
    return matches
