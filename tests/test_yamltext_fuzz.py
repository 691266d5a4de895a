"""The result writer's own YAML emitter (``yamltext``) reads back, with both of PyYAML's safe
loaders, to exactly the value written: thousands of random values made of what a result
holds, with text chosen to trip a YAML writer (control characters, YAML's other line
breaks, words a reader takes for booleans, nulls or numbers, indicators, spaces at the
ends, very long text).  The emitter must take them itself (no fallback to PyYAML), so the
fast path is what is tested.  ``DBR_FUZZ_SEEDS=50`` runs more seeds."""
import datetime
import math
import os
import random
import re
import sys

import pytest
import yaml

from dropbox_runner import yamltext
from dropbox_runner.jobs import dump_yaml

FALLBACK = "left to PyYAML"
LOADERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])
SPECIAL = ["yes", "No", "ON", "off", "y", "n", "null", "Null", "~", "", " ", "-", "--", "---", "...", ":", "::",
           "#", "# x", "a #b", "a: b", "a:b", "?", "? x", "!", "!!str", "&a", "*a", "|", ">", "%YAML", "@", "`",
           "'", '"', "[]", "{}", "[", "}", ",", "0x1f", "0o17", "0b101", "017", "1e3", "1.5e-7", "1_000", "190:20:30",
           ".inf", "-.inf", ".NaN", ".5", "+1", "-0", "2026-11-22", "2026-11-22 18:05:48", "=", "<<", "1.0", "0",
           "true\n", "\n", "\n\n", " \n", "a\n ", "\ta", "a\t", "\ufeffa", "\x85", "\u2028", "\u2029", "\r\n",
           "x" * 1500, "é", "\U0001f600", "\ud800", "\udfff", "\ufffe", "\uffff", "\x7f", "\x9f", "\xa0",
           "line one\nline two\n", "  indented\nfirst\n", "out\n\n\n", "a\n\n b\n", "#!/bin/sh\necho hi\n",
           "- item\n- item\n", "key: value\n", "|\n", "--- \n...\n"]
ALPHABET = ("abcXYZ019 _-./:#'\"\\?!&*|>%@`,[]{}~=<+\t\n\r\x00\x01\x1b\x7f\x85\x9f\xa0\u2028\u2029\ufeff"
            "\ufffe\uffffé€\U0001f600")


def random_text(rng):
    if rng.random() < 0.4:
        text = rng.choice(SPECIAL)
        return text if rng.random() < 0.6 else text + rng.choice(SPECIAL)
    if rng.random() < 0.1:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 5)))
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30)))


def random_scalar(rng):
    roll = rng.random()
    if roll < 0.55:
        return random_text(rng)
    if roll < 0.7:
        return rng.choice([0, 1, -1, 2**63, -(2**64) - 1, 10**300, rng.randrange(-10**9, 10**9)])
    if roll < 0.85:
        return rng.choice([0.0, -0.0, 1.5, 1e20, 1e-5, 1e16, 5e-324, 1.7976931348623157e308, float("inf"),
                           float("-inf"), float("nan"), rng.uniform(-1e6, 1e6),
                           rng.random() * 10 ** rng.randrange(-30, 30)])
    return rng.choice([None, True, False])


def random_value(rng, depth=0):
    roll = rng.random()
    if depth < 4 and roll < 0.2:
        return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    if depth < 4 and roll < 0.35:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return random_scalar(rng)


def same(left, right):
    """Equal, with nan equal to nan (and a float never equal to an int or bool)."""
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    return left == right


def no_fallback(data):
    """Only text with a surrogate (which no UTF-8 decoder makes, and which libyaml cannot
    read even escaped), or a key too long to be a simple key, is left to PyYAML."""
    assert has_surrogate(data) or has_long_key(data), f"the emitter left a plain value to PyYAML: {data!r}"
    return FALLBACK


def has_long_key(value):
    if isinstance(value, dict):
        return any(len(key) > 250 or has_long_key(item) for key, item in value.items())
    return isinstance(value, list) and any(has_long_key(item) for item in value)


def has_surrogate(value):
    if isinstance(value, str):
        return bool(re.search("[\ud800-\udfff]", value))
    if isinstance(value, dict):
        return any(has_surrogate(key) or has_surrogate(item) for key, item in value.items())
    return isinstance(value, list) and any(has_surrogate(item) for item in value)


