"""The rank-bm25 engine of the BM25 stage (Java-free, slow: a pure-Python BM25Okapi kept for comparison and for
indexes built with it): the ``porter-words`` analyzer over the stored terms of every document."""

from __future__ import annotations

from ._tokens import TokenEngine, top_k


class RankBM25Engine(TokenEngine):
    ANALYZER = "porter-words"

    def _reset(self) -> None:
        from rank_bm25 import BM25Okapi

        self.model = BM25Okapi(self.tokens)

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:  # k1 and b are attributes of the shared model
            self.model.k1, self.model.b = k1, b
            for qid, text in zip(qids, texts):
                tokens = self.analyze(text)
                out[qid] = top_k(self.doc_ids, self.model.get_scores(tokens), k) if tokens else {}
        return out
