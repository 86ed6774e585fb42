"""Fusion of two or more rankings: reciprocal rank fusion, or a weighted sum of normalised scores.

Reusable for any rankings (BM25 + dense, first stage + reranker). A document missing from one
ranking gets nothing from it under RRF, and that ranking's lowest normalised score under ``weighted``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..evaluation import evaluate
from ..types import Qrels, Ranking

METHODS = ("rrf", "weighted")
NORMS = ("zscore", "minmax")


@dataclass
class Fusion:
    """How to fuse: ``weights[i]`` scales ranking i (the incoming candidates first)."""

    method: str = "weighted"
    weights: tuple[float, ...] = (0.5, 0.5)
    rrf_k: int = 60
    norm: str = "zscore"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {METHODS}, got {self.method!r}")
        if self.norm not in NORMS:
            raise ValueError(f"fusion norm must be one of {NORMS}, got {self.norm!r}")
        self.weights = tuple(round(float(w), 6) for w in self.weights)
        if any(w < 0 for w in self.weights):
            raise ValueError(f"fusion weights must be >= 0, got {self.weights}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "Fusion | None":
        return cls(**{**d, "weights": tuple(d["weights"])}) if d else None

    def __call__(self, rankings: Sequence[Ranking]) -> Ranking:
        if len(rankings) != len(self.weights):
            raise ValueError(f"{len(rankings)} rankings but {len(self.weights)} fusion weights")
        if self.method == "rrf":
            return rrf(rankings, k=self.rrf_k, weights=self.weights)
        return weighted(rankings, weights=self.weights, norm=self.norm)


def zscore(values: np.ndarray) -> np.ndarray:
    """(values - mean) / std, zeros where all are equal; the statistics of the sorted values, so the result is the
    same to the last bit whatever order the values came in."""
    values = np.asarray(values, dtype=np.float64)
    ordered = np.sort(values)
    std = ordered.std()
    return (values - ordered.mean()) / std if std > 0 else np.zeros_like(values)


def _normalise(scores: dict[str, float], norm: str) -> tuple[dict[str, float], float]:
    if not scores:
        return {}, 0.0
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    if norm == "zscore":
        out = zscore(values)
    else:
        span = values.max() - values.min()
        out = (values - values.min()) / span if span > 0 else np.ones_like(values)
    return dict(zip(scores, out.tolist())), float(out.min())


def weighted(rankings: Sequence[Ranking], weights: Sequence[float], norm: str = "zscore") -> Ranking:
    """Sum of weight x normalised score per query; a missing document takes that list's minimum."""
    qids = list(dict.fromkeys(q for r in rankings for q in r.scores))
    out: dict[str, dict[str, float]] = {}
    for qid in qids:
        parts = [_normalise(r.scores.get(qid, {}), norm) for r in rankings]
        docs = list(dict.fromkeys(d for norm_scores, _ in parts for d in norm_scores))
        out[qid] = {
            d: sum(w * scores.get(d, floor) for w, (scores, floor) in zip(weights, parts))
            for d in docs
        }
    return Ranking(out)


def rrf(rankings: Sequence[Ranking], k: int = 60, weights: Sequence[float] | None = None) -> Ranking:
    """Reciprocal rank fusion: sum of weight / (k + rank)."""
    weights = weights or [1.0] * len(rankings)
    qids = list(dict.fromkeys(q for r in rankings for q in r.scores))
    out: dict[str, dict[str, float]] = {}
    for qid in qids:
        fused: dict[str, float] = {}
        for w, r in zip(weights, rankings):
            for rank, (doc, _) in enumerate(r.ranked(qid), start=1):
                fused[doc] = fused.get(doc, 0.0) + w / (k + rank)
        out[qid] = fused
    return Ranking(out)


def fit_weight(first: Ranking, second: Ranking, qrels: Qrels, metric: str = "nDCG@10", norm: str = "zscore",
               grid: Sequence[float] = tuple(np.round(np.arange(0.0, 1.01, 0.05), 2))) -> tuple[Fusion, list[dict]]:
    """Choose the weight w of ``second`` (``first`` gets 1 - w) for the best mean ``metric``.

    Give it rankings of *training* queries: the weight must never be chosen on the evaluation split.
    """
    rows = []
    for w in grid:
        fusion = Fusion("weighted", (1.0 - w, w), norm=norm)
        rows.append({"weight": float(w), metric: evaluate(fusion([first, second]), qrels, [metric]).aggregate[metric]})
    best = max(rows, key=lambda r: r[metric])
    return Fusion("weighted", (1.0 - best["weight"], best["weight"]), norm=norm), rows
