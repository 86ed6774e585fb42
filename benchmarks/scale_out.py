"""Scale-out on Ray, measured (``python -m benchmarks scale-out``, ``make scale``): each part prints a table and
writes ``scale_out.json`` beside it. Everything runs on a Ray cluster this command starts in its own process
(``ray.init``, every core) unless ``--ray-address`` names another; "here" is one process without Ray.

- ``encode``: encoding throughput, one process vs Ray Data with 1 and 2 encoder actors (the encoder as the pipeline
  runs it: the OpenVINO int8 export), with the largest difference of the vectors (they must be one process's);
- ``index``: time to index SciFact's corpus and ~100K passages cut from the shared corpora (encode, BM25 shards, FAISS
  shards), on the cluster vs here;
- ``search``: queries per second of the dense index (Flat, HNSW32, IVF1024,Flat) and of BM25 over the ~100K
  passages with 1, 2 and 4 shards, held here (threads) and on Ray actors; for ANN, recall@100 against the single
  index and against exact search;
- ``compress``: index options (scalar quantization, PCA, OPQ + PQ) as recall@100 against Flat over the passages,
  nDCG@10 of the dense stage alone on SciFact dev, and bytes per document (candidates rescored from the codes: no
  exact vectors kept); the smallest with recall@100 >= 0.95 is named.

On a 2-core machine the cluster has 2 CPUs, so these are ratios of overhead and parallelism at that size, not of a
real cluster; the README's sizing plan scales the per-shard figures.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from encoders.bi_encoder import BiEncoder
from retrieval.data import load_dataset
from retrieval.distributed import RayExecutor, encode_corpus
from retrieval.evaluation import evaluate
from retrieval.index.faiss import FaissIndex
from retrieval.index.sharded import ShardedIndex, build_shard, trained_template
from retrieval.pipeline.cache import with_inference
from retrieval.shards import Executor, contiguous
from retrieval.stages.bm25 import BM25
from retrieval.stages.bm25_sharded import ShardedBM25
from retrieval.stages.dense import Dense
from retrieval.types import Corpus, Queries
from retrieval.util import write_json

from .report import md_table
from .speed_bm25 import all_queries, passage_corpus

PARTS = ("encode", "index", "search", "compress")
SHARDS = (1, 2, 4)
# compressed index options: FAISS factory strings ({lists}: IVF lists for the corpus size)
COMPRESSED = ("SQfp16", "SQ8", "SQ6", "SQ4", "PCAR128,Flat", "PCAR128,SQ8", "PCAR192,SQ8", "IVF{lists},SQ8", "HNSW32,SQ8",
              "OPQ32_128,IVF{lists},PQ32", "IVF{lists},PQ48")


def _lists(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest 4 sqrt(n) (FAISS's guideline), at most n / 39."""
    lists = 2 ** round(np.log2(4 * np.sqrt(n)))
    while lists > max(1, n // 39):
        lists //= 2
    return int(lists)


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _encoder(corpus: Corpus, cache) -> BiEncoder:
    """The packaged MiniLM as the pipeline runs it on a CPU: its documents through the int8 export."""
    enc = BiEncoder()
    with_inference(enc, "openvino-int8", corpus, cache)
    return enc


def _same(shard):
    """An opener that hands over a shard built elsewhere (sent to the actor with it)."""
    return shard


def _recall(hits, truth) -> float:
    return float(np.mean([len({d for d, _ in h} & t) / max(1, len(t)) for h, t in zip(hits, truth)]))


def encode_part(args, cluster: RayExecutor, scifact) -> dict:
    docs = list(scifact.corpus.values())[: args.encode_docs]
    corpus = Corpus(docs)
    enc = _encoder(scifact.corpus, args.cache_dir)
    enc.encode_documents(docs[:64])  # warm-up
    seconds, reference = _seconds(lambda: enc.encode_documents(docs))
    rows = [{"where": "one process (OpenVINO, every core)", "workers": 0, "seconds": seconds,
             "docs_per_s": len(docs) / seconds, "max_abs_difference": 0.0}]
    for workers in (1, 2):
        seconds, (_, vectors) = _seconds(lambda: encode_corpus(enc, corpus, workers))
        rows.append({"where": f"Ray Data, {workers} actor(s) of 1 CPU", "workers": workers, "seconds": seconds,
                     "docs_per_s": len(docs) / seconds,
                     "max_abs_difference": float(np.abs(vectors - reference).max())})
    for r in rows:
        r["x one process"] = r["docs_per_s"] / rows[0]["docs_per_s"]
    return {"docs": len(docs), "rows": rows, "note": "Ray's seconds include starting the actors and loading the model"}


def index_part(args, cluster: RayExecutor, scifact, passages: Corpus, tmp: Path) -> tuple[dict, dict]:
    """Encode + BM25 shards + FAISS shards of each corpus, here and on the cluster; returns the passages' vectors
    for the search and compression parts too."""
    rows, vectors_of = [], {}
    for name, corpus in (("scifact", scifact.corpus), (f"passages ({len(passages):,})", passages)):
        enc = _encoder(scifact.corpus, args.cache_dir)
        for where, ex in (("here", Executor()), ("Ray", cluster)):
            t0 = time.perf_counter()
            vectors = ex.encode_documents(enc, list(corpus.values()))
            encode_s = time.perf_counter() - t0
            bm25_s, bm25 = _seconds(lambda: ShardedBM25.build(corpus, tmp / f"bm25-{name[:4]}-{where}", shards=2,
                                                              executor=ex))
            faiss_s, index = _seconds(lambda: ShardedIndex.build(vectors, list(corpus), "Flat", 2, executor=ex))
            bm25.close()
            index.close()
            rows.append({"corpus": name, "docs": len(corpus), "where": where, "encode_s": encode_s,
                         "bm25_2_shards_s": bm25_s, "faiss_2_shards_s": faiss_s,
                         "total_s": encode_s + bm25_s + faiss_s})
            vectors_of[name] = vectors
        here, ray = rows[-2], rows[-1]
        ray["x here (total time)"] = here["total_s"] / ray["total_s"]
        ray["max_abs_difference"] = float(np.abs(vectors_of[name] - vectors).max())
    return {"rows": rows}, {"passages": vectors_of[f"passages ({len(passages):,})"]}


def search_part(args, cluster: RayExecutor, passages: Corpus, vectors: np.ndarray, queries: Queries, tmp: Path) -> dict:
    enc = BiEncoder()
    Q = enc.encode_queries(list(queries.values()))
    ids = list(passages)
    single = Q[: args.single_queries]
    k = 100
    truth = [{d for d, _ in h} for h in FaissIndex.build(vectors, ids).search(Q, k)]
    rows = []
    for factory in ("Flat", "HNSW32", f"IVF{_lists(len(ids))},Flat"):
        one = None
        for shards in SHARDS:
            template = trained_template(factory, vectors, nprobe=64, ef_search=128)
            parts = [build_shard(template, vectors[r.start:r.stop], ids[r.start:r.stop]) for r in contiguous(len(ids), shards)]
            for where, pool in (("here", None), ("Ray", cluster.place([functools.partial(_same, p) for p in parts]))):
                index = ShardedIndex.from_shards(parts, pool)  # the same shards, held here or sent to actors
                hits = index.search(Q, k)
                one = one if one is not None else hits
                single_s, _ = _seconds(lambda: [index.search(single[i:i + 1], k) for i in range(len(single))])
                batch_s, _ = _seconds(lambda: index.search(Q, k))
                rows.append({"index": factory, "shards": shards, "where": where, "qps_one_at_a_time": len(single) / single_s,
                             "qps_batch": len(Q) / batch_s, "recall@100_vs_exact": _recall(hits, truth),
                             "recall@100_vs_one_shard": _recall(hits, [{d for d, _ in h} for h in one])})
                if pool is not None:
                    pool.close()
    bm25_rows = []
    texts = Queries({q: queries[q] for q in list(queries)[: args.single_queries]})
    reference = None
    for shards in SHARDS:
        for where, ex in (("here", Executor()), ("Ray", cluster)):
            if shards == 1 and where == "here":
                stage = BM25.build(passages, tmp / "bm25-one", backend="bm25s", k=k, overwrite=True)
            else:
                stage = ShardedBM25.build(passages, tmp / f"bm25-{shards}-{where}", shards=shards, k=k, executor=ex,
                                          overwrite=True)
            ranking = stage.search(texts)
            reference = reference or ranking
            one_s, _ = _seconds(lambda: [stage.search(Queries({q: texts[q]})) for q in texts])
            same = sum(ranking.ranked(q) == reference.ranked(q) for q in texts)
            bm25_rows.append({"index": "BM25 (bm25s)", "shards": shards, "where": where,
                              "qps_one_at_a_time": len(texts) / one_s, "rankings_equal_to_one_index": f"{same}/{len(texts)}"})
            if hasattr(stage, "pool"):
                stage.close()
    return {"docs": len(ids), "queries": len(Q), "single_queries": len(single), "k": k, "dense": rows, "bm25": bm25_rows}


def compress_part(args, passages_vectors: np.ndarray, queries: Queries, scifact, cache) -> dict:
    enc = _encoder(scifact.corpus, cache)
    Q = BiEncoder().encode_queries(list(queries.values()))
    ids = [str(i) for i in range(len(passages_vectors))]
    flat = FaissIndex.build(passages_vectors, ids, exact_vectors=False)
    truth = [{d for d, _ in h} for h in flat.search(Q, 100)]
    sci_ids = list(scifact.corpus)
    sci_vectors = enc.encode_documents([scifact.corpus[d] for d in sci_ids])
    rows = []
    for template in ("Flat", *COMPRESSED):
        row = {"index": template.format(lists=_lists(len(ids)))}
        t0 = time.perf_counter()
        index = FaissIndex.build(passages_vectors, ids, row["index"], exact_vectors=False, nprobe=64, ef_search=128)
        row["build_s"] = time.perf_counter() - t0
        row["bytes_per_doc"] = index.nbytes() / len(index)
        row["recall@100"] = _recall(index.search(Q, 100), truth)
        single_s, _ = _seconds(lambda: [index.search(Q[i:i + 1], 100) for i in range(args.single_queries)])
        row["qps_one_at_a_time"] = args.single_queries / single_s
        sci = FaissIndex.build(sci_vectors, sci_ids, template.format(lists=_lists(len(sci_ids))), exact_vectors=False,
                               nprobe=16, ef_search=128)
        dense = Dense(enc, sci, mode="retrieve", k=100)
        row["scifact_dev_nDCG@10"] = evaluate(dense.search(scifact.queries), scifact.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
        rows.append(row)
        print(f"  {row['index']}: recall@100 {row['recall@100']:.4f}, {row['bytes_per_doc']:.0f} B/doc", file=sys.stderr)
    kept = [r for r in rows if r["recall@100"] >= 0.95]
    smallest = min(kept, key=lambda r: r["bytes_per_doc"]) if kept else None
    return {"docs": len(ids), "queries": len(Q), "rows": rows, "smallest_with_recall_0.95": smallest and smallest["index"]}


def _table(rows: list[dict], columns: list[str]) -> str:
    fmt = lambda v: f"{v:,.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:,.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    return md_table(columns, [[fmt(r.get(c, "")) for c in columns] for r in rows])


def main(args) -> int:
    cluster = RayExecutor(args.ray_address or "local", workers=2)
    scifact = load_dataset(args.datasets_root / "scifact", "dev")
    result: dict = {"cluster_cpus": cluster.workers, "parts": list(args.parts)}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        passages = passage_corpus(args.datasets_root, args.passages)
        queries = all_queries(args.datasets_root)
        if "encode" in args.parts:
            r = result["encode"] = encode_part(args, cluster, scifact)
            lines += [f"## Encoding {r['docs']} SciFact abstracts", "",
                      _table(r["rows"], ["where", "seconds", "docs_per_s", "x one process", "max_abs_difference"]), ""]
        vectors = None
        if "index" in args.parts or "search" in args.parts or "compress" in args.parts:
            r, made = index_part(args, cluster, scifact, passages, tmp)
            vectors = made["passages"]
            if "index" in args.parts:
                result["index"] = r
                lines += ["## Indexing (encode + BM25 in 2 shards + FAISS Flat in 2 shards)", "",
                          _table(r["rows"], ["corpus", "docs", "where", "encode_s", "bm25_2_shards_s", "faiss_2_shards_s",
                                             "total_s", "x here (total time)", "max_abs_difference"]), ""]
        if "search" in args.parts:
            r = result["search"] = search_part(args, cluster, passages, vectors, queries, tmp)
            lines += [f"## Search over {r['docs']:,} passages ({r['queries']} queries batched, {r['single_queries']} one "
                      f"at a time, k={r['k']})", "",
                      _table(r["dense"], ["index", "shards", "where", "qps_one_at_a_time", "qps_batch",
                                          "recall@100_vs_exact", "recall@100_vs_one_shard"]), "",
                      _table(r["bm25"], ["index", "shards", "where", "qps_one_at_a_time", "rankings_equal_to_one_index"]), ""]
        if "compress" in args.parts:
            r = result["compress"] = compress_part(args, vectors, queries, scifact, args.cache_dir)
            lines += [f"## Compressed indexes ({r['docs']:,} passages, {r['queries']} queries; SciFact dev for nDCG@10)",
                      "", _table(r["rows"], ["index", "bytes_per_doc", "recall@100", "qps_one_at_a_time",
                                             "scifact_dev_nDCG@10", "build_s"]), "",
                      f"Smallest with recall@100 >= 0.95: {r['smallest_with_recall_0.95']}", ""]
    cluster.close()
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "scale_out.json", result)
    text = "\n".join(lines)
    (args.output / "scale_out.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.output}/scale_out.json and scale_out.md")
    return 0
