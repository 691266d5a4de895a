"""What the runner policy remembers between cycles, per class, in the workspace.

``runners/policy/<class>.json`` (written by the head node under the workspace lock):
recent submission and arrival times (for the hourly cap and the arrival rate), the queue
wait estimate and which runners it has already counted, and how many pending runners the
class has cancelled.  ``runners/policy/<class>.linger.json`` is the linger the last cycle worked
out, which idle runners of the class read.  They live in a folder of their own, so
nothing that lists runner records (``runners/*.json``) mistakes them for one.

A job can write into the workspace, so what is read back is checked: anything that is not
what the head node writes counts as nothing remembered.

Both files are rewritten by every cycle, under a temporary name and renamed (a head node
killed half-way leaves them whole), without an fsync: after a power cut either may be as
an earlier cycle left it, or empty, which counts as nothing remembered, and the per-cycle
cap and max_runners still bound the submissions.  Synced, they cost two journal commits a
cycle (a round trip to the server each on NFS) while the submitter waited for the answer.
"""
import os
import time

from . import policy
from .files import read_json, write_json

# An idle runner trusts a linger this recent; an older one (no cycle has run: the
# submitter is stopped) leaves it to the class's fixed idle_timeout.
LINGER_FRESH_SECONDS = 900
SEEN_KEPT = 200


def folder(store):
    return os.path.join(store.runners_dir(), "policy")


def state_path(store, job_class):
    return os.path.join(folder(store), job_class + ".json")


def linger_path(store, job_class):
    return os.path.join(folder(store), job_class + ".linger.json")


def load(store, job_class, now):
    raw = read_json(state_path(store, job_class), {})
    raw = raw if isinstance(raw, dict) else {}
    return {
        "submitted": policy.recent(_numbers(raw.get("submitted")), now, policy.HOUR),
        "arrivals": policy.recent(_numbers(raw.get("arrivals")), now, policy.ARRIVAL_WINDOW),
        "queue_wait": _number(raw.get("queue_wait")),
        "seen": [name for name in raw.get("seen") or [] if isinstance(name, str)][-SEEN_KEPT:],
        "cancelled": int(_number(raw.get("cancelled")) or 0),
    }


def save(store, job_class, state):
    os.makedirs(folder(store), mode=0o700, exist_ok=True)
    write_json(state_path(store, job_class), state, durable=False)


def write_linger(store, job_class, seconds, now):
    os.makedirs(folder(store), mode=0o700, exist_ok=True)
    write_json(linger_path(store, job_class), {"seconds": seconds, "at": now}, durable=False)


def read_linger(store, job_class, fallback, now=None):
    """The linger for an idle runner: the last cycle's, or ``fallback`` when there is none
    recent enough (or it is not a number); never more than ``fallback``."""
    now = time.time() if now is None else now
    advice = read_json(linger_path(store, job_class), {})
    advice = advice if isinstance(advice, dict) else {}
    seconds, at = _number(advice.get("seconds")), _number(advice.get("at"))
    if seconds is None or at is None or not 0 <= now - at <= LINGER_FRESH_SECONDS:
        return fallback
    return max(0.0, min(seconds, fallback))


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _numbers(values):
    if not isinstance(values, list):
        return []
    return [number for number in (_number(value) for value in values) if number is not None]
