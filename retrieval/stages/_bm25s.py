"""The bm25s engine of the BM25 stage: Java-free, in memory, Lucene's BM25 (``method="lucene"``: Lucene's idf,
no (k1 + 1) factor) over the ``lucene-english`` analyzer's terms, scores kept in bm25s's sparse matrix.

bm25s folds k1 and b into the matrix, so the index folder keeps bm25s's own index for the settings it was
built (or last written) with in ``bm25s/``, loaded as it is; other settings (``BM25.fit`` trying a grid) are
indexed again in memory from the stored terms, a few at a time.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

from ..util import read_json
from ._tokens import TokenEngine, top_k

_SAVED = "bm25s"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError("the bm25s BM25 backend needs bm25s: pip install bm25s") from None
    return bm25s


class Bm25sEngine(TokenEngine):
    ANALYZER = "lucene-english"
    KEEP = 4  # models for other (k1, b) kept in memory (fit tries many)

    def _reset(self) -> None:
        self._models: OrderedDict[tuple[float, float], object] = OrderedDict()

    def _model(self, k1: float, b: float):
        key = (float(k1), float(b))
        model = self._models.get(key)
        if model is None:
            model = self._load_saved(key)
            if model is None:
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

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            model = self._model(k1, b)
            vocab = model.vocab_dict
            for qid, text in zip(qids, texts):
                ids = [vocab[t] for t in self.analyze(text) if t in vocab]  # repeated terms count again, as in Lucene
                out[qid] = top_k(self.doc_ids, model.get_scores_from_ids(ids), k) if ids else {}
        return out
