"""The options of one benchmark run (``python -m benchmarks run``): what is evaluated where, and the pipeline
settings every condition is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retrieval.pipeline.settings import PipelineSettings

DEFAULT_BASELINE = "bm25"


@dataclass
class RunOptions:
    """One benchmark run: what is evaluated where, and the pipeline settings every condition is built with."""

    split: str
    train_split: str = "train"
    output: Path = Path("results")
    cache_dir: Path | None = None
    latency_queries: int = 100
    threads: int | None = None
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    dense_both_epochs: int | None = None  # dense-lora / dense-corpus conditions (None: supervised 4, corpus 2)
    rerank_epoch_curve: bool = False
    baseline: str | None = DEFAULT_BASELINE  # the condition every other is tested against (paired t-test)
    correction: str = "holm"  # of those p-values, for testing several conditions against one baseline
    executor: object | None = None  # a retrieval.distributed.RayExecutor (--ray-address): encoding, shards, batch pass
