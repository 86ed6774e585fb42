"""The registry of stage kinds: how each kind of stage saves itself into a pipeline folder, loads itself back,
and (in the search service) takes incremental writes.

Saving (``save_pipeline``), loading (``load_pipeline``) and the service ask the registry instead of testing
stage classes themselves, so a new stage kind is one module with a ``StageKind`` subclass and one line that
registers it::

    class PriorKind(StageKind):
        name, stage_class = "prior", Prior          # "type" in pipeline.json; the stage class it handles
        def save(self, stage, folder, corpus): ...   # write the stage's files into folder; return its settings
        def load(self, entry, folder, context): ...  # the stage again, from its folder and settings

    register(PriorKind())

A kind that says nothing about writes is served read-only: the service refuses a write (409) to a domain with
such a stage, rather than let the stage fall out of step with its documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..shards import Placer
from ..types import Corpus, Document
from ..util import link_tree


class PipelineMismatch(ValueError):
    """The parts of a saved pipeline do not fit together (another corpus, encoder or base model)."""


@dataclass
class LoadContext:
    """What loading a stage may use besides its own folder and settings."""

    corpus: Corpus
    device: str | None = None
    threads: int | None = None
    models: object | None = None          # a SharedModels: encoders and rerankers share base models
    adapter_prefix: str | None = None     # with models: adapters are loaded as f"{prefix}_{stage name}"
    check_files: bool = True              # the folder's files were (or will be) checked against their checksums
    placer: Placer | None = None          # where index shards are opened (None: this process; or Ray actors)

    def adapter_name(self, stage_name: str) -> str:
        return f"{self.adapter_prefix}_{stage_name}"


class WriteRefused(Exception):
    """A write a stage cannot take (the service answers 409 with ``code`` and the reason)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


class StageKind:
    """How one kind of stage is saved, loaded and kept live. Subclasses set ``name`` and ``stage_class`` and
    implement ``save`` and ``load``; the write hooks are optional (see the module docstring)."""

    name: str = ""
    stage_class: type = object

    # ------------------------------------------------------------------ saving and loading
    def save(self, stage, folder: Path, corpus: Corpus) -> dict:
        """Write the stage's files into ``folder`` (it does not exist yet) and return the settings that
        ``load`` needs, recorded in ``pipeline.json``; check that the stage was built from ``corpus``."""
        raise NotImplementedError

    def load(self, entry: dict, folder: Path, context: LoadContext):
        """The stage saved by ``save``: ``entry`` is its record in ``pipeline.json`` (``name``, ``k``, ``type``
        and what ``save`` returned). Raise ``PipelineMismatch`` when the parts do not fit together."""
        raise NotImplementedError

    # ------------------------------------------------------------------ live writes (the search service)
    writable = False  # True: the kind implements the hooks below (or needs none of them)

    def live(self, stage, work: Path, threads: int | None = None):
        """The stage the service serves and writes to (e.g. BM25 on a working copy of its saved index)."""
        return stage

    def attach_documents(self, stage, documents: dict[str, Document]) -> None:
        """Give the stage the service's live document store (a stage that reads document text)."""

    def prepare(self, stage, docs: Sequence[Document]):
        """Work for a write done before the domain's lock is taken (e.g. encoding documents); passed to ``apply``."""
        return None

    def check_write(self, stage, replaced: Sequence[str], deleted: Sequence[str]) -> None:
        """Raise ``WriteRefused`` if the stage cannot replace or delete these ids."""

    def apply(self, stage, upserts: Sequence[Document], deletes: Sequence[str], prepared) -> None:
        """Add or replace ``upserts`` and delete ``deletes`` in the live stage."""

    def snapshot(self, stage, entry: dict, src: Path, dst: Path, corpus: Corpus) -> dict:
        """Write the live stage into ``dst`` of a new pipeline folder for ``corpus`` (``src``: its folder in the
        current one); return its updated entry. By default the stage's files did not change: hard-linked (or copied)."""
        link_tree(src, dst)
        return entry

    def describe(self, stage) -> dict:
        """Facts the service reports about the live stage."""
        return {}

    def close(self, stage) -> None:
        """Release what the live stage holds (e.g. an index writer's lock)."""


_KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Make ``kind`` known to saving, loading and the service (a later kind of the same name replaces it)."""
    if not kind.name or not isinstance(kind.stage_class, type):
        raise ValueError(f"{type(kind).__name__}: a stage kind needs a name and a stage_class")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, StageKind]:
    return dict(_KINDS)


def kind_of(stage) -> StageKind:
    """The kind that handles ``stage`` (the most specific registered class it is an instance of)."""
    matches = [k for k in _KINDS.values() if isinstance(stage, k.stage_class)]
    if not matches:
        raise TypeError(f"{getattr(stage, 'name', stage)!r}: no stage kind is registered for {type(stage).__name__}; "
                        f"registered kinds: {sorted(_KINDS)} (register one with retrieval.pipeline.register)")
    return max(matches, key=lambda k: len(k.stage_class.__mro__))


def kind_named(name: str, where: str = "") -> StageKind:
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"{where}unknown stage type {name!r}; registered kinds: {sorted(_KINDS)} (a stage kind of "
                         f"your own must be registered with retrieval.pipeline.register before loading)")
    return kind
