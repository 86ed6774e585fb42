"""Multi-stage retrieval: BM25 (Lucene via Pyserini), LoRA dense retrieval over FAISS, LoRA reranking."""

__version__ = "0.1.0"

from .stage import Pipeline, Stage  # noqa: E402
from .types import Corpus, DataFormatError, DataWarning, Document, Qrels, Queries, Ranking  # noqa: E402

__all__ = [
    "Corpus", "DataFormatError", "DataWarning", "Document", "Pipeline", "Qrels", "Queries", "Ranking", "Stage",
    "BM25",
]


def __getattr__(name):  # stages load lazily: importing the package never starts Java or torch
    if name == "BM25":
        from .stages.bm25 import BM25

        return BM25
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
