"""Small shared helpers: atomic writes, JSON artefacts and their seals, file checksums, the cache folder."""

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


def read_json(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """A JSON artefact; ``ValueError`` naming it if it is not JSON, or (``expect``) not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        detail = f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(f"{path}: {what} is not valid JSON ({detail}); the artefact is damaged") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{path}: {what} holds a JSON {type(data).__name__}, not an object; the artefact is damaged")
    return data


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


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``src`` copied to ``dst`` as hard links where the file system allows, as copies where not: for saved files
    that are never written in place (a model folder carried unchanged into the next snapshot of a folder)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


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


class DamagedArtefact(ValueError):
    """A saved artefact (index, model folder, pipeline, cache entry) that is missing files or whose files or
    settings differ from what was recorded when it was written."""


class CacheWarning(UserWarning):
    """A cached artefact could not be reused (damaged, or written without checksums) and is built again."""


SEAL = "seal"


def _digest(config: dict) -> str:
    body = {k: v for k, v in config.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def sealed(config: dict) -> dict:
    """``config`` with a ``seal``: the sha256 of everything else in it, so an edit of any setting is detected."""
    return {**config, SEAL: _digest(config)}


def check_seal(config: dict, path: str | os.PathLike, what: str) -> bool:
    """Raise ``DamagedArtefact`` if ``config`` (read from ``path``) does not match its seal; False if it has none
    (written before seals existed), True if it matches."""
    if SEAL not in config:
        return False
    if config[SEAL] != _digest(config):
        raise DamagedArtefact(f"{path} ({what}) does not match its seal: a setting in it was edited or damaged "
                              f"(restore it from a copy, or build the artefact again)")
    return True


def file_checksums(folder: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path, ``skip`` (relative paths) left out."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in skip}


def verify_files(folder: str | os.PathLike, checksums: dict[str, str], what: str,
                 error: type[DamagedArtefact] = DamagedArtefact) -> None:
    """Raise ``error`` naming the first file of ``checksums`` that is missing or differs."""
    folder = Path(folder)
    for name, digest in checksums.items():
        f = folder / name
        if not f.is_file():
            raise error(f"{folder}: {name} is missing; the {what} is incomplete")
        if sha256_file(f) != digest:
            raise error(f"{folder}: {name} does not match its checksum; the {what} is damaged "
                        f"(restore it from a copy, or build it again)")


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
