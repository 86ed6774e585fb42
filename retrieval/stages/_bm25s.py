"""The bm25s engine of the BM25 stage: Java-free, in memory, Lucene's BM25 (``method="lucene"``: Lucene's idf,
no (k1 + 1) factor) over the ``lucene-english`` analyzer's terms, scores kept in bm25s's sparse matrix.

bm25s folds k1 and b into the matrix, so the index folder keeps bm25s's own index for the settings it was
built (or last written) with in ``bm25s/``, loaded as it is; other settings (``BM25.fit`` trying a grid) are
indexed again in memory from the stored terms, a few at a time.

A *shard* of a larger collection (``retrieval.stages.bm25_sharded``) keeps ``collection.json`` beside its terms:
the whole collection's document count, total length and the document frequency of each of the shard's terms.
Its matrix is then made by ``CollectionBM25`` (bm25s's own scoring functions, given the collection's statistics
instead of the shard's), so a shard scores each of its documents exactly as one index over the whole collection.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..util import read_json, write_json
from ._tokens import TokenEngine, top_k

_SAVED = "bm25s"
COLLECTION = "collection.json"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError("the bm25s BM25 backend needs bm25s: pip install bm25s") from None
    return bm25s


def collection_bm25(collection: dict, **params):
    """A bm25s ``BM25`` whose idf and average document length come from ``collection`` (``documents``,
    ``total_length``, ``df``: term -> documents of the whole collection holding it) instead of the documents it
    indexes; index it with ``index_terms``."""
    bm25s = _bm25s()
    from bm25s.scoring import _build_idf_array, _build_scores_and_indices_for_matrix, _calculate_doc_freqs, _select_idf_scorer

    class CollectionBM25(bm25s.BM25):
        def index_terms(self, tokens: list[list[str]]) -> None:
            vocab: dict[str, int] = {}
            ids = [[vocab.setdefault(t, len(vocab)) for t in doc] for doc in tokens]
            missing = next((t for t in vocab if t not in collection["df"]), None)
            if missing is not None:
                raise ValueError(f"the collection statistics do not count the term {missing!r}: they were computed "
                                 f"over other documents; build the sharded index again")
            self._collection_df = {i: int(collection["df"][t]) for t, i in vocab.items()}
            self.index((ids, vocab), show_progress=False)

        def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False):
            if self.method in self.methods_requiring_nonoccurrence:
                raise ValueError(f"collection statistics are implemented for method='lucene', not {self.method!r}")
            self.nonoccurrence_array = None
            local_df = _calculate_doc_freqs(corpus_token_ids, unique_token_ids, show_progress=False)
            idf = _build_idf_array({i: self._collection_df[i] for i in unique_token_ids}, n_docs=collection["documents"],
                                   compute_idf_fn=_select_idf_scorer(self.idf_method), dtype=self.dtype)
            scores, rows, cols = _build_scores_and_indices_for_matrix(
                corpus_token_ids=corpus_token_ids, idf_array=idf,
                # a numpy float64, as bm25s's own mean: NumPy computes the term scores in float64 then (NEP 50)
                avg_doc_len=np.float64(collection["total_length"]) / collection["documents"], doc_frequencies=local_df,
                k1=self.k1, b=self.b, delta=self.delta, nonoccurrence_array=None, method=self.method,
                dtype=self.dtype, int_dtype=self.int_dtype, show_progress=False)
            data, indices, indptr = self._np_csc(data=scores, rows=rows, cols=cols,
                                                 shape=(len(corpus_token_ids), len(unique_token_ids)))
            return {"data": data.astype(self.dtype), "indices": indices, "indptr": indptr,
                    "num_docs": len(corpus_token_ids)}

    return CollectionBM25(**params)


class Bm25sEngine(TokenEngine):
    ANALYZER = "lucene-english"
    KEEP = 4  # models for other (k1, b) kept in memory (fit tries many)

    def _reset(self) -> None:
        self._models: OrderedDict[tuple[float, float], object] = OrderedDict()
        self._collection = read_json(self.path / COLLECTION, "collection statistics") if (self.path / COLLECTION).is_file() else None

    @staticmethod
    def write_collection(folder: Path, collection: dict) -> None:
        """Make ``folder`` (an index folder with its terms written) a shard of a collection with these statistics."""
        write_json(folder / COLLECTION, collection)

    def _model(self, k1: float, b: float):
        key = (float(k1), float(b))
        model = self._models.get(key)
        if model is None:
            model = self._load_saved(key)
            if model is None and self._collection is not None:  # a shard: the whole collection's statistics
                model = collection_bm25(self._collection, k1=key[0], b=key[1], method="lucene")
                model.index_terms(self.tokens)
            elif model is None:
                model = _bm25s().BM25(k1=key[0], b=key[1], method="lucene")
                model.index(self.tokens, show_progress=False)
            self._models[key] = model
            while len(self._models) > self.KEEP:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return model

    def _load_saved(self, key: tuple[float, float]):
        folder = self.path / _SAVED
        if not (folder / "params.index.json").is_file():
            return None
        params = read_json(folder / "params.index.json", "bm25s index settings")
        if (float(params.get("k1", -1)), float(params.get("b", -1))) != key or params.get("method") != "lucene":
            return None
        return _bm25s().BM25.load(str(folder), load_corpus=False, mmap=False)

    def _saved(self, folder: Path, k1: float, b: float) -> None:
        target = folder / _SAVED
        if target.exists():
            shutil.rmtree(target)
        self._reset()
        self._model(k1, b).save(str(target))

    def update(self, add, delete, k1: float, b: float) -> None:
        if self._collection is not None:
            raise ValueError(f"{self.path} is a shard of a sharded BM25 index, scored with the whole collection's "
                             f"statistics: it is read-only (a write would leave every other shard's statistics "
                             f"stale); build the sharded index again with the new documents")
        super().update(add, delete, k1, b)

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            model = self._model(k1, b)
            vocab = model.vocab_dict
            for qid, text in zip(qids, texts):
                ids = [vocab[t] for t in self.analyze(text) if t in vocab]  # repeated terms count again, as in Lucene
                out[qid] = top_k(self.doc_ids, model.get_scores_from_ids(ids), k) if ids else {}
        return out
