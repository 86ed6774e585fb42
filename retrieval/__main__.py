"""``python -m retrieval train ...``: train the full pipeline and save it to one folder;
``python -m retrieval search --pipeline DIR --topics FILE --output run.trec``: a saved pipeline over a topic file;
``python -m retrieval shard --pipeline DIR --shards N --output DIR2``: a saved pipeline with its BM25 and dense indexes
cut into N shards (the same rankings; each shard searched on its own, on one Ray actor each with --ray-address);
``python -m retrieval serve --root DIR``: serve the saved pipelines under DIR over HTTP, one domain each.

``--ray-address`` (train, search, shard, serve) runs the corpus's encoding, the shards and batch search on a Ray
cluster (``retrieval.distributed``): ``local``, ``auto`` or a cluster's address.

    python -m retrieval train --dataset ../shared/datasets/scifact --split train --dev-split dev --output PIPEDIR
    python -m retrieval train --dataset ../shared/datasets/medline --split test --corpus-only --output PIPEDIR

Each stage also trains alone: ``python -m encoders.train`` (dense adapter), ``python -m rerankers.train``
(reranker), and BM25's k1/b through ``BM25.fit``. A saved folder loads with ``retrieval.load_pipeline`` and
is evaluated, stage by stage, with ``python -m benchmarks run --dataset DIR --split test --pipeline PIPEDIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .cli import (add_cache_args, add_dataset_args, add_debug_arg, add_output_args, add_ray_args, check_output, check_split,
                  count, positive_int, run_cli)
from .data import is_irds, load_dataset, load_irds, load_queries
from .distributed.executor import executor_from_args
from .distributed.search import search_batches
from .evaluation import evaluate
from .pipeline.build import build_pipeline
from .pipeline.folder import load_pipeline, pipeline_config, save_pipeline
from .pipeline.settings import add_pipeline_args, settings_from_args
from .pipeline.shard import shard_pipeline
from .service.app import serve as serve_domains
from .service.settings import ServiceSettings
from .types import Queries, Ranking
from .util import write_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train BM25 >> hybrid LoRA dense >> LoRA reranker and save the pipeline folder")
    add_dataset_args(t, split_help="split whose judgements train the pipeline (with --corpus-only: only its corpus "
                                   "is read; default: train)")
    t.add_argument("--dev-split", default=None,
                   help="after training, report nDCG@10 of the pipeline and each stage on this split (nothing is chosen on it)")
    add_output_args(t, "the pipeline folder")
    add_cache_args(t)
    t.add_argument("--threads", type=positive_int, default=None, help="BM25 search threads (default: all cores)")
    add_pipeline_args(t)
    add_ray_args(t)

    s = sub.add_parser("search", help="search a topic file with a saved pipeline and write a TREC run file")
    s.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder (python -m retrieval train)")
    s.add_argument("--topics", type=Path, required=True,
                   help="the queries: a BEIR queries.jsonl, an MS MARCO-style 'qid<TAB>text' .tsv, or irds:<id> "
                        "(the judged queries of an ir_datasets id, e.g. irds:beir/scifact/test)")
    add_output_args(s, "the TREC run file")
    s.add_argument("--k", type=positive_int, default=1000,
                   help="results written per query (default: 1000); it cuts the final ranking and never changes a "
                        "stage's depth")
    s.add_argument("--tag", default=None, help="run tag in the last column (default: the pipeline folder's name)")
    s.add_argument("--batch", type=positive_int, default=64, help="queries searched together (default: 64)")
    s.add_argument("--threads", type=positive_int, default=None, help="BM25 search threads (default: all cores)")
    s.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    add_ray_args(s)

    h = sub.add_parser("shard", help="cut a saved pipeline's BM25 and dense indexes into shards (the same rankings)")
    h.add_argument("--pipeline", type=Path, required=True, help="a saved pipeline folder (python -m retrieval train)")
    h.add_argument("--shards", type=positive_int, required=True, help="shards of each index")
    add_output_args(h, "the sharded pipeline folder")
    add_cache_args(h)
    add_ray_args(h)

    d = ServiceSettings()
    v = sub.add_parser("serve", help="HTTP search service over the domains (saved pipeline folders) under --root")
    v.add_argument("--root", type=Path, required=True, help="folder whose sub-folders are saved pipelines, one per domain")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=count, default=8080)
    v.add_argument("--api-key-file", type=Path, default=None,
                   help="file with the API key(s) for writes, one per line (default: $RETRIEVAL_API_KEY; none: writes disabled)")
    v.add_argument("--work-dir", type=Path, default=None, help="working copies of the BM25 indexes (default: ROOT/.work)")
    v.add_argument("--workers", type=positive_int, default=d.workers, help=f"threads running searches and writes (default: {d.workers})")
    v.add_argument("--max-queue", type=count, default=d.max_queue,
                   help=f"requests that may wait for a worker; more are answered 429 (default: {d.max_queue})")
    for name in ("max_query_chars", "max_k", "max_batch_docs", "max_doc_chars", "max_id_chars", "max_body_bytes"):
        v.add_argument("--" + name.replace("_", "-"), type=positive_int, default=getattr(d, name),
                       help=f"limit (default: {getattr(d, name)})")
    v.add_argument("--threads", type=positive_int, default=None, help="Lucene search threads per domain (default: all cores)")
    v.add_argument("--device", default=None, help="torch device for the shared models (default: cuda if present, else cpu)")
    v.add_argument("--compact-after", type=count, default=d.compact_after,
                   help=f"journal records that trigger a compaction in the background (default: {d.compact_after}; 0: never)")
    v.add_argument("--no-sync", action="store_true", help="do not fsync the journal (faster writes; a power cut may lose them)")
    v.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug", "trace"))
    add_ray_args(v)
    for parser in sub.choices.values():
        add_debug_arg(parser)
    return p


def serve(args) -> int:
    settings = ServiceSettings(
        workers=args.workers, max_queue=args.max_queue, max_query_chars=args.max_query_chars, max_k=args.max_k,
        max_batch_docs=args.max_batch_docs, max_doc_chars=args.max_doc_chars, max_id_chars=args.max_id_chars,
        max_body_bytes=args.max_body_bytes, threads=args.threads, device=args.device, sync=not args.no_sync,
        compact_after=args.compact_after)
    executor = executor_from_args(args)
    serve_domains(args.root, host=args.host, port=args.port, settings=settings, key_file=args.api_key_file,
                  work_dir=args.work_dir, log_level=args.log_level, placer=executor.place if executor else None)
    return 0


def search(args) -> int:
    check_output(args)
    tag = args.tag or "_".join(args.pipeline.resolve().name.split()) or "retrieval"
    if any(c.isspace() for c in tag):
        raise ValueError(f"--tag must be one word without spaces, got {tag!r}")
    queries = load_irds(args.topics).queries if is_irds(args.topics) else load_queries(args.topics)
    executor = executor_from_args(args)
    sharded = any(st.get("shards", 1) > 1 for st in pipeline_config(args.pipeline)["stages"])
    if executor is not None and not sharded:  # copies of the pipeline on the cluster, each searching some batches
        ranking = search_batches(args.pipeline, queries, executor.workers, k=args.k, batch=args.batch, device=args.device)
        ranking.to_trec(args.output, tag=tag)
        print(f"wrote {args.output}: {len(queries)} queries, at most {args.k} results each, by {executor.workers} "
              f"copies of the pipeline on the Ray cluster")
        return 0
    # one pipeline here; a sharded one keeps each shard on a Ray actor with --ray-address
    pipe, _, _ = load_pipeline(args.pipeline, device=args.device, threads=args.threads,
                               placer=executor.place if executor else None)
    qids = list(queries)
    scores: dict[str, dict[str, float]] = {}
    with tqdm(total=len(qids), desc="search", unit="q") as bar:
        for i in range(0, len(qids), args.batch):
            part = Queries({q: queries[q] for q in qids[i : i + args.batch]})
            scores.update(pipe.search(part, k=args.k).scores)
            bar.update(len(part))
    Ranking(scores).to_trec(args.output, tag=tag)
    print(f"wrote {args.output}: {len(qids)} queries, at most {args.k} results each, by {pipe!r}"
          + (" (shards on the Ray cluster)" if executor is not None and sharded else ""))
    return 0


def shard(args) -> int:
    check_output(args)
    executor = executor_from_args(args)
    pipe, corpus, config = load_pipeline(args.pipeline)
    sharded = shard_pipeline(pipe, corpus, args.shards, args.cache_dir, executor=executor)
    info = {**config.get("info", {}), "sharded_from": str(args.pipeline), "shards": args.shards}
    save_pipeline(sharded, args.output, corpus, info, overwrite=args.overwrite)
    print(f"saved {sharded!r} with {args.shards} shards of each index to {args.output}")
    return 0


def train(args) -> int:
    # every argument is checked before the first minute of work (the models and the index factory inside
    # build_pipeline, before anything is trained)
    check_output(args)
    settings = settings_from_args(args)
    if args.dev_split:
        check_split(args.dataset, args.dev_split, "--dev-split")
    ds = load_dataset(args.dataset, args.split)
    executor = executor_from_args(args)
    built = build_pipeline(ds.corpus, None if args.corpus_only else ds.queries, None if args.corpus_only else ds.qrels,
                           settings, cache_dir=args.cache_dir, threads=args.threads, split=args.split,
                           log=lambda m: print(m, file=sys.stderr, flush=True), executor=executor)
    info = {**built.info, "dataset": str(args.dataset), "command": " ".join(["python -m retrieval", *sys.argv[1:]])}
    save_pipeline(built.pipeline, args.output, built.corpus, info, overwrite=args.overwrite)
    print(f"saved {built.pipeline!r} to {args.output}")
    s = info["stages"]
    rerank = (f"rerank depth {s['rerank']['depth']}, weights {s['rerank']['fusion']['weights']}" if "rerank" in s
              else "no reranker")
    budget = s.get("rerank", {}).get("budget")
    if budget:
        rerank += (f" (budget {budget['budget_ms']:g} ms a query: "
                   + ", ".join(f"depth {d} {ms:g} ms" for d, ms in budget["p50_ms"].items()) + ")")
    print(f"BM25 k1={s['bm25']['k1']} b={s['bm25']['b']}; dense fusion weights {s['dense']['fusion']['weights']}; "
          f"{rerank} (chosen on {s['dense']['fusion']['fitted_on']}); training {info['train_seconds']:.0f} s")
    if args.dev_split:
        dev = load_dataset(args.dataset, args.dev_split)
        pipe, _, _ = load_pipeline(args.output, threads=args.threads, placer=executor.place if executor else None)
        ranking = pipe.search(dev.queries, keep_stages=True)
        rows = {name: evaluate(r, dev.qrels, ["nDCG@10"]).aggregate["nDCG@10"] for name, r in ranking.stages.items()}
        write_json(args.output / f"{args.dev_split}_nDCG@10.json", {"split": args.dev_split, "queries": len(dev.queries),
                                                                    "nDCG@10": rows})
        print(f"{args.dev_split} nDCG@10 ({len(dev.queries)} queries; a report, nothing was chosen on it):")
        for name, v in rows.items():
            print(f"  after {name:<14} {v:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "search":
        return search(args)
    if args.command == "shard":
        return shard(args)
    return 2


if __name__ == "__main__":
    sys.exit(run_cli(main))
