"""Speed and quality of the BM25 engines, side by side in one run: the stage on Lucene, bm25s and rank-bm25,
against plain Pyserini (and plain bm25s) on the same indexes.

Two parts (``--parts``):

- ``scifact``: SciFact dev (5,183 abstracts, 210 queries), **one query at a time** (what a search service
  does), k=1000 as in the pipeline: queries per second and nDCG@10 / R@100 of each engine;
- ``passages``: >= ``--min-docs`` passages (overlapping word windows cut from every document of the shared
  corpora) and their real queries, in batches, k=``--k``: ms per query and index time.

Engines are timed in alternation, ``--repeats`` times, and the median is reported; ratios compare engines
measured in this same run.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from retrieval.data import load_corpus, load_dataset, load_queries
from retrieval.evaluation import evaluate
from retrieval.java import start_jvm
from retrieval.stages.bm25 import BM25
from retrieval.stages._analysis import lucene_english
from retrieval.types import Corpus, Document, Queries, Ranking
from retrieval.util import write_json

from .report import md_table


DATASETS = ("scifact", "cranfield", "medline", "adi")


def passage_corpus(root: Path, min_docs: int, window: int = 40) -> Corpus:
    words_per_doc: list[tuple[str, list[str]]] = []
    for name in DATASETS:
        corpus = load_corpus(root / name / "corpus.jsonl")
        for doc_id, doc in corpus.items():
            words = doc.contents.split()
            if words:
                words_per_doc.append((f"{name}-{doc_id}", words))
    total_words = sum(len(w) for _, w in words_per_doc)
    stride = max(1, total_words // (min_docs + len(words_per_doc)))
    while True:
        docs = []
        for base, words in words_per_doc:
            starts = range(0, max(1, len(words) - window + stride), stride)
            docs.extend(Document(f"{base}-{s}", " ".join(words[s : s + window])) for s in starts)
        if len(docs) >= min_docs or stride == 1:
            return Corpus(docs)
        stride -= 1


def all_queries(root: Path) -> Queries:
    items = []
    for name in DATASETS:
        items.extend((f"{name}-{qid}", text) for qid, text in load_queries(root / name / "queries.jsonl").items())
    return Queries(items)


def _median_ms_per_query(fn, n_queries: int, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000 / n_queries)
    return statistics.median(times), times


def _alternating(engines: dict, repeats: int) -> dict[str, list[float]]:
    """Each engine's seconds for one pass, ``repeats`` passes with the engines in alternation."""
    timings: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):  # alternate engines so drift hits all of them alike
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t0)
    return timings


