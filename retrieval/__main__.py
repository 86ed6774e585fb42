"""``python -m retrieval train ...``: train the full pipeline and save it to one folder;
``python -m retrieval serve --root DIR``: serve the saved pipelines under DIR over HTTP, one domain each.

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train BM25 >> hybrid LoRA dense >> LoRA reranker and save the pipeline folder")
    t.add_argument("--dataset", type=Path, required=True, help="BEIR or MS MARCO folder")
    t.add_argument("--split", default="train",
                   help="split whose judgements train the pipeline (with --corpus-only: only its corpus is read)")
    t.add_argument("--dev-split", default=None,
                   help="after training, report nDCG@10 of the pipeline and each stage on this split (nothing is chosen on it)")
    t.add_argument("--output", type=Path, required=True, help="the pipeline folder to write")
    t.add_argument("--corpus-only", action="store_true", help="no judgements: pseudo-queries from the corpus train both adapters")
    t.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    t.add_argument("--cache-dir", type=Path, default=None,
                   help="where indexes and trained adapters are cached (default: $RETRIEVAL_CACHE or ~/.cache/retrieval)")
    t.add_argument("--bm25-k", type=int, default=1000, help="BM25 candidates handed to the dense stage (default: 1000)")
    t.add_argument("--no-bm25-fit", action="store_true", help="keep k1=0.9, b=0.4 instead of fitting them on the training queries")
    t.add_argument("--dense-k", type=int, default=100, help="candidates the dense stage hands to the reranker (default: 100)")
    t.add_argument("--neighbours", type=int, default=100, help="ANN neighbours the dense stage adds (default: 100)")
    t.add_argument("--dense-factory", default="Flat", help="FAISS factory string (default: Flat)")
    t.add_argument("--dense-epochs", type=int, default=None, help="query-side adapter epochs (default: 8; corpus-only 4)")
    t.add_argument("--rerank-epochs", type=int, default=3, help="reranker epochs (default: 3)")
    t.add_argument("--rerank-depths", type=int, nargs="+", default=[10, 20, 30],
                   help="rerank depths to choose from on held-out training queries (default: 10 20 30)")
    t.add_argument("--rerank-negatives", nargs="+", choices=("bm25", "dense"), default=["bm25"],
                   help="first stages the reranker's hard negatives come from (default: bm25)")
    t.add_argument("--rerank-max-items", type=int, default=None, help="cap on reranker training pairs (corpus-only: 800)")
    t.add_argument("--dense-model", default=None, help="bi-encoder: HF id or folder (default: packaged all-MiniLM-L6-v2)")
    t.add_argument("--rerank-model", default=None, help="cross-encoder backbone: HF id or folder (default: the same MiniLM)")
    t.add_argument("--rerank-precision", choices=("auto", "float32", "bfloat16"), default="auto")
    t.add_argument("--threads", type=int, default=None, help="BM25 search threads (default: all cores)")
    t.add_argument("--seed", type=int, default=0)

    from .service.settings import ServiceSettings

    d = ServiceSettings()
    v = sub.add_parser("serve", help="HTTP search service over the domains (saved pipeline folders) under --root")
    v.add_argument("--root", type=Path, required=True, help="folder whose sub-folders are saved pipelines, one per domain")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--api-key-file", type=Path, default=None,
                   help="file with the API key(s) for writes, one per line (default: $RETRIEVAL_API_KEY; none: writes disabled)")
    v.add_argument("--work-dir", type=Path, default=None, help="working copies of the BM25 indexes (default: ROOT/.work)")
    v.add_argument("--workers", type=int, default=d.workers, help=f"threads running searches and writes (default: {d.workers})")
    v.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests that may wait for a worker; more are answered 429 (default: {d.max_queue})")
    for name in ("max_query_chars", "max_k", "max_batch_docs", "max_doc_chars", "max_id_chars", "max_body_bytes"):
        v.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=f"limit (default: {getattr(d, name)})")
    v.add_argument("--threads", type=int, default=None, help="Lucene search threads per domain (default: all cores)")
    v.add_argument("--device", default=None, help="torch device for the shared models (default: cuda if present, else cpu)")
    v.add_argument("--compact-after", type=int, default=d.compact_after,
                   help=f"journal records that trigger a compaction in the background (default: {d.compact_after}; 0: never)")
    v.add_argument("--no-sync", action="store_true", help="do not fsync the journal (faster writes; a power cut may lose them)")
    v.add_argument("--log-level", default="info")
    return p


def serve(args) -> int:
    from .service.app import serve
    from .service.settings import ServiceSettings

    try:
        settings = ServiceSettings(
            workers=args.workers, max_queue=args.max_queue, max_query_chars=args.max_query_chars, max_k=args.max_k,
            max_batch_docs=args.max_batch_docs, max_doc_chars=args.max_doc_chars, max_id_chars=args.max_id_chars,
            max_body_bytes=args.max_body_bytes, threads=args.threads, device=args.device, sync=not args.no_sync,
            compact_after=args.compact_after)
        serve(args.root, host=args.host, port=args.port, settings=settings, key_file=args.api_key_file,
              work_dir=args.work_dir, log_level=args.log_level)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def train(args) -> int:
    from benchmarks.datasets import load_dataset

    from .saved import load_pipeline, save_pipeline
    from .train import PipelineSettings, build_pipeline

    if args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        settings = PipelineSettings(
            corpus_only=args.corpus_only, bm25_k=args.bm25_k, bm25_fit=not args.no_bm25_fit, dense_factory=args.dense_factory,
            dense_k=args.dense_k, neighbours=args.neighbours, dense_epochs=args.dense_epochs,
            rerank_epochs=args.rerank_epochs, rerank_depths=tuple(args.rerank_depths),
            rerank_max_items=args.rerank_max_items, rerank_negatives=tuple(args.rerank_negatives), dense_model=args.dense_model, rerank_model=args.rerank_model,
            rerank_precision=args.rerank_precision, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ds = load_dataset(args.dataset, args.split)
    built = build_pipeline(ds.corpus, None if args.corpus_only else ds.queries, None if args.corpus_only else ds.qrels,
                           settings, cache_dir=args.cache_dir, threads=args.threads, split=args.split,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    info = {**built.info, "dataset": str(args.dataset), "command": " ".join(["python -m retrieval", *sys.argv[1:]])}
    save_pipeline(built.pipeline, args.output, built.corpus, info, overwrite=args.overwrite)
    print(f"saved {built.pipeline!r} to {args.output}")
    s = info["stages"]
    print(f"BM25 k1={s['bm25']['k1']} b={s['bm25']['b']}; dense fusion weights {s['dense']['fusion']['weights']}; "
          f"rerank depth {s['rerank']['depth']}, weights {s['rerank']['fusion']['weights']} "
          f"(chosen on {s['rerank']['fusion']['fitted_on']}); training {info['train_seconds']:.0f} s")
    if args.dev_split:
        from benchmarks.metrics import evaluate
        from .util import write_json

        dev = load_dataset(args.dataset, args.dev_split)
        pipe, _, _ = load_pipeline(args.output, threads=args.threads)
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
