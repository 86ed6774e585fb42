"""Multi-stage retrieval: BM25 (Lucene via Pyserini), LoRA dense retrieval over FAISS, LoRA reranking.

This file is the package's front door: the core types load at once, everything else on first use (PEP 562),
so ``import retrieval`` never starts Java or torch. Modules inside the library import from the module that
defines a name, never from here (``tests/test_layers.py`` keeps it so).
"""

from .stage import Pipeline, Stage
from .types import Corpus, DataFormatError, DataWarning, Document, Qrels, Queries, Ranking
from .version import __version__

_LAZY = {
    "BM25": "retrieval.stages.bm25",
    "Dense": "retrieval.stages.dense",
    "document_index": "retrieval.stages.dense",
    "Rerank": "retrieval.stages.rerank",
    "fit_rerank": "retrieval.stages.rerank",
    "fit_skip": "retrieval.stages.rerank",
    "Fusion": "retrieval.stages.fusion",
    "FaissIndex": "retrieval.index.faiss",
    "load_dataset": "retrieval.data",
    "evaluate": "retrieval.evaluation",
    "PipelineSettings": "retrieval.pipeline.settings",
    "build_pipeline": "retrieval.pipeline.build",
    "load_pipeline": "retrieval.pipeline.folder",
    "save_pipeline": "retrieval.pipeline.folder",
    "SharedModels": "retrieval.pipeline.shared",
}

__all__ = ["Corpus", "DataFormatError", "DataWarning", "Document", "Pipeline", "Qrels", "Queries", "Ranking", "Stage",
           "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
