"""Latency of a pipeline as a user meets it: queries run one at a time, per stage and whole.

``measure_latency`` is what the benchmark runner reports (p50 / p95 per query) and what a build under a latency
budget (``PipelineSettings.rerank_budget_ms``) chooses the rerank depth by.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from .stage import Pipeline
from .types import Queries


def measure_latency(pipeline: Pipeline, queries: Queries, n: int, seed: int = 0,
                    desc: str = "latency") -> tuple[dict[str, list[float]], list[float]]:
    """Run up to ``n`` of ``queries`` (a seeded sample) one at a time, after one warm-up query; per-stage and
    total seconds per query."""
    qids = list(queries)
    if n < len(qids):
        rng = np.random.default_rng(seed)
        qids = [qids[i] for i in sorted(rng.choice(len(qids), size=n, replace=False))]
    per_stage: dict[str, list[float]] = {s.name: [] for s in pipeline.stages}
    total: list[float] = []
    if qids:  # warm-up outside the measurement (JIT, caches)
        pipeline.search(Queries({qids[0]: queries[qids[0]]}))
    for qid in tqdm(qids, desc=desc, unit="q", leave=False):
        t0 = time.perf_counter()
        ranking = pipeline.search(Queries({qid: queries[qid]}))
        total.append(time.perf_counter() - t0)
        for trace in ranking.trace:
            per_stage[trace.name].append(trace.seconds)
    return per_stage, total
