"""Label-free ways to fuse the corpus-only pipeline's parts, side by side: ``python -m benchmarks corpus-designs``.

The parts are those ``build_pipeline(corpus_only=True)`` trains and uses — BM25, the untouched base model and the
query-side adapter trained on pseudo-queries from the corpus — and each design fuses some of them with equal
weights, by reciprocal rank (``rrf``) or by z-scored score (``z``). Each is scored on a split's judgements.

This is how the corpus-only rule was chosen (README, "Corpus-only"): on a development collection with judgements
(SciFact's corpus and its *train* queries), then run unchanged on the collections it is checked on. The
pipeline itself uses no judgement; the design it uses is marked in the table.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.card import start_text
from retrieval.data import load_dataset
from retrieval.evaluation import evaluate
from retrieval.pipeline.build import build_pipeline
from retrieval.pipeline.settings import settings_from_args
from retrieval.stages.fusion import Fusion
from retrieval.util import write_json

from .report import md_table

# name: (fusion method, the parts it fuses in equal weights)
DESIGNS = {
    "rrf(bm25, base) - the floor": ("rrf", ("bm25", "base")),
    "z(bm25, base)": ("weighted", ("bm25", "base")),
    "rrf(bm25, adapted)": ("rrf", ("bm25", "adapted")),
    "rrf(bm25, base, adapted)": ("rrf", ("bm25", "base", "adapted")),
    "z(bm25, adapted)": ("weighted", ("bm25", "adapted")),
    "z(bm25, base, adapted)": ("weighted", ("bm25", "base", "adapted")),
}
PIPELINE_DESIGN = "z(bm25, base, adapted)"  # what build_pipeline(corpus_only=True) does
METRICS = ["nDCG@10", "R@100"]


def compare(dataset: str | Path, split: str, settings, cache_dir=None, log=print) -> dict:
    """Train (or take from the cache) the corpus-only pipeline of ``dataset``'s corpus and score every design on
    ``split``'s judged queries. Returns {"rows": [...], "floor": ..., "adapter": training record}."""
    ds = load_dataset(dataset, split)
    built = build_pipeline(ds.corpus, settings=settings, cache_dir=cache_dir, log=log)
    bm25, dense = built.pipeline.stages[:2]
    queries = ds.queries.subset([q for q in ds.queries if q in ds.qrels])
    first = bm25.search(queries)
    parts = {"bm25": first, "adapted": dense.dense_scores(queries, first), "base": dense.base_scores(queries, first)}
    depth = max(bm25.k, dense.k)

    def scores(ranking) -> dict:
        return {m: round(v, 4) for m, v in evaluate(ranking.top_k(depth), ds.qrels, METRICS).aggregate.items()}

    rows = [{"design": f"{name} alone", **scores(parts[name])} for name in ("bm25", "base", "adapted")]
    for name, (method, used) in DESIGNS.items():
        fusion = Fusion(method, (1.0 / len(used),) * len(used))
        rows.append({"design": name + (" (the pipeline's)" if name == PIPELINE_DESIGN else ""),
                     **scores(fusion([parts[p] for p in used]))})
    train = built.info["stages"]["dense"]["train"]
    return {"dataset": str(dataset), "split": split, "queries": len(queries), "rows": rows,
            "adapter": {k: train.get(k) for k in ("best_epoch", "start_val", "best_val", "seconds")}}


def main(args) -> int:
    settings = settings_from_args(args, corpus_only=True)
    result = compare(args.dataset, args.split, settings, cache_dir=args.cache_dir)
    a = result["adapter"]
    print(f"{result['dataset']} ({args.split}, {result['queries']} judged queries); adapter: best epoch "
          f"{a['best_epoch']} (pseudo-query validation {start_text(a['start_val'])} -> {a['best_val']:.4f}), {a['seconds']:.0f} s")
    print(md_table(["design", *METRICS], [[r["design"], *(r[m] for m in METRICS)] for r in result["rows"]]))
    if args.output:
        write_json(Path(args.output) / "corpus_designs.json", result)
        print(f"wrote {Path(args.output) / 'corpus_designs.json'}")
    return 0
