"""Reading what tools put in the dropbox, at a bounded cost whatever they put there.

Anything in the dropbox may be hostile or half-made: a folder named ``x.job``, a FIFO that
would block a plain ``open`` forever, a symbolic link to somewhere else, a YAML file that
expands to gigabytes through aliases or nests deeper than the parser's stack.  Files are
opened without following links and without blocking, checked with ``fstat`` to be regular
files of a bounded size, and parsed with a bounded depth, event count and expansion, so
one entry's cost cannot stall the cycle for the others.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 64            # nesting of mappings and sequences
MAX_EVENTS = 200_000      # YAML events (scalars, starts, ends, aliases) in one document
MAX_NODES = 200_000       # values after aliases are expanded
MAX_MESSAGE_CHARS = 4000  # what an error message may hold (results, logs)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnusableEntry(ValueError):
    """A dropbox entry that is not a regular file of a bounded size, or YAML beyond the bounds."""


def kind_of(mode: int) -> str:
    """Words for a file type, for messages."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return words
    return "not a regular file"


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file, opened without following a link or blocking.

    UnusableEntry for a link, a folder, a FIFO or anything over ``limit`` bytes;
    FileNotFoundError when it is gone; other OSErrors as they come.
    """
    shown = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if os.path.islink(path):
            raise UnusableEntry(f"{shown} is a symbolic link") from None
        if os.path.isdir(path):
            raise UnusableEntry(f"{shown} is a folder") from None
        raise error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableEntry(f"{shown} is {kind_of(info.st_mode)}")
        if info.st_size > limit:
            raise UnusableEntry(f"{shown} is {info.st_size} bytes; files here are limited to {limit}")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnusableEntry(f"{shown} grew past {limit} bytes while being read")
        return data
    finally:
        os.close(fd)


def load_bounded_yaml(text: str) -> Any:
    """``load_yaml`` for untrusted text: UnusableEntry when it nests deeper than MAX_DEPTH,
    has more than MAX_EVENTS events, or expands (through aliases) past MAX_NODES values.
    yaml.YAMLError for text that is not YAML.

    The event pass runs first because building deeply nested values recurses (in C with
    libyaml, where no RecursionError saves the process); events are a flat stream.  It is
    left out where the text itself rules both bounds out (``_within_bounds``): a job file's
    one parse instead of two (issue 18)."""
    if not _within_bounds(text):
        _check_events(text)
    data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    _check_expansion(data)
    return data


# Every mapping or sequence starts at one of these characters: ``{`` ``[`` (flow), ``-``
# (a block sequence's first entry), ``:`` or ``?`` (a block mapping's first key).
_NESTING = "{[-:?"


def _within_bounds(text: str) -> bool:
    """Whether ``text`` can neither nest deeper than MAX_DEPTH nor make more than
    MAX_EVENTS events, without parsing it.  A mapping or sequence needs a character of
    ``_NESTING`` of its own, so fewer of them than MAX_DEPTH bound the nesting; every
    event but the stream's and the document's four needs a character of its own too (a
    scalar, an alias, an indicator; an empty value its indicator, which serves as well
    its container's start and end, hence four), so a short text bounds the events."""
    return 4 * len(text) + 4 <= MAX_EVENTS and sum(map(text.count, _NESTING)) < MAX_DEPTH


def _check_events(text: str) -> None:
    depth = events = 0
    too_deep = UnusableEntry(f"the YAML nests deeper than {MAX_DEPTH} levels")
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            events += 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise too_deep
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if events > MAX_EVENTS:
                raise UnusableEntry(f"the YAML has more than {MAX_EVENTS} parts")
    except yaml.YAMLError as error:
        # The scanner reads ahead of the events, and PyYAML 6.0.4 (with its libyaml) stops
        # at its own nesting limit first: the same refusal, said as ours.
        if "nesting depth" in str(error):
            raise too_deep from None
        raise


def load_bounded_document(text: str) -> Any:
    """``load_bounded_yaml`` for a file the submitter writes as JSON where it can (JSON is
    YAML too, and parses some twenty times faster: ``Dropbox.hold``): text that reads as
    JSON is taken as such, within the same bounds; anything else (an older hold, a
    tool's edit) is bounded YAML."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return load_bounded_yaml(text)
        _check_expansion(data)
        return data
    return load_bounded_yaml(text)


def _check_expansion(data: Any) -> None:
    """Count values as a reader that expands aliases would see them (a shared value counts
    each time), stopping at MAX_NODES, and their nesting, stopping at MAX_DEPTH: an alias
    bomb is small in memory until something (a JSON dump, a job id) walks it, and parsed
    JSON has no events the YAML pass could count."""
    seen, stack = 0, [(data, 0)]
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise UnusableEntry(f"the document expands to more than {MAX_NODES} values")
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise UnusableEntry(f"the document nests deeper than {MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def bounded_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... {len(text) - limit} more characters cut]"
