"""``python -m benchmarks run ...`` (quality), ``python -m benchmarks speed-bm25|speed-dense|speed-rerank ...`` (speed),
``tune-cutoffs`` (depths within a latency budget), ``gate-study`` (a learned per-pair fusion gate vs one weight),
``rerank-study`` (what a pipeline's reranker adds on its held-out queries, in sample and out of fold), ``rerank-pool``
(rerank-study outputs of several seeds pooled), ``dense-study``
(the query-side adapter's training variants on several seeds' held-out queries),
``corpus-designs`` (label-free fusions side by side) and ``service-load`` (the HTTP service vs in-process)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.cli import add_cache_args, add_debug_arg, add_ray_args, count, positive_float, positive_int, run_cli
from retrieval.distributed.executor import executor_from_args
from retrieval.evaluation import CORRECTIONS
from retrieval.lora.openvino import INFERENCES
from retrieval.lora.training import DROPOUTS
from retrieval.pipeline.settings import PipelineSettings, add_pipeline_args, settings_from_args
from rerankers.passages import PASSAGES
from rerankers.train import RerankTrainSettings

from . import corpus_designs, cutoffs, dense_study, gate, rerank_study, scale_out, service_load, speed_bm25, speed_dense, speed_inference, speed_rerank
from .conditions import DESCRIPTIONS
from .regression import load_config
from .options import DEFAULT_BASELINE, RunOptions
from .runner import run
from .without_amx import deny_amx


def _held_out_study_flags(p: argparse.ArgumentParser, folds: str) -> None:
    """The flags every study of a saved pipeline's held-out training queries takes (gate-study, rerank-study)."""
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--split", default="train",
                   help="split whose queries are cross-validated (default: train; the pipeline's training split gives "
                        "only the queries it held out)")
    p.add_argument("--folds", type=positive_int, default=5, help=f"{folds} (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (default: 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="BM25 search threads (default: all cores)")


def _without_amx_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--without-amx", action="store_true",
                   help="run as on a CPU without AMX: the kernel's grant of AMX is refused to this process (and those it "
                        "starts), so torch and OpenVINO use their AVX512 kernels (Linux on x86_64; "
                        "benchmarks/without_amx.py)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate pipelines on datasets: table, metrics.json, run.trec, report.md")
    r.add_argument("--config", type=Path, default=None,
                   help="a TOML file naming datasets x conditions (and optionally expected scores with tolerances, "
                        "checked after the run); see benchmarks/main.toml. Flags given as well override it")
    r.add_argument("--datasets-root", type=Path, default=Path("../shared/datasets"),
                   help="where the config's dataset names are looked up (default: ../shared/datasets)")
    r.add_argument("--dataset", action="append", type=Path, help="BEIR or MS MARCO folder (repeatable)")
    r.add_argument("--split", help="split to evaluate on, e.g. dev or test")
    r.add_argument("--pipeline", action="append",
                   help="repeatable; a saved pipeline folder (from `python -m retrieval train`) or one of: "
                        + "; ".join(f"{k} ({v})" for k, v in DESCRIPTIONS.items()))
    r.add_argument("--baseline", default=None,
                   help="condition the others are tested against (paired t-test on per-query nDCG@10; default: bm25)")
    r.add_argument("--correction", choices=CORRECTIONS, default="holm",
                   help="multiple-comparison correction of the p-values against the baseline (default: holm)")
    r.add_argument("--output", type=Path, default=Path("results"), help="output folder (default: results)")
    r.add_argument("--train-split", default="train", help="split used by pipelines that fit settings (default: train)")
    add_cache_args(r)
    r.add_argument("--latency-queries", type=count, default=100,
                   help="queries timed one at a time for latency percentiles (default: 100)")
    r.add_argument("--threads", type=positive_int, default=None, help="search threads (default: all cores)")
    r.add_argument("--dense-both-epochs", type=positive_int, default=None,
                   help="epochs of the both-sides dense LoRA conditions (default: 4 supervised, 2 corpus-only)")
    r.add_argument("--rerank-epoch-curve", action="store_true",
                   help="also report the evaluated split's nDCG@10 after every reranker training epoch (costs a pass each; "
                        "each epoch's weights run on torch, the pipeline keeps its own inference)")
    add_pipeline_args(r, exclude=("corpus_only",))  # which conditions are corpus-only is in their names
    add_ray_args(r)
    _without_amx_flag(r)

    s = sub.add_parser("speed-bm25", help="BM25 engines (bm25s, Lucene, rank-bm25) vs plain Pyserini: SciFact dev one "
                                          "query at a time, and >= 100k passages in batches")
    s.add_argument("--datasets-root", type=Path, default=Path("../shared/datasets"))
    s.add_argument("--parts", nargs="+", default=["scifact", "passages"], choices=["scifact", "passages"])
    s.add_argument("--min-docs", type=positive_int, default=100_000)
    s.add_argument("--queries", type=positive_int, default=1000, help="queries for the Lucene engines (default: 1000)")
    s.add_argument("--rank-bm25-queries", type=positive_int, default=100, help="queries for rank-bm25, which is slow (default: 100)")
    s.add_argument("--k", type=positive_int, default=100)
    s.add_argument("--repeats", type=positive_int, default=3, help="timed repetitions, alternating engines (default: 3)")
    s.add_argument("--threads", type=positive_int, default=None)
    s.add_argument("--output", type=Path, default=Path("results/speed-bm25"))

    d = sub.add_parser("speed-dense", help="dense encode throughput, ANN recall/QPS, LoRA vs full fine-tuning")
    d.add_argument("--datasets-root", type=Path, default=Path("../shared/datasets"))
    d.add_argument("--parts", nargs="+", default=["encode", "ann", "train"], choices=["encode", "ann", "train"])
    d.add_argument("--encode-docs", type=positive_int, default=300, help="SciFact abstracts per encode run (default: 300)")
    d.add_argument("--vectors", type=positive_int, default=100_000, help="sentence vectors for the ANN part (default: 100000)")
    d.add_argument("--single-queries", type=positive_int, default=300,
                   help="queries timed one call each for the ANN part's single-query figures (default: 300)")
    d.add_argument("--train-steps", type=positive_int, default=4, help="timed training steps per method (default: 4)")
    d.add_argument("--repeats", type=positive_int, default=3)
    d.add_argument("--output", type=Path, default=Path("results/speed-dense"))
    _without_amx_flag(d)

    c = sub.add_parser("speed-rerank", help="reranker pairs/s vs plain transformers, merged vs unmerged, time by depth")
    c.add_argument("--datasets-root", type=Path, default=Path("../shared/datasets"))
    c.add_argument("--pairs", type=positive_int, default=256, help="(query, passage) pairs per throughput run (default: 256)")
    c.add_argument("--max-length", type=positive_int, default=RerankTrainSettings.max_length)
    c.add_argument("--depths", type=positive_int, nargs="+", default=[10, 20, 50, 100])
    c.add_argument("--depth-queries", type=positive_int, default=10, help="queries timed at each depth (default: 10)")
    c.add_argument("--train-steps", type=positive_int, default=3, help="timed training steps per precision and dropout (default: 3)")
    c.add_argument("--repeats", type=positive_int, default=3)
    c.add_argument("--output", type=Path, default=Path("results/speed-rerank"))
    _without_amx_flag(c)

    i = sub.add_parser("speed-inference", help="a saved pipeline's nDCG@10 and latency as saved (OpenVINO exports) vs "
                                               "on torch, float32 the reference")
    i.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder")
    i.add_argument("--dataset", type=Path, required=True)
    i.add_argument("--split", default="dev")
    i.add_argument("--latency-queries", type=count, default=100, help="queries timed one at a time per variant (default: 100)")
    i.add_argument("--threads", type=positive_int, default=None, help="BM25 search threads (default: all cores)")
    i.add_argument("--output", type=Path, default=Path("results/speed-inference"))
    _without_amx_flag(i)

    c = sub.add_parser("corpus-designs", help="label-free fusions of the corpus-only pipeline's parts (BM25, base model, "
                                              "pseudo-query adapter) side by side, scored on a split's judgements")
    c.add_argument("--dataset", type=Path, required=True, help="BEIR or MS MARCO folder: its corpus trains the adapter")
    c.add_argument("--split", required=True, help="split whose judgements score the designs (never used to train)")
    c.add_argument("--output", type=Path, default=None, help="folder for corpus_designs.json")
    add_cache_args(c)
    add_pipeline_args(c, exclude=("corpus_only", "corpus_reranker"))

    t = sub.add_parser("tune-cutoffs", help="choose each stage's depth for the best nDCG@10 within a latency budget")
    t.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder (BM25 >> Dense >> Rerank)")
    t.add_argument("--dataset", type=Path, required=True)
    t.add_argument("--split", required=True, help="split the chosen cutoffs are evaluated on (never tuned on)")
    t.add_argument("--tune-split", default="train",
                   help="split tuned on (default: train; with the pipeline's training split, only the queries it held out)")
    t.add_argument("--budget-ms", type=positive_float, required=True, help="per-query latency budget in milliseconds")
    t.add_argument("--bm25-ks", type=positive_int, nargs="+", default=[100, 300, 1000])
    t.add_argument("--depths", type=positive_int, nargs="+", default=[5, 10, 20, 30, 50], help="rerank depths (0 = none is always tried)")
    t.add_argument("--latency-queries", type=count, default=20, help="queries timed one at a time per stage and depth")
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--output", type=Path, default=Path("results/cutoffs"))

    g = sub.add_parser("gate-study", help="a learned per-pair gate between reranker and incoming score vs the one "
                                          "global weight, cross-validated on the pipeline's held-out training queries")
    g.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder (BM25 >> Dense >> Rerank)")
    _held_out_study_flags(g, "outer cross-validation folds")
    g.add_argument("--output", type=Path, default=Path("results/gate"))

    rs = sub.add_parser("rerank-study", help="what saved pipelines' rerankers add on their held-out training queries "
                                             "(alone, fused in sample and out of fold), as saved or reading other lengths")
    rs.add_argument("--pipeline", type=Path, action="append", required=True,
                    help="a saved BM25 >> Dense >> Rerank pipeline folder (repeatable; rows are compared with the first)")
    _held_out_study_flags(rs, "cross-validation folds")
    rs.add_argument("--report-split", default=None, help="also apply each row's in-sample choice to this split (e.g. dev)")
    rs.add_argument("--max-length", type=positive_int, nargs="+", default=None,
                    help="query + passage tokens the reranker reads, one row each (default: what it was saved with)")
    rs.add_argument("--passage", choices=PASSAGES, nargs="+", default=None,
                    help="what it reads of longer documents, one row each with every --max-length: first (the "
                         "opening) or focused (the query's sentences) (default: what it was saved with)")
    rs.add_argument("--depths", type=positive_int, nargs="+", default=list(rerank_study.DEPTHS),
                    help="rerank depths the fusion chooses from (default: 10 20 30)")
    rs.add_argument("--share", type=float, nargs="+", default=[1.0],
                    help="shares of queries the reranker runs on, one row each with every --max-length and --passage: "
                         "those whose first two stages' leader leads least, the margin fitted in each fold "
                         "(PipelineSettings.rerank_share; default: 1, every query)")
    rs.add_argument("--average", action="store_true",
                    help="add a row scoring with every --pipeline's reranker together (z-scores averaged); the "
                         "pipelines must share their held-out queries and first two stages (one seed)")
    rs.add_argument("--output", type=Path, default=Path("results/rerank-study"))

    rp = sub.add_parser("rerank-pool", help="rerank-study outputs pooled row by row (one study per seed: row i of each "
                                            "is one variant), each pooled row compared with the first by a paired t-test")
    rp.add_argument("--study", type=Path, nargs="+", required=True, help="folders written by rerank-study")
    rp.add_argument("--output", type=Path, default=Path("results/rerank-pool"))

    ds = sub.add_parser("dense-study", help="the query-side adapter trained with each dropout on several seeds, judged "
                                            "on each seed's held-out training queries (alone and fused), pooled")
    ds.add_argument("--dataset", type=Path, required=True)
    ds.add_argument("--split", default="train", help="the training split (default: train); only its held-out queries judge")
    ds.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="pipeline seeds (default: 1 2 3; 0 is the main job's, whose held-out queries chose earlier settings)")
    ds.add_argument("--dropouts", nargs="+", choices=DROPOUTS, default=list(DROPOUTS),
                    help="variants, compared with the first (default: all no-attention none)")
    ds.add_argument("--epochs", type=positive_int, default=None, help="adapter epochs (default: the pipeline's, 8)")
    ds.add_argument("--fit-queries", type=positive_int, default=PipelineSettings().fit_queries,
                    help="held-out queries per seed, at most (default: the pipeline's)")
    ds.add_argument("--model", default=None, help="bi-encoder: HF id or folder (default: the packaged all-MiniLM-L6-v2)")
    ds.add_argument("--inference", choices=INFERENCES, default=PipelineSettings().dense_inference,
                    help="how the base model encodes the documents the adapter trains against (default: the pipeline's)")
    ds.add_argument("--threads", type=positive_int, default=None)
    add_cache_args(ds)
    ds.add_argument("--output", type=Path, default=Path("results/dense-study"))

    lt = sub.add_parser("service-load", help="load test of the HTTP service vs the same pipeline in-process")
    lt.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder, served as one domain")
    lt.add_argument("--dataset", type=Path, required=True, help="its queries are sent, in turn")
    lt.add_argument("--split", default="dev")
    lt.add_argument("--domain", default="bench", help="the domain's name in the service (default: bench)")
    lt.add_argument("--requests", type=positive_int, default=2000, help="requests per side (default: 2000)")
    lt.add_argument("--concurrency", type=positive_int, default=16, help="client threads (default: 16)")
    lt.add_argument("--workers", type=positive_int, default=2, help="service worker threads (default: 2)")
    lt.add_argument("--max-queue", type=count, default=64)
    lt.add_argument("--stages", nargs="+", default=None, help="run only these stages (default: all)")
    lt.add_argument("--k", type=positive_int, default=10)
    lt.add_argument("--warmup", type=count, default=20, help="untimed requests first, on each side (default: 20)")
    lt.add_argument("--threads", type=positive_int, default=None, help="Lucene search threads in-process")
    lt.add_argument("--output", type=Path, default=Path("results/service-load"))
    so = sub.add_parser("scale-out", help="Ray: encoding with 1 and 2 actors, indexing on the cluster vs here, search "
                                          "QPS with 1/2/4 shards, compressed indexes (recall@100, bytes per document)")
    so.add_argument("--datasets-root", type=Path, default=Path("../shared/datasets"))
    so.add_argument("--parts", nargs="+", default=list(scale_out.PARTS), choices=scale_out.PARTS)
    so.add_argument("--passages", type=positive_int, default=100_000, help="passages cut from the shared corpora (default: 100000)")
    so.add_argument("--encode-docs", type=positive_int, default=2000, help="SciFact abstracts encoded (default: 2000)")
    so.add_argument("--single-queries", type=positive_int, default=200, help="queries timed one at a time (default: 200)")
    add_cache_args(so)
    add_ray_args(so)
    so.add_argument("--output", type=Path, default=Path("results/scale-out"))
    for parser in sub.choices.values():
        add_debug_arg(parser)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "without_amx", False):
        deny_amx()
    if args.command == "run":
        config = load_config(args.config, args.datasets_root) if args.config else {}
        datasets = args.dataset or config.get("datasets")
        conditions = args.pipeline or config.get("conditions")
        split = args.split or config.get("split")
        if not (datasets and conditions and split):
            parser.error("run needs --dataset, --split and --pipeline (or a --config that names them)")
        if args.train_split == "train" and config.get("train_split"):
            args.train_split = config["train_split"]
        opts = RunOptions(
            split=split, train_split=args.train_split, output=args.output, cache_dir=args.cache_dir,
            latency_queries=args.latency_queries, threads=args.threads, pipeline=settings_from_args(args),
            dense_both_epochs=args.dense_both_epochs, rerank_epoch_curve=args.rerank_epoch_curve,
            baseline=args.baseline or config.get("baseline") or DEFAULT_BASELINE, correction=args.correction,
            executor=executor_from_args(args),
        )
        _, checks = run(datasets, conditions, opts, expected=config.get("expected"),
                        explicit_baseline=bool(args.baseline or config.get("baseline")))
        print((args.output / "summary.md").read_text(encoding="utf-8"))
        print(f"wrote {args.output}/summary.json, summary.md and <dataset>/<pipeline>/metrics.json, run.trec, report.md")
        for c in checks:
            if c["status"] == "other depth":
                print(f"NOTE: {c['dataset']}/{c['condition']} reranked to depth {c['depth']}, the depth this machine's "
                      f"speed admitted under the latency budget; the config has no expected {c['metric']} at that "
                      f"depth (observed {c['observed']:.4f}), so it is reported, not checked", file=sys.stderr)
        failed = [c for c in checks if c["status"] in ("below", "missing")]
        if failed:
            print("REGRESSION: " + "; ".join(f"{c['dataset']}/{c['condition']} {c['metric']} {c['observed']} < "
                                            f"{c['expected']} - {c['tolerance']}" if c["observed"] is not None else
                                            f"{c['dataset']}/{c['condition']} was not run" for c in failed),
                  file=sys.stderr)
            return 1
        return 0
    commands = {"corpus-designs": corpus_designs.main, "tune-cutoffs": cutoffs.main, "gate-study": gate.main,
                "dense-study": dense_study.main,
                "rerank-study": rerank_study.main, "rerank-pool": rerank_study.pool_main,
                "service-load": service_load.main, "speed-bm25": speed_bm25.main,
                "speed-dense": speed_dense.main, "speed-rerank": speed_rerank.main, "speed-inference": speed_inference.main,
                "scale-out": scale_out.main}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
