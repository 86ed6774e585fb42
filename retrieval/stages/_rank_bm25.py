"""The Java-free BM25 engine of the BM25 stage: rank-bm25 (BM25Okapi) over Porter-stemmed word tokens.

The analyzer lower-cases word tokens, drops Lucene's English stop words and stems with PyStemmer's Porter, so
both engines drop the same words. rank-bm25 has no incremental update: ``update`` recomputes its statistics
from the stored token lists.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..types import Corpus

# Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), used by the Java-free analyzer
# so that both backends drop the same words.
_STOP = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)


def analyze(text: str, stem: bool = True) -> list[str]:
    """Lower-case word tokens without Lucene's English stop words, Porter-stemmed (PyStemmer)."""
    tokens = [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]
    if stem and tokens:
        return _stemmer().stemWords(tokens)
    return tokens


_stemmers = threading.local()


def _stemmer():
    s = getattr(_stemmers, "porter", None)
    if s is None:
        try:
            import Stemmer
        except ImportError:
            raise ImportError("the rank_bm25 backend stems with PyStemmer: pip install PyStemmer") from None
        s = _stemmers.porter = Stemmer.Stemmer("porter")
    return s


class RankBM25Engine:
    def __init__(self, path: Path, threads: int):
        from rank_bm25 import BM25Okapi

        with open(path / "docids.txt", encoding="utf-8") as f:
            self.doc_ids = [line.rstrip("\n") for line in f]
        with open(path / "tokens.jsonl", encoding="utf-8") as f:
            tokens = [json.loads(line) for line in f]
        if len(tokens) != len(self.doc_ids):
            raise ValueError(f"{path}: tokens.jsonl and docids.txt disagree in length; rebuild the index")
        # Empty documents make rank-bm25 divide by zero in its length statistics only when all are empty.
        self.path, self.tokens, self._cls = path, tokens, BM25Okapi
        self.model = BM25Okapi(tokens)
        self._lock = threading.Lock()

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[str]) -> None:
        """Add or replace and delete documents. rank-bm25 has no incremental update: its statistics are
        recomputed from the stored token lists (no document is tokenised again), and the files rewritten."""
        with self._lock:
            rows = {d: i for i, d in enumerate(self.doc_ids)}
            gone = {rows[d] for d in delete if d in rows} | {rows[d] for d, _ in add if d in rows}
            ids = [d for i, d in enumerate(self.doc_ids) if i not in gone] + [d for d, _ in add]
            tokens = [t for i, t in enumerate(self.tokens) if i not in gone] + [analyze(c) for _, c in add]
            if not ids:
                raise ValueError("the rank_bm25 backend cannot hold an empty index; keep at least one document")
            for name, lines in (("docids.txt", ids), ("tokens.jsonl", [json.dumps(t) for t in tokens])):
                tmp = self.path / f"{name}.tmp-update"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(line + "\n" for line in lines)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path / name)
            self.doc_ids, self.tokens, self.model = ids, tokens, self._cls(tokens)

    def close(self) -> None:
        pass

    @staticmethod
    def build(corpus: Corpus, out: Path, threads: int, store_raw: bool = False) -> dict:
        with open(out / "docids.txt", "w", encoding="utf-8") as ids, open(out / "tokens.jsonl", "w", encoding="utf-8") as tok:
            for doc_id in tqdm(corpus, desc="tokenizing", unit="doc", disable=len(corpus) < 20000):
                ids.write(doc_id + "\n")
                tok.write(json.dumps(analyze(corpus[doc_id].contents)) + "\n")
        return {"analyzer": "word tokens, lower case, Lucene English stop words, Porter (PyStemmer)"}

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:  # k1 and b are attributes of the shared model
            self.model.k1, self.model.b = k1, b
            for qid, text in zip(qids, texts):
                tokens = analyze(text)
                if not tokens:
                    out[qid] = {}
                    continue
                scores = self.model.get_scores(tokens)
                n = min(k, len(scores))
                top = np.argpartition(-scores, n - 1)[:n]
                out[qid] = {self.doc_ids[i]: float(scores[i]) for i in top if scores[i] > 0}
        return out
