"""Dense-stage study: the query-side adapter trained several ways (which dropout layers train) on several seeds, each
judged on that seed's training queries held out of both adapters (the slice a pipeline chooses its weights on).

For each seed and variant the adapter is trained as ``python -m retrieval train`` trains it (cached the same way, so
a pipeline built with those settings afterwards reuses it), then measured on the seed's held-out queries: alone
(nearest neighbours in the base document index) and fused after BM25 with the weight fitted on those queries, as the
pipeline fits it. Per-query figures are pooled over the seeds and compared with the first variant by a paired t-test.
Only the training split is read: a setting chosen here has not seen dev.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from encoders.bi_encoder import BiEncoder
from rerankers.train import training_examples
from retrieval.data import load_dataset
from retrieval.evaluation import evaluate, paired_ttest
from retrieval.pipeline.build import fit_slice
from retrieval.pipeline.cache import base_index, bm25_stage, dense_adapter, with_inference
from retrieval.pipeline.settings import PipelineSettings
from retrieval.stages.dense import Dense
from retrieval.stages.fusion import fit_weight
from retrieval.util import write_json

from .gate import METRIC
from .report import md_table


def measure(encoder, index, bm25, queries, qrels, settings: PipelineSettings) -> dict:
    """``METRIC`` per query of the adapter alone and fused after BM25 as the pipeline's dense stage (``settings``'
    depths; the weight fitted on these queries)."""
    alone = evaluate(Dense(encoder, index, mode="retrieve", k=settings.dense_k).search(queries), qrels,
                     [METRIC]).per_query
    dense = Dense(encoder, index, mode="hybrid", k=settings.dense_k, neighbours=settings.neighbours)
    first = bm25.search(queries)
    dense.fusion, _ = fit_weight(first, dense.dense_scores(queries, first), qrels)
    fused = evaluate(dense.search(queries, first), qrels, [METRIC]).per_query
    return {"alone": {q: v[METRIC] for q, v in alone.items()}, "fused": {q: v[METRIC] for q, v in fused.items()},
            "weight": dense.fusion.weights[1]}


def pooled(rows: list[dict], variants: list[str], seeds: list[int]) -> list[dict]:
    """Each variant's per-query figures over every seed, against the first variant's on the same queries."""
    out = []
    for variant in variants:
        mine = {r["seed"]: r for r in rows if r["variant"] == variant}
        first = {r["seed"]: r for r in rows if r["variant"] == variants[0]}
        row = {"variant": variant, "train_s": sum(mine[s]["train_s"] for s in seeds) / len(seeds)}
        for part in ("alone", "fused"):
            a = [mine[s][part][q] for s in seeds for q in sorted(mine[s][part])]
            b = [first[s][part][q] for s in seeds for q in sorted(first[s][part])]
            row[part] = sum(a) / len(a)
            row[f"{part}_vs_first"] = row[part] - sum(b) / len(b)
            row[f"{part}_p"] = paired_ttest(a, b)[1] if variant != variants[0] else None
        row["queries"] = sum(len(mine[s]["alone"]) for s in seeds)
        out.append(row)
    return out


def main(args) -> int:
    """``python -m benchmarks dense-study --dataset DIR [--seeds 1 2 3] [--dropouts all no-attention none]``."""
    ds = load_dataset(args.dataset, args.split)
    defaults = PipelineSettings()
    base = BiEncoder(args.model)
    with_inference(base, args.inference, ds.corpus, args.cache_dir, sides=("document",))
    index = base_index(base, ds.corpus, "Flat", args.cache_dir)[0]
    bm25 = bm25_stage(ds.corpus, args.cache_dir, threads=args.threads)[0]
    rows = []
    for seed in tqdm(args.seeds, desc="dense study", unit="seed"):
        examples = training_examples("supervised", ds.corpus, ds.queries, ds.qrels, seed)
        rs = PipelineSettings(seed=seed).rerank_train_settings()
        for variant in args.dropouts:
            encoder, info = dense_adapter("query", ds.corpus, ds.queries, ds.qrels, index, args.epochs, args.cache_dir,
                                          split=args.split, model=args.model, inference=args.inference, seed=seed,
                                          dropout=variant)
            held = fit_slice(ds.queries, ds.qrels, index, info, examples, rs, args.fit_queries)
            if not held:
                raise ValueError(f"seed {seed}: no training query is held out of both adapters' training")
            figures = measure(encoder, index, bm25, ds.queries.subset(held), {q: ds.qrels[q] for q in held}, defaults)
            rows.append({"seed": seed, "variant": variant, "train_s": info["seconds"], "best_epoch": info["best_epoch"],
                         "cached_at": info["cached_at"], **figures})
    summary = pooled(rows, list(args.dropouts), list(args.seeds))
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "dense_study.json", {"dataset": str(args.dataset), "split": args.split, "seeds": args.seeds,
                                                  "inference": args.inference, "rows": rows, "pooled": summary})
    per_seed = md_table(["seed", "dropout", "training s", "best epoch", "queries", f"alone {METRIC}",
                         f"fused {METRIC} (dense weight)"],
                        [[r["seed"], r["variant"], f"{r['train_s']:.0f}", r["best_epoch"], len(r["alone"]),
                          f"{sum(r['alone'].values()) / len(r['alone']):.4f}",
                          f"{sum(r['fused'].values()) / len(r['fused']):.4f} ({r['weight']:.2f})"] for r in rows])
    pooled_table = md_table(["dropout", "queries", "training s (mean)", "alone", "vs first (p)", "fused", "vs first (p)"],
                            [[r["variant"], r["queries"], f"{r['train_s']:.0f}", f"{r['alone']:.4f}",
                              _vs(r, "alone"), f"{r['fused']:.4f}", _vs(r, "fused")] for r in summary])
    text = (f"Query-side adapter by dropout, on each seed's {args.split!r} queries held out of both adapters\n\n"
            f"{per_seed}\n\nPooled over seeds {', '.join(map(str, args.seeds))}\n\n{pooled_table}\n")
    (args.output / "dense_study.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.output}/dense_study.json, dense_study.md")
    return 0


def _vs(row: dict, part: str) -> str:
    return "-" if row[f"{part}_p"] is None else f"{row[f'{part}_vs_first']:+.4f} ({row[f'{part}_p']:.3f})"
