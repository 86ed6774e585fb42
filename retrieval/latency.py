"""Latency of a pipeline as a user meets it: queries run one at a time, per stage and whole.

``measure_latency`` is what the benchmark runner reports (p50 / p95 per query) and what a build under a latency
budget (``PipelineSettings.rerank_budget_ms``) chooses the rerank depth by.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Sequence

import numpy as np
from tqdm.auto import tqdm

from .stage import Pipeline
from .types import Queries


def _sample(queries: Queries, n: int, seed: int) -> list[str]:
    qids = list(queries)
    if n < len(qids):
        rng = np.random.default_rng(seed)
        qids = [qids[i] for i in sorted(rng.choice(len(qids), size=n, replace=False))]
    return qids


def _time_one(pipeline: Pipeline, queries: Queries, qid: str, per_stage: dict[str, list[float]],
              total: list[float]) -> None:
    t0 = time.perf_counter()
    ranking = pipeline.search(Queries({qid: queries[qid]}))
    total.append(time.perf_counter() - t0)
    for trace in ranking.trace:
        per_stage[trace.name].append(trace.seconds)


def measure_latency(pipeline: Pipeline, queries: Queries, n: int, seed: int = 0,
                    desc: str = "latency") -> tuple[dict[str, list[float]], list[float]]:
    """Run up to ``n`` of ``queries`` (a seeded sample) one at a time, after one warm-up query; per-stage and
    total seconds per query."""
    return measure_latency_alternating(pipeline, queries, n, [contextlib.nullcontext], seed, desc)[0]


def measure_latency_alternating(pipeline: Pipeline, queries: Queries, n: int,
                                variants: Sequence[Callable[[], ContextManager]], seed: int = 0,
                                desc: str = "latency") -> list[tuple[dict[str, list[float]], list[float]]]:
    """``measure_latency`` for each of ``variants`` (a context each of its queries runs inside, e.g. another way
    to compute a stage), the variants taking turns query by query in a rotating order, so that the machine's
    drift over the minutes of a run (on a shared 2-core machine: tens of per cent) falls on every variant alike.
    One (per-stage, total) per variant, in their order."""
    qids = _sample(queries, n, seed)
    out = [({s.name: [] for s in pipeline.stages}, []) for _ in variants]
    if qids:  # warm-up outside the measurement (JIT, caches), once in each variant
        for variant in variants:
            with variant():
                pipeline.search(Queries({qids[0]: queries[qids[0]]}))
    for i, qid in enumerate(tqdm(qids, desc=desc, unit="q", leave=False)):
        for j in range(len(variants)):
            v = (i + j) % len(variants)
            with variants[v]():
                _time_one(pipeline, queries, qid, *out[v])
    return out
