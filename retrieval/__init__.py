"""Multi-stage retrieval: BM25 (Lucene via Pyserini), LoRA dense retrieval over FAISS, LoRA reranking."""

__version__ = "0.1.0"

from .stage import Pipeline, Stage  # noqa: E402
from .types import Corpus, DataFormatError, DataWarning, Document, Qrels, Queries, Ranking  # noqa: E402

__all__ = [
    "Corpus", "DataFormatError", "DataWarning", "Document", "Pipeline", "Qrels", "Queries", "Ranking", "Stage",
    "BM25", "Dense", "Rerank", "load_pipeline", "save_pipeline", "build_pipeline",
]

_LAZY = {
    "BM25": ("retrieval.stages.bm25", "BM25"),
    "Dense": ("retrieval.stages.dense", "Dense"),
    "Rerank": ("retrieval.stages.rerank", "Rerank"),
    "load_pipeline": ("retrieval.saved", "load_pipeline"),
    "save_pipeline": ("retrieval.saved", "save_pipeline"),
    "build_pipeline": ("retrieval.train", "build_pipeline"),
}


def __getattr__(name):  # stages load lazily: importing the package never starts Java or torch
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
