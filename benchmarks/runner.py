"""Benchmark runner: conditions x datasets -> a side-by-side table, metrics.json, run.trec, report.md.

Per dataset and condition it writes ``OUTDIR/<dataset>/<condition>/``:

- ``metrics.json``: ``{"dataset", "split", "pipeline", "queries", "metrics": {...}, "stages": [{"name", "k",
  "metrics", "latency_ms": {"p50", "p95"}}], "index_seconds", ...}`` (these keys are stable);
- ``run.trec``: the final ranking; ``per_query.json``: every measure per query;
- ``report.md``: the same figures for a person;

per dataset the plots ``stage_quality.png`` and ``stage_latency.png``, and ``OUTDIR/summary.json`` +
``OUTDIR/summary.md`` with every row (and ``expected.json`` with a config's regression checks). The jobs are
split by file: ``conditions`` (what each name builds), ``measure`` (timing and metrics), ``report`` (tables and
plots), ``regression`` (the config and its expected figures).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from encoders.bi_encoder import BiEncoder
from retrieval.cli import check_split
from retrieval.data import dataset_name, load_dataset
from retrieval.evaluation import significance
from retrieval.index.faiss import FaissIndex
from retrieval.lora.base import resolve_model
from retrieval.util import write_json

from .conditions import NEEDS_TRAIN_SPLIT, USES_ENCODER, USES_RERANKER, builder_for, condition_name
from .measure import run_one
from .options import RunOptions
from .regression import check_expected
from .report import condition_report, dataset_plots, md_table, summary_table, time_table


def check(datasets: Sequence[str | Path], conditions: Sequence[str], opts: RunOptions,
          explicit_baseline: bool = True) -> None:
    """Everything a run can get wrong, checked before any work: condition names, dataset folders and splits
    (the training split too, where a condition is trained), results that would overwrite each other, the
    baseline, the models and the index factory."""
    for name in conditions:
        builder_for(name)  # unknown names fail here
    names = [condition_name(c) for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"two conditions would be reported under the same name: {names}; give each once")
    folders = [Path(d) for d in datasets]
    by_name: dict[str, Path] = {}
    for folder in folders:
        name = dataset_name(folder)
        other = by_name.setdefault(name, folder)
        if other != folder:
            raise ValueError(f"datasets {other} and {folder} are both named {name!r}: their results would "
                             f"overwrite each other in {opts.output / name}; run them apart or rename one")
        check_split(folder, opts.split)
        if NEEDS_TRAIN_SPLIT & set(conditions):
            check_split(folder, opts.train_split, "training split (--train-split)")
    if opts.baseline is not None and opts.baseline not in names:
        if explicit_baseline:
            raise ValueError(f"the baseline {opts.baseline!r} is not among the conditions {names}; name one of them "
                             f"(--baseline) or add it (--pipeline {opts.baseline})")
        opts.baseline = None  # the default baseline is not run: no significance tests
    if USES_ENCODER & set(conditions):
        FaissIndex.check_factory(opts.pipeline.dense_factory, BiEncoder(opts.pipeline.dense_model).dim)
    if USES_RERANKER & set(conditions):
        resolve_model(opts.pipeline.rerank_model)


def run(datasets: Sequence[str | Path], pipelines: Sequence[str], opts: RunOptions,
        expected: dict | None = None, explicit_baseline: bool = True) -> tuple[list[dict], list[dict]]:
    """Every condition on every dataset; returns (records, expected-figure checks)."""
    check(datasets, pipelines, opts, explicit_baseline)
    records = []
    for path in datasets:
        ds = load_dataset(path, opts.split)
        per_query: dict[str, dict] = {}
        ds_records = []
        for name in pipelines:
            print(f"[{ds.name}/{opts.split}] {name} ...", file=sys.stderr, flush=True)
            per_query[condition_name(name)] = {}
            ds_records.append(run_one(ds, name, opts, per_query[condition_name(name)]))
        if opts.baseline in per_query:
            tests = significance(per_query, opts.baseline, correction=opts.correction)
            for r in ds_records:
                r["is_baseline"] = r["pipeline"] == opts.baseline
                if r["pipeline"] in tests:
                    r["significance"] = tests[r["pipeline"]]
        out_dir = opts.output / ds.name
        plots = dataset_plots(ds_records, out_dir)
        for r in ds_records:
            r["dataset_plots"] = [f"../{p}" for p in plots]
            write_json(out_dir / r["pipeline"] / "metrics.json", r)
            (out_dir / r["pipeline"] / "report.md").write_text(condition_report(r), encoding="utf-8")
        records += ds_records
    opts.output.mkdir(parents=True, exist_ok=True)
    write_json(opts.output / "summary.json", records)
    table = summary_table(records)
    text = table + "\n"
    if opts.baseline:
        text += (f"\nvs baseline: nDCG@10 difference from `{opts.baseline}` on the same queries, paired t-test p-value "
                 f"and the same corrected ({opts.correction}) for the {len(pipelines) - 1} conditions tested against it. "
                 f"Plots per dataset: <dataset>/stage_quality.png, <dataset>/stage_latency.png.\n")
    times = time_table(records)
    if times:
        text += "\n## Where the time went (wall seconds; models and indexes a cache already held only load)\n\n" + times + "\n"
    checks = check_expected(records, expected) if expected else []
    if expected:
        write_json(opts.output / "expected.json", checks)
        text += "\n## Expected figures (regression check)\n\n" + md_table(
            ["dataset", "condition", "metric", "reranker depth", "expected", "tolerance", "observed", "status"],
            [[c["dataset"], c["condition"], c["metric"], "-" if c.get("depth") is None else c["depth"],
              "-" if c["expected"] is None else c["expected"], c["tolerance"], c["observed"], c["status"]]
             for c in checks]) + "\n"
    (opts.output / "summary.md").write_text(text, encoding="utf-8")
    return records, checks
