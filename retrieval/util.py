"""Small shared helpers: atomic writes, JSON artefacts, device choice."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .version import __version__


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e.msg}, line {e.lineno}); the artefact is damaged") from None


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    A crash leaves only a ``.tmp-*`` folder behind, never a half-written artefact at ``path``; a crash in
    the middle of replacing an existing ``path`` (two renames) is finished by ``recover_dir``. With ``sync``
    every file and folder is on disk (fsync) before the renames, and the renames after.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass overwrite=True to replace it, or load it instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        yield tmp
        if sync:
            fsync_tree(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)  # a crash between these two renames: recover_dir(path) finishes the swap
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        if sync:
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(path: str | os.PathLike) -> str | None:
    """Clean up after an ``atomic_dir`` that a crash interrupted; returns what was done, if anything.

    ``path`` missing while an ``.old-*`` folder holds it means the crash came between the two renames of a
    replacement, after the new folder was complete: the new folder takes its place (or, if it is gone too,
    the old one comes back). Any other ``.tmp-*`` folder is a write that never finished and is removed.
    """
    path = Path(path)
    tmps = sorted(path.parent.glob(glob.escape(path.name) + ".tmp-*"))
    olds = sorted(path.parent.glob(glob.escape(path.name) + ".old-*"))
    held = [o / "x" for o in olds if (o / "x").exists()]
    done = None
    if not path.exists() and held:
        if tmps:
            newest = max(tmps, key=lambda p: p.stat().st_mtime)
            os.replace(newest, path)
            done = f"finished an interrupted replacement of {path.name} ({newest.name})"
        else:
            os.replace(held[-1], path)
            done = f"undid an interrupted replacement of {path.name}"
        fsync_dir(path.parent)
    for leftover in [*tmps, *olds]:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
            done = done or f"removed {leftover.name}, left by an interrupted write of {path.name}"
    return done


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root``."""
    root = Path(root)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fsync_dir(d)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVAL_CACHE", Path.home() / ".cache" / "retrieval"))


def library_version() -> str:
    return __version__