def emitted(value):
    """The emitter's text for ``value``, or None where it (rightly) left it to PyYAML."""
    text = yamltext.emit(value, no_fallback)
    return None if text is FALLBACK else text


@pytest.mark.parametrize("seed", range(int(os.environ.get("DBR_FUZZ_SEEDS", "3"))))
def test_random_values_read_back_exactly(seed):
    rng = random.Random(seed)
    left = 0
    for _ in range(1500):
        value = {random_text(rng): random_value(rng) for _ in range(rng.randrange(1, 6))}
        text = emitted(value)
        left += text is None
        for loader in LOADERS if text is not None else ():
            assert same(yaml.load(text, Loader=loader), value), (loader.__name__, value, text)
    assert left < 300, "the emitter itself must be what is tested"


@pytest.mark.parametrize("text", SPECIAL)
def test_every_special_string_reads_back_as_itself_as_key_and_value(text):
    value = {text: text, "list": [text, {text: [text]}]}
    written = emitted(value)
    for loader in LOADERS if written is not None else ():
        assert same(yaml.load(written, Loader=loader), value), written


def test_the_usual_result_is_plain_readable_yaml():
    block = {"status": "ok", "message": "processed OK", "stdout": "hello\nworld\n", "rc": 0, "attempts": 1,
             "start": "2026-11-22T18:05:48+00:00", "duration": 0.25, "signal": None}
    assert yamltext.emit({"script": "copy", "job": block}, no_fallback) == (
        'script: copy\njob:\n  status: ok\n  message: processed OK\n  stdout: |\n    hello\n    world\n'
        '  rc: 0\n  attempts: 1\n  start: "2026-11-22T18:05:48+00:00"\n  duration: 0.25\n  signal: null\n')


@pytest.mark.parametrize("odd", [
    {1: "a number as a key"}, {"when": datetime.date(2026, 11, 22)}, {"set": {1, 2}}, {"bytes": b"\x00"},
    {"k" * 2000: "a key too long to be a simple key"}, {"deep": eval("[" * 100 + "]" * 100)},
    {"sub": type("Text", (str,), {})("a str subclass")}, {"tuple": (1, 2)},
])
def test_what_the_emitter_is_unsure_of_goes_to_pyyaml(odd):
    calls = []
    assert yamltext.emit(odd, lambda data: calls.append(data) or "fallback\n") == "fallback\n"
    assert calls == [odd]


def test_dump_yaml_falls_back_to_pyyaml_text():
    odd = {"when": datetime.date(2026, 11, 22), "job": {"status": "ok"}}
    assert yaml.safe_load(dump_yaml(odd)) == odd


def test_an_int_too_long_for_str_goes_to_pyyaml():
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    if not limit:
        pytest.fail("this Python has no limit on int digits; nothing to test")
    calls = []
    yamltext.emit({"big": 10 ** (limit + 10)}, lambda data: calls.append(data) or "fallback\n")
    assert calls


def test_keys_are_checked_once_a_process_and_their_memo_stays_bounded(monkeypatch):
    """Every result repeats the same few dozen keys, whose checks were a third of writing
    one: each is checked once.  A job's own keys (thousands, or long) cannot grow the memo
    past its bound, and every key still reads back as written."""
    monkeypatch.setattr(yamltext, "_KEYS", {})
    checked = []
    real_string = yamltext._string
    monkeypatch.setattr(yamltext, "_string", lambda text: checked.append(text) or real_string(text))
    result = {"status": "ok", "job": {"id": "a-1", "provenance": {"host": "vm", "yes": 1, "a: b": 2}}}
    assert yaml.safe_load(dump_yaml(result)) == result
    assert len(checked) == 7 + 3
    checked.clear()
    dump_yaml(result)
    assert checked == ["ok", "a-1", "vm"]           # the values only: the seven keys are known
    many = {f"k{n}": n for n in range(2 * yamltext._KEYS_KEPT)} | {"x" * 65: "long", "yes": "quoted"}
    assert yaml.safe_load(dump_yaml(many)) == many
    assert len(yamltext._KEYS) == yamltext._KEYS_KEPT and "x" * 65 not in yamltext._KEYS
