"""Measuring one condition on one dataset: latency one query at a time (per stage and whole), a batch pass,
every metric for the pipeline and for each stage at its own cutoff, index sizes; the record that reports and
regression checks are made from.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.data import Dataset
from retrieval.distributed.search import search_batches
from retrieval.evaluation import DEFAULT_MEASURES, evaluate
from retrieval.latency import measure_latency
from retrieval.lora.openvino import native_bf16, resolve_int8_scope
from retrieval.pipeline.folder import folder_bytes, save_pipeline
from retrieval.stage import Pipeline
from retrieval.types import Ranking
from retrieval.util import library_version, write_json

from .conditions import DESCRIPTIONS, builder_for, condition_name
from .options import RunOptions
from .plots import fit_heatmap

# The OpenVINO exports the speed benchmarks time, as (label, precision, int8_scope): int8 both ways, whichever
# ``int8_scope="auto"`` takes on this CPU (``retrieval.lora.openvino``).
EXPORT_VARIANTS = (("openvino-fp32", "fp32", "auto"), ("openvino-bf16", "bf16", "auto"),
                   ("openvino-int8 (keep-outputs)", "int8", "keep-outputs"), ("openvino-int8 (all)", "int8", "all"))


def export_variants() -> tuple[tuple[str, str, str], ...]:
    """EXPORT_VARIANTS worth timing here: bf16 only where it is fast (``native_bf16``: AMX; without AMX, AVX512-BF16
    gave 0.8x plain encoding, and where the CPU has no bf16 at all OpenVINO emulates it, ~50x slower than int8 for the
    reranker: minutes a run, and never a choice)."""
    if native_bf16():
        return EXPORT_VARIANTS
    print("openvino-bf16 not timed: bf16 is not fast on this CPU (no AMX granted)", file=sys.stderr)
    return tuple(v for v in EXPORT_VARIANTS if v[1] != "bf16")


@contextmanager
def one_batch_at_a_time(model):
    """Within it, the OpenVINO export ``model`` runs a call's batches one after another, each on every core (what
    ``run_batches`` did before it ran a batch on each core at once): the peer the speed benchmarks time it against."""
    saved, model.parallel_batches = model.parallel_batches, False
    try:
        yield
    finally:
        model.parallel_batches = saved


def auto_int8_label() -> str:
    """The EXPORT_VARIANTS label of the int8 export ``int8_scope="auto"`` takes on this CPU."""
    return f"openvino-int8 ({resolve_int8_scope('auto')})"


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0}
    arr = np.asarray(values) * 1000.0
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def batch_search(pipe: Pipeline, ds: Dataset, opts: RunOptions) -> Ranking:
    """Every query of the split, each stage's ranking kept: in this process, or with ``--ray-address`` on copies of
    the pipeline on the cluster (saved under the output folder, which every node must reach) — a sharded pipeline
    is searched from here, its shards already on the cluster."""
    sharded = any(getattr(s, "read_only", False) or getattr(getattr(s, "index", None), "read_only", False)
                  for s in pipe.stages)
    if opts.executor is None or sharded:
        return pipe.search(ds.queries, keep_stages=True)
    opts.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=opts.output, prefix=".ray-pipeline-") as tmp:
        folder = save_pipeline(pipe, Path(tmp) / "pipeline", ds.corpus)
        return search_batches(folder, ds.queries, opts.executor.workers, keep_stages=True)


def stage_index_bytes(stage) -> int:
    """Bytes of the stage's index: the BM25 index folder, or the FAISS index plus its stored vectors."""
    if getattr(stage, "index_dir", None) is not None:
        return folder_bytes(stage.index_dir)
    index = getattr(stage, "index", None)
    return index.nbytes() if hasattr(index, "nbytes") else 0


def run_one(ds: Dataset, pipeline_name: str, opts: RunOptions, per_query: dict | None = None) -> dict:
    """Build, time and evaluate one condition; writes its run.trec and per_query.json and returns its record
    (``run`` adds the significance test and plots, then writes metrics.json and report.md).
    ``per_query`` (if given) receives its per-query scores."""
    started = time.perf_counter()
    built = builder_for(pipeline_name)(ds, opts)
    build_seconds = time.perf_counter() - started
    pipeline_name = condition_name(pipeline_name)
    pipe = built.pipeline

    # Latency first: its warm-up query also warms the batch pass (JIT, caches, lazy model loads).
    t0 = time.perf_counter()
    per_stage_lat, total_lat = measure_latency(pipe, ds.queries, opts.latency_queries)
    latency_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranking = batch_search(pipe, ds, opts)
    batch_seconds = time.perf_counter() - t0
    ev = evaluate(ranking, ds.qrels, DEFAULT_MEASURES)
    stages = []
    for stage, trace in zip(pipe.stages, ranking.trace):
        k = stage.k or opts.pipeline.bm25_k
        names = list(dict.fromkeys(["nDCG@10", f"R@{k}", "RR@10", *DEFAULT_MEASURES]))
        stage_ev = evaluate(ranking.stages[stage.name], ds.qrels, names)
        stages.append({
            "name": stage.name,
            "k": k,
            "metrics": stage_ev.aggregate,
            "latency_ms": _percentiles(per_stage_lat[stage.name]),
            "batch_seconds": trace.seconds,
            "candidates_out": trace.candidates_out,
            "index_bytes": stage_index_bytes(stage),
        })
        parts = {name.split("/", 1)[1]: evaluate(r, ds.qrels, names).aggregate
                 for name, r in ranking.stages.items() if name.startswith(f"{stage.name}/")}
        if parts:  # e.g. the reranker's own ranking before fusion with the incoming scores
            stages[-1]["parts"] = parts

    out_dir = opts.output / ds.name / pipeline_name
    out_dir.mkdir(parents=True, exist_ok=True)
    ranking.to_trec(out_dir / "run.trec", tag=pipeline_name.replace(">", "_"))
    record = {
        "dataset": ds.name,
        "split": ds.split,
        "pipeline": pipeline_name,
        "description": DESCRIPTIONS.get(pipeline_name, ""),
        "queries": ev.queries,
        "metrics": ev.aggregate,
        "stages": stages,
        "index_seconds": built.index_seconds,
        "index_reused": built.index_reused,
        "index_bytes": sum(st["index_bytes"] for st in stages),
        "train_seconds": built.extra.get("train_seconds", (built.extra.get("train") or {}).get("seconds")),
        "latency_ms": _percentiles(total_lat),
        "latency_queries": len(total_lat),
        "qps": len(ds.queries) / batch_seconds if batch_seconds > 0 else None,
        "batch_seconds": batch_seconds,
        # where the condition's wall time went: building (training, indexing, exports; cached parts load), the
        # one-at-a-time latency queries, the batch pass, evaluating and writing
        "wall_seconds": {"build": build_seconds, "latency": latency_seconds, "batch": batch_seconds,
                         "total": time.perf_counter() - started},
        "settings": built.settings,
        **{k: v for k, v in built.extra.items() if k != "train_seconds"},
        "dataset_path": str(ds.path),
        "docs": len(ds.corpus),
        "library_version": library_version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]) if sys.argv and "benchmarks" in sys.argv[0] else None,
    }
    if built.extra.get("fit"):
        record["plots"] = [fit_heatmap(built.extra["fit"], out_dir / "fit_grid.png",
                                       f"{ds.name}: BM25 {built.extra['fit']['metric']} on "
                                       f"{built.extra['fit']['split']} by k1 and b").name]
    write_json(out_dir / "per_query.json", ev.per_query)
    if per_query is not None:
        per_query.update(ev.per_query)
    return record
