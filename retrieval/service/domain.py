"""One domain of the search service: a saved pipeline folder, its live indexes, and its journal.

On open, the saved folder is checked (every file against its checksum, every part against the others),
the BM25 index is copied to a working folder, and the journal's acknowledged writes are replayed on top:
the live state is always *saved folder + journal*, so a crash at any moment recovers to the last
acknowledged write. A write is validated, its documents encoded, then journaled (synced) and applied to
the live BM25 and FAISS indexes and the document store before it is acknowledged.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..pipeline.folder import CORPUS_NAME, load_pipeline, pipeline_config, write_config, write_corpus
from ..pipeline.registry import WriteRefused, kind_of
from ..stage import Pipeline
from ..types import Corpus, Document, Queries
from ..util import atomic_dir
from .journal import Journal

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
JOURNAL = "journal.log"


class DomainError(Exception):
    """A request a domain cannot serve; ``status`` is the HTTP status, ``code`` a short machine name."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class _RWLock:
    """Many readers (searches) or one writer (an update of the live indexes); a waiting writer goes first,
    so a steady stream of searches cannot hold writes off."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class SearchResult:
    hits: list[tuple[str, float]]
    trace: list
    seconds: float


class Domain:
    """A pipeline that serves searches and takes incremental writes, durably."""

    def __init__(self, name: str, folder: Path, work_dir: Path, generation: int = 0):
        if not NAME.match(name):
            raise ValueError(f"domain name {name!r}: use 1-64 lower-case letters, digits, '-' or '_'")
        self.name, self.folder, self.work_dir = name, Path(folder), Path(work_dir)
        self.generation = generation  # reloads get fresh adapter names and working folders
        self.prefix = name if generation == 0 else f"{name}_r{generation}"
        self.status, self.error = "closed", None
        self.pipeline = None
        self.live: list = []  # (stage kind, live stage), in pipeline order
        self.config: dict = {}
        self.docs: dict[str, Document] = {}
        self.journal: Journal | None = None
        self.replayed = 0
        self.cut_bytes = 0
        self.open_seconds = 0.0
        self.compacting = False
        self._lock = _RWLock()  # searches read the live indexes; applying a write changes them
        self._writes = threading.Lock()  # journal order: one write or compaction at a time

    # ------------------------------------------------------------------ opening
    def open(self, models, threads: int | None = None, sync: bool = True, placer=None) -> "Domain":
        """Load the saved pipeline over the shared models (a sharded stage's shards opened by ``placer``: here,
        or on Ray actors) and replay the journal. On any failure the domain is marked ``damaged`` with the reason
        and raises nothing: a damaged domain is reported, not served."""
        t0 = time.perf_counter()
        try:
            self._open(models, threads, sync, placer)
            self.status, self.error = "ready", None
        except Exception as e:  # noqa: BLE001 - any failure to open is reported per domain
            self.status, self.error = "damaged", f"{type(e).__name__}: {e}"
            self.pipeline = None
        self.open_seconds = time.perf_counter() - t0
        return self

    def _open(self, models, threads, sync, placer=None) -> None:
        pipeline, corpus, config = load_pipeline(self.folder, threads=threads, models=models, adapter_prefix=self.prefix,
                                                 placer=placer)
        self.config = config
        self.docs = dict(corpus.items())
        work = self.work_dir / self.name / f"g{self.generation}"
        if self.generation == 0 and work.parent.exists():
            shutil.rmtree(work.parent)  # working copies of an earlier run of the service
        work.mkdir(parents=True, exist_ok=True)
        self.live = []
        for stage in pipeline.stages:
            kind = kind_of(stage)
            stage = kind.live(stage, work / stage.name, threads)  # e.g. BM25 on a working copy of its index
            kind.attach_documents(stage, self.docs)
            self.live.append((kind, stage))
        self.pipeline = Pipeline([stage for _, stage in self.live], name=pipeline.name)
        self.journal = Journal(self.folder / JOURNAL, sync=sync)
        records, self.cut_bytes = self.journal.open()
        self._replay(records)
        self.replayed = len(records)

    def _replay(self, records: list[dict]) -> None:
        """Apply the journal's net effect at once: one index commit and one encoding pass, not one per record."""
        final: dict[str, Document | None] = {}
        for record in records:
            if record["op"] == "upsert":
                final.update((d["id"], Document(**d)) for d in record["docs"])
            elif record["op"] == "delete":
                final.update((i, None) for i in record["ids"])
            else:
                raise ValueError(f"journal record {record.get('seq')}: unknown operation {record['op']!r}")
        gone = [i for i, d in final.items() if d is None and i in self.docs]
        docs = [d for d in final.values() if d is not None]
        if gone or docs:
            self._apply(docs, gone, self._prepare(docs))

    def close(self, models=None) -> None:
        """Wait for searches and writes in flight, then release the journal, what the live stages hold (an index
        writer's lock) and (with the shared ``models``) this domain's adapters."""
        with self._writes, self._lock.write():
            self.status = "closed"
            if self.journal is not None:
                self.journal.close()
            for kind, stage in self.live:
                kind.close(stage)
            if models is not None:
                for stage in self.stage_names:
                    models.unload(f"{self.prefix}_{stage}")

    # ------------------------------------------------------------------ facts
    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.pipeline.stages] if self.pipeline is not None else []

    def describe(self) -> dict:
        out = {"name": self.name, "status": self.status, "error": self.error, "documents": len(self.docs),
               "stages": [{"name": s.name, "type": type(s).__name__, "k": s.k} for s in self.pipeline.stages]
               if self.pipeline is not None else [],
               "journal": {"records": self.journal.records if self.journal else 0,
                           "last_seq": self.journal.last_seq if self.journal else 0,
                           "replayed_at_start": self.replayed, "torn_bytes_cut": self.cut_bytes},
               "open_seconds": round(self.open_seconds, 3)}
        for kind, stage in self.live if self.pipeline is not None else []:
            out.update(kind.describe(stage))
        return out

    def _ready(self) -> None:
        if self.status != "ready":
            raise DomainError(503, "domain_unavailable",
                              f"domain {self.name!r} is {self.status}" + (f": {self.error}" if self.error else ""))

    # ------------------------------------------------------------------ searching
    def search(self, query: str, k: int, stages: Sequence[str] | None = None) -> SearchResult:
        self._ready()
        pipeline = self.pipeline
        if stages:
            names = self.stage_names
            unknown = [s for s in stages if s not in names]
            if unknown:
                raise DomainError(422, "unknown_stage", f"stage {unknown[0]!r} is not in domain {self.name!r}; "
                                                        f"its stages are {names}")
            order = [names.index(s) for s in stages]
            if order[0] != 0 or order != sorted(set(order)):
                raise DomainError(422, "bad_stages", f"stages must start with {names[0]!r} and keep the pipeline's "
                                                     f"order {names}; got {list(stages)}")
            pipeline = Pipeline([pipeline.stages[i] for i in order])
        t0 = time.perf_counter()
        with self._lock.read():
            ranking = pipeline.search(Queries({"q": query}))
        return SearchResult(ranking.ranked("q")[:k], ranking.trace, time.perf_counter() - t0)

    def document(self, doc_id: str) -> Document:
        self._ready()
        doc = self.docs.get(doc_id)
        if doc is None:
            raise DomainError(404, "no_such_document", f"document {doc_id!r} is not in domain {self.name!r}")
        return doc

    # ------------------------------------------------------------------ writing
    def _prepare(self, docs: list[Document]) -> list:
        """Each stage's work for a write that needs no lock (encoding the documents)."""
        return [kind.prepare(stage, docs) for kind, stage in self.live]

    def _check_write(self, replaced: list[str], deleted: list[str]) -> None:
        for kind, stage in self.live:
            if not kind.writable:
                raise DomainError(409, "read_only", f"domain {self.name!r} has a stage {stage.name!r} of kind "
                                  f"{kind.name!r}, which takes no incremental writes; rebuild the domain instead")
            try:
                kind.check_write(stage, replaced, deleted)
            except WriteRefused as e:
                raise DomainError(409, e.code, f"domain {self.name!r}: {e.detail}") from None

    def upsert(self, docs: list[Document]) -> dict:
        """Add or replace ``docs``: journaled (synced), then applied to every live index, then acknowledged."""
        self._ready()
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DomainError(422, "duplicate_id", f"document id {dup!r} appears twice in the batch")
        self._check_write([i for i in ids if i in self.docs], [])
        prepared = self._prepare(docs)  # outside the lock: searches go on while documents are encoded
        with self._writes:  # one write (or compaction) at a time, in journal order
            self._ready()
            replaced = [i for i in ids if i in self.docs]
            self._check_write(replaced, [])
            seq = self.journal.append({"op": "upsert", "docs": [
                {"id": d.id, "title": d.title, "text": d.text} for d in docs]})
            with self._lock.write():  # searches wait only while the live indexes change
                self._apply_journaled(docs, [], prepared)
        return {"seq": seq, "added": len(docs) - len(replaced), "replaced": len(replaced), "documents": len(self.docs)}

    def delete(self, doc_id: str) -> dict:
        self._ready()
        with self._writes:
            self._ready()
            if doc_id not in self.docs:
                raise DomainError(404, "no_such_document", f"document {doc_id!r} is not in domain {self.name!r}")
            if len(self.docs) == 1:
                raise DomainError(409, "last_document", f"{doc_id!r} is the last document of {self.name!r}; "
                                  f"a domain keeps at least one")
            self._check_write([], [doc_id])
            seq = self.journal.append({"op": "delete", "ids": [doc_id]})
            with self._lock.write():
                self._apply_journaled([], [doc_id], self._prepare([]))
        return {"seq": seq, "deleted": 1, "documents": len(self.docs)}

    # ------------------------------------------------------------------ compaction
    def compact(self) -> dict:
        """Write the live state as a new saved folder and swap it in: the journal starts empty again.

        The folder is replaced with ``atomic_dir`` (written beside the old one, synced, renamed into place;
        ``recover_dir`` finishes a swap that a crash interrupted). Writes wait while this runs; searches do
        not (they read the live indexes, which a compaction leaves as they are).
        """
        t0 = time.perf_counter()
        with self._writes:
            self._ready()
            records, sync = self.journal.records, self.journal.sync
            self.journal.close()
            try:
                with atomic_dir(self.folder, overwrite=True, sync=True) as tmp:
                    self._write_snapshot(tmp)
            finally:  # the new folder's empty journal, or the old one if the snapshot failed
                self.journal = Journal(self.folder / JOURNAL, sync=sync)
                self.journal.open()
            self.config = pipeline_config(self.folder)
        return {"compacted_records": records, "documents": len(self.docs), "seconds": time.perf_counter() - t0}

    def _write_snapshot(self, tmp: Path) -> None:
        corpus = Corpus(self.docs.values())
        write_corpus(corpus, tmp / CORPUS_NAME)
        stages = [kind.snapshot(stage, entry, self.folder / entry["path"], tmp / entry["path"], corpus)
                  for entry, (kind, stage) in zip(self.config["stages"], self.live)]
        config = {k: v for k, v in self.config.items() if k != "checksums"}
        config.update(stages=stages, corpus={"fingerprint": corpus.fingerprint(), "documents": len(corpus)})
        config["info"] = {**config.get("info", {}), "compacted": {
            "journal_records": self.journal.records, "last_seq": self.journal.last_seq, "at": time.time()}}
        write_config(tmp, config)

    def _apply_journaled(self, upserts: list[Document], deletes: list[str], prepared: list) -> None:
        """Apply a write that is in the journal already. If that fails the live indexes may hold part of it:
        the domain stops serving (a restart replays the journal) rather than answer from a half-applied state."""
        try:
            self._apply(upserts, deletes, prepared)
        except Exception as e:
            self.status = "damaged"
            self.error = (f"a journaled write failed to apply ({type(e).__name__}: {e}); reload or restart the "
                          f"service to rebuild the live indexes from the saved folder and the journal")
            raise DomainError(500, "write_failed", self.error) from e

    def _apply(self, upserts: list[Document], deletes: list[str], prepared: list) -> None:
        """Apply one write (deletes first, then adds or replaces) to every live stage and the document store;
        also used to replay the journal at start."""
        deletes = [i for i in deletes if i in self.docs]
        for (kind, stage), work in zip(self.live, prepared):
            kind.apply(stage, upserts, deletes, work)
        for i in deletes:
            del self.docs[i]
        for d in upserts:
            self.docs[d.id] = d
