"""A small fuzzer over job files and dropbox entries: whatever lands in the dropbox, no
cycle raises, bystanders finish ok exactly once, and every job file that can be answered
is answered.  ``DBR_FUZZ_SEEDS=50`` runs more seeds."""
import os
import random
import socket
import string
from collections import Counter

import pytest
import yaml
from helpers import drop

from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import Submitter
from dropbox_runner.transport.local import LocalTransport

VALID = {"script": "ledger", "args": {"seconds": 0}, "cache": False}


def random_text(rng, size):
    return "".join(rng.choice(string.printable) for _ in range(size))


def mutated_job(rng, root):
    """A valid job with one part replaced by something odd."""
    job = dict(VALID, output_map={"out": str(root / "outputs" / f"m{rng.randrange(10**9)}.txt")})
    key = rng.choice(["script", "args", "input_map", "output_map", "class", "expected_time", "cache", "extra"])
    job[key] = rng.choice([None, "", "../..", "/", "\0", -1, 10**30, 1e308, float("nan"), [], {}, ["a"],
                           {"k": [1, {"x": None}]}, "x" * 5000, random_text(rng, 40), True,
                           {"i": "/dev/zero"}, {"i": "/proc/self/mem"}, {"o": "/dev/null"}, "1-99999999:00:00"])
    return yaml.safe_dump(job, allow_unicode=True).encode("utf-8", "surrogateescape")


def alias_bomb(levels=9):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels)]
    return ("script: ledger\n" + "\n".join(lines) + "\n").encode()


def make_entry(rng, folder, number):
    """One odd entry; returns its name."""
    stem = f"f{number}"
    kind = rng.randrange(14)
    if kind == 0:
        name = stem + ".job"
        (folder / name).write_bytes(os.urandom(rng.randrange(1, 4000)))
    elif kind == 1:
        name = stem + ".job"
        (folder / name).write_bytes(alias_bomb())
    elif kind == 2:
        name = stem + ".job"
        depth = rng.choice([100, 5000, 30000])
        (folder / name).write_text("script: ledger\nargs: " + "[" * depth + "]" * depth + "\n")
    elif kind == 3:
        name = f"{number:03d}" + "n" * (250 - 3 - len(".job")) + ".job"      # 250 bytes: no room for .submitted
        (folder / name).write_text(yaml.safe_dump(VALID))
    elif kind == 4:
        name = stem + rng.choice([".job", ".job.cancel", ".job.submitted", ".job.finished"])
        os.mkfifo(folder / name)
    elif kind == 5:
        name = stem + rng.choice([".job", ".job.cancel", ".job.submitted", ".job.finished"])
        (folder / name).mkdir()
    elif kind == 6:
        name = stem + rng.choice([".job", ".job.submitted", ".job.finished", ".job.cancel"])
        os.symlink(rng.choice(["/dev/zero", "/etc/shadow", "/nonexistent", str(folder), name]), folder / name)
    elif kind == 7:
        name = stem + ".job"
        (folder / name).write_bytes(mutated_job(rng, folder.parent))
    elif kind == 8:
        name = stem + ".job.submitted"
        (folder / name).write_bytes(rng.choice([os.urandom(500), alias_bomb(), b"id: x\n", b"[1, 2]"]))
    elif kind == 9:
        name = stem + ".job"
        (folder / name).write_bytes(mutated_job(rng, folder.parent))
        (folder / (stem + ".job.finished")).write_bytes(os.urandom(100))
    elif kind == 10:
        name = stem + ".job"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(folder / name))
        server.close()
    elif kind == 11:
        name = stem + ".job"
        (folder / name).write_bytes(mutated_job(rng, folder.parent))
        os.mkdir(folder / (stem + ".job.finished"))
    elif kind == 12:
        name = stem.encode() + b"\xff\xfe.job"
        with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
            handle.write(yaml.safe_dump(VALID).encode())
        name = os.fsdecode(name)
    else:
        name = stem + ".job"
        (folder / name).write_text("")
    return name


@pytest.mark.parametrize("seed", range(1, 1 + int(os.environ.get("DBR_FUZZ_SEEDS", "3"))))
def test_no_cycle_ever_raises_and_bystanders_finish(config, seed):
    rng = random.Random(seed)
    for number in range(40):
        make_entry(rng, config.dropbox, number)
    bystanders = []
    for number in range(3):
        bystanders.append(f"bystander{number}.job")
        drop(config, bystanders[-1], dict(VALID, output_map={
            "out": str(config.dropbox.parent / "outputs" / f"b{number}.txt")}))
    submitter = Submitter(config, LocalTransport())
    try:
        for _ in range(200):
            submitter.cycle()       # raising here fails the test
            if all(name in Dropbox(config.dropbox).scan().finished for name in bystanders):
                break
        else:
            raise AssertionError("the bystanders never finished")
        for _ in range(2):
            submitter.cycle()
    finally:
        submitter.close()
    dropbox = Dropbox(config.dropbox)
    ids = set()
    for name in bystanders:
        block = dropbox.read_result(name)["job"]
        assert block["status"] == "ok", block
        ids.add(block["id"])
    ran = Counter((config.dropbox.parent / "ledger").read_text().split())
    assert ids <= set(ran) and set(ran.values()) == {1}, ran       # nothing ran twice
    assert dropbox.scan().new == []         # every job file was answered, taken or is unusable

