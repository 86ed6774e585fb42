"""A write-ahead journal: one line per acknowledged write, synced to disk before the write is acknowledged.

Each line is ``<crc32 hex> <json>\\n``. On open, a last line that is incomplete or fails its checksum is a
write that crashed before it was synced (so never acknowledged): it is cut off. A bad line *before* good
ones is damage, not a crash: ``DamagedJournal`` is raised and the domain is not served. The records are
numbered 1, 2, 3 ... from the last compaction (which starts an empty journal), so a record missing from the
middle, or a line repeated, is damage too.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from pathlib import Path
from typing import Iterator

from ..util import fsync_dir


class DamagedJournal(ValueError):
    """A journal line other than the last is unreadable: the file was damaged, not cut off by a crash."""


def _line(record: dict) -> bytes:
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _parse(line: bytes) -> dict | None:
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        return json.loads(payload)
    except ValueError:
        return None


class Journal:
    """Append records durably; read them back in order after a restart.

    >>> journal = Journal("domains/legal/journal.log")
    >>> records, cut = journal.open()          # the records to replay, and bytes cut from a torn tail
    >>> journal.append({"op": "delete", "ids": ["d1"]})   # returns once the record is on disk
    """

    def __init__(self, path: str | os.PathLike, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.last_seq = 0
        self.records = 0

    def open(self) -> tuple[list[dict], int]:
        """Read every complete record, cut a torn last line, and open the file for appending."""
        records, good, cut = [], 0, 0
        if self.path.is_file():
            with open(self.path, "rb") as f:
                lines = f.readlines()
            bad_at = None
            for i, line in enumerate(lines):
                record = _parse(line)
                if record is None:
                    bad_at = i
                    break
                records.append(record)
                good += len(line)
            if bad_at is not None:
                if bad_at != len(lines) - 1:
                    raise DamagedJournal(f"{self.path}: line {bad_at + 1} of {len(lines)} is unreadable but later "
                                         f"lines are not; the journal is damaged (restore the domain from a copy)")
                cut = self.path.stat().st_size - good
                with open(self.path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
        seqs = [r.get("seq") for r in records]
        for i, seq in enumerate(seqs, start=1):  # numbered 1, 2, 3 ... since the last compaction: no gap, no repeat
            if seq != i:
                raise DamagedJournal(f"{self.path}: line {i} holds record {seq!r} where record {i} belongs; a record "
                                     f"is missing or out of place, so the journal is damaged (restore the domain "
                                     f"from a copy)")
        self.last_seq = seqs[-1] if seqs else 0
        self.records = len(records)
        new = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new and self.sync:
            os.fsync(self._fd)
            fsync_dir(self.path.parent)
        return records, cut

    def append(self, record: dict) -> int:
        """Write ``record`` with the next sequence number; returns the number once it is synced to disk."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: the journal is not open")
        with self._lock:
            seq = self.last_seq + 1
            data = _line({"seq": seq, **record})
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk: leave no half line behind for the next append
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); the disk may be full")
            if self.sync:
                os.fsync(self._fd)
            self.last_seq = seq
            self.records += 1
            return seq

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __iter__(self) -> Iterator[dict]:  # pragma: no cover - convenience for inspection
        with open(self.path, "rb") as f:
            for line in f:
                record = _parse(line)
                if record is not None:
                    yield record