def scifact_part(args, tmp: Path) -> dict:
    """One query at a time on SciFact dev: queries/s and quality of every engine, k=1000."""
    from pyserini.search.lucene import LuceneSearcher

    ds = load_dataset(args.datasets_root / "scifact", "dev")
    qids = list(ds.queries)
    one = [Queries({q: ds.queries[q]}) for q in qids]
    k = 1000
    stages = {name: BM25.build(ds.corpus, tmp / f"scifact-{name}", backend=name, k=k, threads=1)
              for name in ("lucene", "bm25s", "rank_bm25")}
    plain = LuceneSearcher(str(stages["lucene"].index_dir / "lucene"))
    plain.set_bm25(0.9, 0.4)
    import bm25s

    doc_ids = list(ds.corpus)  # plain bm25s over the same terms (our analyzer): what the stage adds is measured
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    model.index([lucene_english(ds.corpus[d].contents) for d in doc_ids], show_progress=False)

    def plain_pyserini():
        return Ranking({q: {h.docid: h.score for h in plain.search(ds.queries[q], k=k)} for q in qids})

    def plain_bm25s():
        out = {}
        for q in qids:
            docs, scores = model.retrieve([lucene_english(ds.queries[q])], k=k, show_progress=False)
            out[q] = {doc_ids[i]: float(s) for i, s in zip(docs[0], scores[0]) if s > 0}
        return Ranking(out)

    def stage_one_at_a_time(stage):
        def run():
            out = {}
            for q in one:
                out.update(stage.search(q).scores)
            return Ranking(out)
        return run

    engines = {"stage (bm25s)": stage_one_at_a_time(stages["bm25s"]), "plain bm25s (retrieve)": plain_bm25s,
               "stage (lucene)": stage_one_at_a_time(stages["lucene"]), "plain pyserini (search)": plain_pyserini}
    rankings = {name: fn() for name, fn in engines.items()}  # warm-up, and the rankings measured
    rank_q = qids[: args.rank_bm25_queries]
    timings = _alternating(engines, args.repeats)
    t0 = time.perf_counter()
    rank_run = Ranking({q: stages["rank_bm25"].search(Queries({q: ds.queries[q]})).scores[q] for q in rank_q})
    rank_seconds = time.perf_counter() - t0
    rows = []
    for name, ts in timings.items():
        ev = evaluate(rankings[name], ds.qrels, ["nDCG@10", "R@100"]).aggregate
        rows.append({"engine": name, "qps": len(qids) / statistics.median(ts), "runs_seconds": ts,
                     "nDCG@10": ev["nDCG@10"], "R@100": ev["R@100"], "queries": len(qids)})
    ev = evaluate(stages["rank_bm25"].search(ds.queries), ds.qrels, ["nDCG@10", "R@100"]).aggregate
    rows.append({"engine": "stage (rank_bm25)", "qps": len(rank_q) / rank_seconds, "nDCG@10": ev["nDCG@10"],
                 "R@100": ev["R@100"], "queries": len(rank_q), "same_as_all_queries": rank_run.scores == {
                     q: stages["rank_bm25"].search(Queries({q: ds.queries[q]})).scores[q] for q in rank_q}})
    by = {r["engine"]: r for r in rows}
    return {"dataset": "scifact", "split": "dev", "k": k, "threads": 1, "rows": rows, "ratios": {
        "bm25s stage / pyserini queries/s": by["stage (bm25s)"]["qps"] / by["plain pyserini (search)"]["qps"],
        "bm25s stage / plain bm25s queries/s": by["stage (bm25s)"]["qps"] / by["plain bm25s (retrieve)"]["qps"],
        "lucene stage / pyserini queries/s": by["stage (lucene)"]["qps"] / by["plain pyserini (search)"]["qps"],
        "bm25s - lucene nDCG@10": by["stage (bm25s)"]["nDCG@10"] - by["stage (lucene)"]["nDCG@10"],
    }, "same_ranking_lucene_stage_and_pyserini": rankings["stage (lucene)"].scores == rankings["plain pyserini (search)"].scores}


