"""Speed of the BM25 stage against plain Pyserini and rank-bm25, in one run, on >= 100k passages.

The corpus is real text: overlapping word windows cut from every document of the shared corpora
(scifact, cranfield, medline, adi), with the stride chosen to give at least ``--min-docs`` passages.
Queries are the real queries of those datasets. Engines are timed in alternation, ``--repeats`` times,
and the median is reported; ratios compare engines measured in this same run.

Rows:
- ``stage (lucene)``: ``BM25.search`` on our index (a Ranking out);
- ``pyserini batch_search``: plain ``LuceneSearcher.batch_search`` on the *same* index, reading each
  hit's docid and score into a dict (what any caller has to do with the hits);
- ``pyserini batch_search, raw+docvectors index``: the same call on an index built the way Pyserini's
  prebuilt BEIR indexes are (``-storeRaw -storeDocvectors``), for reference;
- ``stage (rank_bm25)``: the Java-free backend (rank-bm25's ``BM25Okapi``), on fewer queries.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from retrieval.data import load_corpus, load_queries
from retrieval.java import start_jvm
from retrieval.stages.bm25 import BM25
from retrieval.types import Corpus, Document, Queries
from retrieval.util import write_json


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


def main(args) -> int:

    start_jvm()
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

    rows = []
    with tempfile.TemporaryDirectory(prefix="speed-bm25-") as tmp:
        tmp = Path(tmp)
        lucene = BM25.build(corpus, tmp / "lucene", k=args.k, threads=args.threads)
        raw = BM25.build(corpus, tmp / "lucene-raw", k=args.k, threads=args.threads, store_raw=True)
        rank = BM25.build(corpus, tmp / "rank", backend="rank_bm25", k=args.k)
        t0 = time.perf_counter()
        rank = BM25(rank.index_dir, k=args.k)  # loading builds BM25Okapi's statistics
        rank_load = time.perf_counter() - t0
        threads = lucene.threads

        plain = LuceneSearcher(str(lucene.index_dir / "lucene"))
        plain.set_bm25(0.9, 0.4)
        plain_raw = LuceneSearcher(str(raw.index_dir / "lucene"))
        plain_raw.set_bm25(0.9, 0.4)

        def run_plain(searcher=plain):
            hits = searcher.batch_search(texts, qids, k=args.k, threads=threads)
            return {q: {h.docid: h.score for h in hits[q]} for q in qids}

        # warm-up: JIT and page cache, and a check that both give the same ranking
        same = lucene.search(queries).scores == run_plain()
        run_plain(plain_raw)

        engines = {"stage (lucene)": lambda: lucene.search(queries), "pyserini batch_search": run_plain,
                   "pyserini batch_search, raw+docvectors index": lambda: run_plain(plain_raw)}
        timings: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):  # alternate engines so drift hits all of them alike
            for name, fn in engines.items():
                timings[name].append(_median_ms_per_query(fn, len(qids), 1)[0])

        rank_queries = queries.subset(qids[: args.rank_bm25_queries])
        rank_ms, _ = _median_ms_per_query(lambda: rank.search(rank_queries), len(rank_queries), 1)
        lucene_sub_ms, _ = _median_ms_per_query(lambda: lucene.search(rank_queries), len(rank_queries), 1)

        index_s = {"stage (lucene)": lucene.build_seconds, "pyserini batch_search": lucene.build_seconds,
                   "pyserini batch_search, raw+docvectors index": raw.build_seconds}
        for name, ts in timings.items():
            rows.append({"engine": name, "index_seconds": index_s[name], "ms_per_query": statistics.median(ts),
                         "runs_ms_per_query": ts, "queries": len(qids)})
        rows.append({"engine": "stage (rank_bm25)", "index_seconds": rank.build_seconds + rank_load,
                     "ms_per_query": rank_ms, "queries": len(rank_queries),
                     "lucene_ms_per_query_same_queries": lucene_sub_ms})

    stage_ms = rows[0]["ms_per_query"]
    result = {
        "docs": len(corpus), "queries": len(qids), "k": args.k, "threads": threads, "repeats": args.repeats,
        "same_ranking_as_pyserini": same,
        "rows": rows,
        "ratios": {
            "stage / pyserini (same index)": stage_ms / rows[1]["ms_per_query"],
            "stage / pyserini (raw+docvectors index)": stage_ms / rows[2]["ms_per_query"],
            "rank_bm25 / stage (same queries)": rank_ms / lucene_sub_ms,
        },
    }
    lines = [
        f"BM25 speed: {len(corpus):,} passages, {len(qids)} queries (rank_bm25: {rows[3]['queries']}), "
        f"k={args.k}, {threads} threads, median of {args.repeats} alternating runs",
        "",
        "| engine | index s | ms/query |",
        "| --- | ---: | ---: |",
        *[f"| {r['engine']} | {r['index_seconds']:.1f} | {r['ms_per_query']:.2f} |" for r in rows],
        "",
        *[f"- {k}: {v:.3f}" for k, v in result["ratios"].items()],
        f"- same ranking as plain Pyserini: {same}",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "speed_bm25.json", result)
    (args.output / "speed_bm25.md").write_text(text + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}/speed_bm25.json and speed_bm25.md", file=sys.stderr)
    return 0 if same else 1
