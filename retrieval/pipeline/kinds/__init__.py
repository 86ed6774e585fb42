"""The built-in stage kinds, registered on import: BM25, sharded BM25, Dense, Rerank (``retrieval.pipeline.registry``).

A new kind: one module here (or anywhere) whose last line is ``register(TheKind())``, and its import below.
"""

from . import bm25, bm25_sharded, dense, rerank  # noqa: F401 - each module registers its kind