def passages_part(args, tmp: Path) -> dict:
    """Batches over >= --min-docs passages: ms per query and index time of every engine."""
    from pyserini.search.lucene import LuceneSearcher

    root = args.datasets_root
    t0 = time.perf_counter()
    corpus = passage_corpus(root, args.min_docs)
    queries = all_queries(root)
    qids = list(queries)[: args.queries]
    queries = queries.subset(qids)
    texts = [queries[q] for q in qids]
    print(f"corpus: {len(corpus):,} passages cut from {', '.join(DATASETS)} ({time.perf_counter() - t0:.1f} s); "
          f"{len(queries)} real queries; k={args.k}", file=sys.stderr)
    lucene = BM25.build(corpus, tmp / "lucene", backend="lucene", k=args.k, threads=args.threads)
    bm25s = BM25.build(corpus, tmp / "bm25s", backend="bm25s", k=args.k, threads=args.threads)
    rank = BM25.build(corpus, tmp / "rank", backend="rank_bm25", k=args.k)
    t0 = time.perf_counter()
    rank = BM25(rank.index_dir, k=args.k)  # loading builds BM25Okapi's statistics
    rank_load = time.perf_counter() - t0
    threads = lucene.threads
    plain = LuceneSearcher(str(lucene.index_dir / "lucene"))
    plain.set_bm25(0.9, 0.4)

    def run_plain():
        hits = plain.batch_search(texts, qids, k=args.k, threads=threads)
        return {q: {h.docid: h.score for h in hits[q]} for q in qids}

    same = lucene.search(queries).scores == run_plain()  # warm-up, and the same ranking check
    bm25s.search(queries)
    engines = {"stage (lucene)": lambda: lucene.search(queries), "pyserini batch_search": run_plain,
               "stage (bm25s)": lambda: bm25s.search(queries)}
    timings = _alternating(engines, args.repeats)
    rank_queries = queries.subset(qids[: args.rank_bm25_queries])
    t0 = time.perf_counter()
    rank.search(rank_queries)
    rank_ms = (time.perf_counter() - t0) * 1000 / len(rank_queries)
    index_s = {"stage (lucene)": lucene.build_seconds, "pyserini batch_search": lucene.build_seconds,
               "stage (bm25s)": bm25s.build_seconds}
    rows = [{"engine": name, "index_seconds": index_s[name], "ms_per_query": statistics.median(ts) * 1000 / len(qids),
             "runs_ms_per_query": [t * 1000 / len(qids) for t in ts], "queries": len(qids)}
            for name, ts in timings.items()]
    rows.append({"engine": "stage (rank_bm25)", "index_seconds": rank.build_seconds + rank_load, "ms_per_query": rank_ms,
                 "queries": len(rank_queries)})
    by = {r["engine"]: r["ms_per_query"] for r in rows}
    return {"docs": len(corpus), "queries": len(qids), "k": args.k, "threads": threads, "rows": rows,
            "same_ranking_as_pyserini": same, "ratios": {
                "lucene stage / pyserini time": by["stage (lucene)"] / by["pyserini batch_search"],
                "pyserini / bm25s stage time": by["pyserini batch_search"] / by["stage (bm25s)"],
                "rank_bm25 / bm25s stage time": by["stage (rank_bm25)"] / by["stage (bm25s)"]}}


def main(args) -> int:
    start_jvm()
    result: dict = {"repeats": args.repeats}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="speed-bm25-") as tmp:
        if "scifact" in args.parts:
            r = result["scifact"] = scifact_part(args, Path(tmp))
            lines += [f"SciFact dev ({r['rows'][0]['queries']} queries), one query at a time, k={r['k']}, 1 thread, "
                      f"median of {args.repeats} alternating runs", "",
                      md_table(["engine", "queries/s", "nDCG@10", "R@100"],
                               [[x["engine"], f"{x['qps']:.0f}", f"{x['nDCG@10']:.4f}", f"{x['R@100']:.4f}"] for x in r["rows"]]),
                      "", *[f"- {k}: {v:.4g}" for k, v in r["ratios"].items()],
                      f"- lucene stage ranks as plain Pyserini: {r['same_ranking_lucene_stage_and_pyserini']}", ""]
        if "passages" in args.parts:
            r = result["passages"] = passages_part(args, Path(tmp))
            lines += [f"{r['docs']:,} passages, {r['queries']} queries (rank_bm25: {r['rows'][-1]['queries']}), "
                      f"k={r['k']}, batches, {r['threads']} threads", "",
                      md_table(["engine", "index s", "ms/query"],
                               [[x["engine"], f"{x['index_seconds']:.1f}", f"{x['ms_per_query']:.3f}"] for x in r["rows"]]),
                      "", *[f"- {k}: {v:.3g}" for k, v in r["ratios"].items()],
                      f"- lucene stage ranks as plain Pyserini: {r['same_ranking_as_pyserini']}"]
    text = "\n".join(lines)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "speed_bm25.json", result)
    (args.output / "speed_bm25.md").write_text(text + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}/speed_bm25.json and speed_bm25.md", file=sys.stderr)
    same = [result[p].get("same_ranking_as_pyserini", result[p].get("same_ranking_lucene_stage_and_pyserini"))
            for p in ("scifact", "passages") if p in result]
    return 0 if all(same) else 1
