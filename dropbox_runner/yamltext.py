"""YAML text for the plain shapes a result holds, without PyYAML's representer.

Writing ``x.job.finished`` through PyYAML's representer and emitter (even libyaml's) was
the largest Python cost of a collection, about 0.3 ms a job, mostly spent deciding, for
every scalar, which of five styles it may take.  A result is almost always made of
mappings with string keys, lists, strings, ints, floats, booleans and None, and for those
the safe choice is simple: a string is written plain only when it is short of every
character and word YAML gives a meaning (``yes``, ``null``, ``1e3``, ``-``, ``: ``...),
as a literal block (``|``) when it is printable multi-line text (a job's stdout, readable
as it was printed), and else double-quoted with every character a reader could take
otherwise escaped.  Anything else, or anything out of the ordinary (another type, a
key too long to be a simple key, deep nesting), goes to PyYAML as before: this is a fast
path, never a second YAML dialect.  ``tests/test_yamltext_fuzz.py`` checks that
``yaml.safe_load`` reads back exactly the value written, for both PyYAML loaders.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

# ASCII text that no YAML 1.1 resolver takes for anything but a string, with no indicator
# (``:``, ``#``, ``-`` first, quotes, brackets) and no space at either end.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./ -]*\Z")
# YAML 1.1's booleans and nulls that pass _PLAIN (``y``/``n`` too: YAML 1.1 readers other
# than PyYAML take them as booleans).
_WORDS = frozenset("yes Yes YES no No NO true True TRUE false False FALSE on On ON off Off OFF "
                   "y Y n N null Null NULL".split())
# What a double-quoted scalar must escape: its own quote and backslash, every control
# character (C0, DEL, C1; a reader refuses most and folds line breaks), YAML's other line
# breaks (U+2028, U+2029; U+0085 is in C1), the byte-order mark and the two
# non-characters a reader refuses.  A surrogate (never in text decoded from UTF-8) has no
# escape libyaml reads: left to PyYAML, as before.
_ESCAPE = re.compile("[\\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")
_NAMED = {"\\": "\\\\", '"': '\\"', "\0": "\\0", "\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n",
          "\v": "\\v", "\f": "\\f", "\r": "\\r", "\x1b": "\\e", "\x85": "\\N", "\u2028": "\\L", "\u2029": "\\P"}
# A literal block keeps text as it is, but not: any character escaped above except tab and
# line feed; a space or tab before a line break or at the end (a reader may strip it).
_NOT_LITERAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]"
                          "|[ \t]\n|[ \t]\\Z")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]*(?:e[-+][0-9]+)?\Z")
MAX_KEY = 1000          # PyYAML's reader takes a simple key of up to 1024 characters
MAX_DEPTH = 64


class _Unsure(Exception):
    """A value this emitter leaves to PyYAML."""


def emit(data: dict[str, Any], fallback: Callable[[dict[str, Any]], str]) -> str:
    """``data`` as YAML block text, or ``fallback(data)`` where it holds what this emitter
    leaves to PyYAML."""
    if type(data) is not dict:
        return fallback(data)
    if not data:
        return "{}\n"
    lines: list[str] = []
    try:
        _mapping(data, "", lines, 0)
    except (_Unsure, ValueError, RecursionError):   # ValueError: an int too long for str()
        return fallback(data)
    lines.append("")
    return "\n".join(lines)


def _mapping(data: dict[Any, Any], pad: str, lines: list[str], depth: int) -> None:
    for key, value in data.items():
        if type(key) is not str:
            raise _Unsure
        text = _KEYS.get(key) or _key(key)
        _value(value, f"{pad}{text}:", pad, lines, depth)


def _sequence(data: list[Any], pad: str, lines: list[str], depth: int) -> None:
    for item in data:
        _value(item, f"{pad}-", pad, lines, depth)


def _value(value: Any, head: str, pad: str, lines: list[str], depth: int) -> None:
    """``value`` after ``head`` (``key:`` or ``-``), its inner lines indented past ``pad``."""
    kind = type(value)
    if kind is dict or kind is list:
        if not value:
            lines.append(f"{head} {{}}" if kind is dict else f"{head} []")
            return
        if depth >= MAX_DEPTH:
            raise _Unsure
        inner = pad + "  "
        start = len(lines)
        if kind is dict:
            _mapping(value, inner, lines, depth + 1)
        else:
            _sequence(value, inner, lines, depth + 1)
        if head.endswith("-"):      # the first inner line goes on the dash's line: "- a: 1", "- - x"
            lines[start] = f"{head} {lines[start][len(inner):]}"
        else:
            lines.insert(start, head)
        return
    if kind is str:
        if "\n" in value and not _NOT_LITERAL.search(value) and value[0] not in " \t\n" \
                and not value.endswith("\n\n"):
            inner = pad + "  "
            body = value[:-1] if value.endswith("\n") else value
            lines.append(f"{head} |" if value.endswith("\n") else f"{head} |-")
            lines.append(inner + body.replace("\n", "\n" + inner))   # a blank line: indentation only
            return
        lines.append(f"{head} {_string(value)}")
        return
    lines.append(f"{head} {_scalar(value, kind)}")


def _scalar(value: Any, kind: type) -> str:
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "." not in text:
            text = text.replace("e", ".0e") if "e" in text else text + ".0"
        if _FLOAT.match(text):
            return text
    raise _Unsure


def _string(text: str) -> str:
    if _PLAIN.match(text) and text[-1] != " " and text not in _WORDS:
        return text
    return '"' + _ESCAPE.sub(_escape, text) + '"'


# Keys as written, by key: every result repeats the same few dozen (``status``,
# ``provenance``...), whose checks were a third of writing one.  Only short keys are kept,
# and only so many, so a job's own odd keys cannot grow it without bound.
_KEYS: dict[str, str] = {}
_KEYS_KEPT = 4096


def _key(key: str) -> str:
    text = _string(key)
    if len(text) > MAX_KEY:
        raise _Unsure
    if len(key) <= 64 and len(_KEYS) < _KEYS_KEPT:
        _KEYS[key] = text
    return text


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    named = _NAMED.get(character)
    if named:
        return named
    code = ord(character)
    if 0xD800 <= code <= 0xDFFF:
        raise _Unsure
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
