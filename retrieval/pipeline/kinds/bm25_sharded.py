"""The sharded BM25 stage in a pipeline folder: its index folder (``ShardedBM25``: shard folders and the config that
names them) as it is; each shard opened by the load context's placer (this process, or one Ray actor each).
Read-only: a kind that takes no writes makes the search service refuse writes to the domain (409)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...stages.bm25_sharded import ShardedBM25
from ...types import Corpus
from ..registry import LoadContext, StageKind, register
from .bm25 import check_corpus


class ShardedBM25Kind(StageKind):
    name, stage_class = "bm25-sharded", ShardedBM25

    def save(self, stage: ShardedBM25, folder: Path, corpus: Corpus) -> dict:
        check_corpus(stage, corpus, "")
        shutil.copytree(stage.index_dir, folder, ignore=shutil.ignore_patterns("*.tmp-*"))
        return {"backend": stage.backend, "k1": stage.k1, "b": stage.b, "shards": stage.shards}

    def load(self, entry: dict, folder: Path, context: LoadContext) -> ShardedBM25:
        stage = ShardedBM25(folder, k=entry["k"], threads=context.threads, name=entry["name"], placer=context.placer)
        check_corpus(stage, context.corpus, f" in {folder}")
        return stage

    def describe(self, stage: ShardedBM25) -> dict:
        return {"shards": stage.shards, "placed": getattr(stage.pool, "where", "local")}

    def close(self, stage: ShardedBM25) -> None:
        stage.close()


register(ShardedBM25Kind())
