"""Whole-job results, addressed by content (the dsHPC idea, for whole jobs).

A job's key hashes what decides its outputs: the template's text, the script rendered for
it (with a neutral workspace path, so the job id does not enter), its args and the sha256
of every input.  An ``ok`` job's outputs are kept under its key; a later job with the same
key is answered from here without touching the cluster.  Entries are folders written
under a temporary name and renamed into place, so a crash never leaves half an entry; the
least recently used go first when the cache outgrows its cap.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .history import History

NEUTRAL_WORKSPACE = "/dropbox-runner/workspace"


def cache_key(template_digest: str, neutral_script: str, args: dict[str, Any],
              input_digests: dict[str, str]) -> str:
    material = json.dumps([template_digest, hashlib.sha256(neutral_script.encode()).hexdigest(),
                           args, input_digests], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


class ResultCache:
    def __init__(self, folder: Path, max_bytes: int, history: History):
        self.folder = folder
        self.max_bytes = max_bytes
        self.history = history

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def entry_dir(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored entry (its outputs' folder and the original run's result block)."""
        entry = self.entry_dir(key)
        try:
            meta = json.loads((entry / "entry.json").read_text())
        except (OSError, ValueError):
            return None
        self.history.db.execute("UPDATE cache_entries SET last_used = ? WHERE key = ?", (time.time(), key))
        return {"outputs": entry / "outputs", **meta}

    def store(self, key: str, produced: dict[str, Path], block: dict[str, Any]) -> None:
        """Keep an ok job's outputs (copied, so the entry outlives the job's own files)."""
        entry = self.entry_dir(key)
        if entry.exists():
            return
        partial = self.folder / f".partial-{key}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        size = 0
        try:
            (partial / "outputs").mkdir(parents=True)
            for key_name, source in produced.items():
                shutil.copyfile(source, partial / "outputs" / key_name)
                size += source.stat().st_size
            (partial / "entry.json").write_text(json.dumps({"block": block}))
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)    # a full cache disk keeps nothing half-made
            raise
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, entry)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)   # a twin got there first
            return
        now = time.time()
        self.history.db.execute("INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?)", (key, size, now, now))
        self.evict()

    def evict(self) -> list[str]:
        """Drop least recently used entries until the cache fits its cap."""
        total = self.stats()["bytes"]
        evicted = []
        for key, size in list(self.history.db.execute("SELECT key, bytes FROM cache_entries ORDER BY last_used")):
            if total <= self.max_bytes:
                break
            self.history.db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
            shutil.rmtree(self.entry_dir(key), ignore_errors=True)
            total -= size
            evicted.append(key)
        return evicted

    def stats(self) -> dict[str, Any]:
        entries, size = self.history.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM cache_entries").fetchone()
        return {"entries": entries, "bytes": size, "max_bytes": self.max_bytes, "folder": str(self.folder)}

    def clear(self) -> int:
        entries = self.stats()["entries"]
        self.history.db.execute("DELETE FROM cache_entries")
        shutil.rmtree(self.folder, ignore_errors=True)
        return entries
