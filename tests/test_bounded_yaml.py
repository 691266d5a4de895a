"""The bounds on untrusted YAML, and when a text is parsed once instead of twice."""
from __future__ import annotations

import random

import pytest
import yaml

from dropbox_runner import entries
from dropbox_runner.entries import MAX_DEPTH, UnusableEntry, load_bounded_yaml

# What YAML builds structure from, and a little of what it builds it around.
ALPHABET = "{}[]-:?,&*!|>#'\" \n\tab0"


def _events_and_depth(text: str) -> tuple[int, int]:
    """The events libyaml emits for ``text`` (up to its error, if any) and their deepest nesting."""
    events = depth = deepest = 0
    try:
        for event in yaml.parse(text, Loader=entries._LOADER):
            events += 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                deepest = max(deepest, depth)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        pass        # the load stops at the same place: what came before is what it built
    return events, deepest


def test_the_text_bounds_what_libyaml_builds_from_it():
    """The shortcut's premise, on texts made of YAML's indicators: the nesting never
    exceeds the count of characters that can start a mapping or sequence, and the events
    never exceed four a character and four more."""
    chooser = random.Random(18)
    texts = ["-", ":", "?", "[]", "{}", "[:]", "[:,:,:]", "- - - -", "? ? ?", "---\n---\n", "- :\n  - :"]
    texts += ["".join(chooser.choice(ALPHABET) for _ in range(chooser.randint(1, 40))) for _ in range(4000)]
    for text in texts:
        events, deepest = _events_and_depth(text)
        assert deepest <= sum(map(text.count, entries._NESTING)), text
        assert events <= 4 * len(text) + 4, text


def test_a_plain_job_file_is_parsed_once(monkeypatch):
    parses = []
    real_parse = yaml.parse
    monkeypatch.setattr(yaml, "parse", lambda *args, **kwargs: parses.append(1) or real_parse(*args, **kwargs))
    text = "script: trivial\nargs: {seconds: 0, label: a-b-c}\noutput_map:\n  out: /data/run-1/o1.txt\n"
    assert load_bounded_yaml(text) == {"script": "trivial", "args": {"seconds": 0, "label": "a-b-c"},
                                       "output_map": {"out": "/data/run-1/o1.txt"}}
    assert parses == []


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 20000])
def test_text_that_could_nest_too_deep_is_walked_as_events_first_and_refused(depth):
    with pytest.raises(UnusableEntry, match="nests deeper than"):
        load_bounded_yaml("args: " + "[" * depth + "]" * depth)


def test_nesting_just_within_the_bound_loads_by_either_path():
    shallow = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)       # short enough to skip the events
    assert entries._within_bounds(shallow)
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH                 # walked first, and allowed
    assert not entries._within_bounds(deepest)
    for text in (shallow, deepest):
        value, levels = load_bounded_yaml(text), 0
        while value:
            value, levels = value[0], levels + 1
        assert levels == text.count("[") - 1      # the innermost is empty


def test_a_long_text_is_walked_for_its_events(monkeypatch):
    monkeypatch.setattr(entries, "MAX_EVENTS", 100)
    with pytest.raises(UnusableEntry, match="more than 100 parts"):
        load_bounded_yaml("items: [" + ", ".join("x" for _ in range(150)) + "]")
