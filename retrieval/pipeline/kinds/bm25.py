"""The BM25 stage in a pipeline folder: its index folder as it is; live, a working copy that takes writes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from ...stages.bm25 import BM25, write_config
from ...types import Corpus, Document
from ..registry import LoadContext, PipelineMismatch, StageKind, register


def check_corpus(stage, corpus: Corpus, where: str) -> None:
    """``PipelineMismatch`` if the BM25 index (one, or sharded) of ``stage`` was built from another corpus."""
    if stage.corpus_fingerprint != corpus.fingerprint():
        raise PipelineMismatch(f"{stage.name}: the BM25 index{where} was built from another corpus "
                               f"({stage.corpus_fingerprint[:12]}, the pipeline's is {corpus.fingerprint()[:12]})")


class BM25Kind(StageKind):
    name, stage_class = "bm25", BM25
    writable = True

    def save(self, stage: BM25, folder: Path, corpus: Corpus) -> dict:
        check_corpus(stage, corpus, "")
        shutil.copytree(stage.index_dir, folder, ignore=shutil.ignore_patterns("*.tmp-*", "write.lock"))
        return {"backend": stage.backend, "k1": stage.k1, "b": stage.b}

    def load(self, entry: dict, folder: Path, context: LoadContext) -> BM25:
        stage = BM25(folder, k=entry["k"], k1=entry["k1"], b=entry["b"], threads=context.threads, name=entry["name"])
        check_corpus(stage, context.corpus, f" in {folder}")
        return stage

    def live(self, stage: BM25, work: Path, threads: int | None = None) -> BM25:
        """A working copy of the saved index: the saved folder is never written."""
        shutil.copytree(stage.index_dir, work)
        return BM25(work, k=stage.k, k1=stage.k1, b=stage.b, threads=threads, name=stage.name)

    def apply(self, stage: BM25, upserts: Sequence[Document], deletes: Sequence[str], prepared) -> None:
        stage.update(add=upserts, delete=deletes)

    def snapshot(self, stage: BM25, entry: dict, src: Path, dst: Path, corpus: Corpus) -> dict:
        # the working copy, committed by every write; not Lucene's lock file
        shutil.copytree(stage.index_dir, dst, ignore=shutil.ignore_patterns("write.lock", "*.tmp-*"))
        write_config(dst, {**stage.config, "corpus_fingerprint": corpus.fingerprint(), "num_docs": len(corpus)})
        return entry

    def close(self, stage: BM25) -> None:
        stage.close()


register(BM25Kind())
