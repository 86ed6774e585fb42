"""Dense-stage speed, in one run, against its peers measured beside it.

1. Encode throughput: ``BiEncoder.encode_documents`` vs plain ``SentenceTransformer.encode`` of the
   same model on the same real passages; the base model vs an unmerged LoRA adapter vs ``merged()`` vs
   the OpenVINO exports (fp32, bf16, int8 calibrated on other abstracts of the corpus), each with the
   cosine of its vectors to plain encode's.
2. ANN: HNSW and IVF against exact (Flat) search on >= 100k vectors embedded from real sentences of
   the shared corpora, queried with the real queries: recall@100 of Flat's top 100 and queries/s.
3. Training: LoRA vs full fine-tuning, time per step and peak memory, each in a fresh process.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from encoders.bi_encoder import BiEncoder
from retrieval.cpu import cpu_facts
from retrieval.data import load_corpus
from retrieval.index.faiss import FaissIndex
from retrieval.lora.settings import LoraSettings
from retrieval.util import default_cache_dir, write_json

from .measure import auto_int8_label, export_variants, one_batch_at_a_time
from .speed_bm25 import DATASETS, all_queries

_SPLIT = re.compile(r"(?<=[.!?])\s+")


def real_sentences(root: Path, n: int) -> list[str]:
    out: list[str] = []
    for name in DATASETS:
        for doc in load_corpus(root / name / "corpus.jsonl").values():
            out.extend(s.strip() for s in _SPLIT.split(doc.contents) if len(s.split()) >= 4)
    seen, unique = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    if len(unique) < n:  # not enough distinct sentences: add overlapping pairs of neighbours
        unique += [f"{a} {b}" for a, b in zip(unique, unique[1:])][: n - len(unique)]
    return unique[:n]


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def encode_part(args) -> dict:
    import torch

    corpus = load_corpus(args.datasets_root / "scifact" / "corpus.jsonl")
    docs = list(corpus.values())[: args.encode_docs]
    texts = [d.contents for d in docs]
    enc = BiEncoder()
    plain = enc.st  # the same SentenceTransformer object, called directly
    bs = enc.batch_size
    lora = BiEncoder()
    lora.add_lora(LoraSettings(r=16, alpha=32, side="both"))
    with torch.no_grad():  # a trained-looking adapter: non-zero B (a fresh one is a no-op but costs the same)
        for n, p in lora.st.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    merged = lora.merged()
    calibration = [d.contents for d in list(corpus.values())[args.encode_docs : args.encode_docs + 256]]
    exported = {}
    for label, precision, scope in export_variants():
        t0 = time.perf_counter()
        exported[label] = BiEncoder()
        exported[label].use_openvino(precision, {"document": calibration}, sides=("document",), min_cosine=None,
                                     int8_scope=scope)
        print(f"{label} export ready in {time.perf_counter() - t0:.0f} s (cached afterwards)", file=sys.stderr)
    auto = auto_int8_label()

    def auto_one_batch_at_a_time():
        with one_batch_at_a_time(exported[auto].export_of("document")):
            return exported[auto].encode_documents(docs, show_progress=False)

    def plain_encode():
        return plain.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    runs = {
        "plain SentenceTransformer.encode": plain_encode,
        "BiEncoder.encode_documents (base)": lambda: enc.encode_documents(docs, show_progress=False),
        "BiEncoder, unmerged LoRA adapter": lambda: lora.encode_documents(docs, show_progress=False),
        "BiEncoder, merged adapter": lambda: merged.encode_documents(docs, show_progress=False),
        **{f"BiEncoder, {label}": (lambda e=e: e.encode_documents(docs, show_progress=False))
           for label, e in exported.items()},
        f"BiEncoder, {auto}, one batch at a time": auto_one_batch_at_a_time,
    }
    vectors = {k: fn() for k, fn in runs.items()}  # warm-up, and the vectors compared
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # alternate so drift hits every variant alike
        for k, fn in runs.items():
            times[k] += _timed(fn, 1)
    reference = vectors["plain SentenceTransformer.encode"]
    rows = [{"variant": k, "docs_per_s": len(docs) / statistics.median(v), "runs_s": v,
             "cosine_to_plain_mean": float((vectors[k] * reference).sum(axis=1).mean()),
             "cosine_to_plain_min": float((vectors[k] * reference).sum(axis=1).min())} for k, v in times.items()]
    rate = {r["variant"]: r["docs_per_s"] for r in rows}
    plain_rate = rate["plain SentenceTransformer.encode"]
    return {"docs": len(docs), "max_length": enc.max_length, "threads": torch.get_num_threads(), "cpu": cpu_facts(),
            "rows": rows,
            "ratios": {
                "BiEncoder / plain ST (throughput)": rate["BiEncoder.encode_documents (base)"] / plain_rate,
                "merged / base (throughput)": rate["BiEncoder, merged adapter"] / rate["BiEncoder.encode_documents (base)"],
                "unmerged / base (throughput)": rate["BiEncoder, unmerged LoRA adapter"] / rate["BiEncoder.encode_documents (base)"],
                **{f"{label} / plain ST (throughput)": rate[f"BiEncoder, {label}"] / plain_rate for label in exported},
                f"int8 as int8_scope='auto' takes it here, {auto} / plain ST (throughput)":
                    rate[f"BiEncoder, {auto}"] / plain_rate,
                f"{auto}: a batch on each core at once / one batch at a time (throughput)":
                    rate[f"BiEncoder, {auto}"] / rate[f"BiEncoder, {auto}, one batch at a time"],
            }}


def ann_part(args) -> dict:
    cache = default_cache_dir() / "speed-dense"
    cache.mkdir(parents=True, exist_ok=True)
    vec_path = cache / f"sentences-{args.vectors}.npy"
    enc = BiEncoder(max_length=128)
    if vec_path.is_file():
        X = np.load(vec_path)
    else:
        sentences = real_sentences(args.datasets_root, args.vectors)
        print(f"embedding {len(sentences):,} real sentences (cached afterwards in {vec_path})", file=sys.stderr)
        X = enc.encode_documents(sentences, batch_size=128, show_progress=True)
        np.save(vec_path, X)
    queries = all_queries(args.datasets_root)
    Q = enc.encode_queries(list(queries.values()))
    ids = [str(i) for i in range(len(X))]
    k = 100
    flat = FaissIndex.build(X, ids, factory="Flat")
    flat_s = statistics.median(_timed(lambda: flat.search(Q, k), args.repeats))
    truth = [set(d for d, _ in h) for h in flat.search(Q, k)]
    rows = [{"index": "Flat", "settings": "", "recall@100": 1.0, "qps": len(Q) / flat_s, "build_s": flat.build_seconds}]

    single = Q[: args.single_queries]

    def one_at_a_time(idx):  # what a search service sees: one query per call
        return len(single) / statistics.median(_timed(lambda: [idx.search(single[i : i + 1], k) for i in range(len(single))],
                                                      args.repeats))

    rows[0]["qps_single"] = one_at_a_time(flat)

    def measure(idx, label, settings):
        s = statistics.median(_timed(lambda: idx.search(Q, k), args.repeats))
        hits = idx.search(Q, k)
        recall = float(np.mean([len(truth[i] & {d for d, _ in h}) / len(truth[i]) for i, h in enumerate(hits)]))
        rows.append({"index": label, "settings": settings, "recall@100": recall, "qps": len(Q) / s,
                     "qps_single": one_at_a_time(idx), "build_s": idx.build_seconds})

    hnsw = FaissIndex.build(X, ids, factory="HNSW32", ef_construction=200)
    for ef in (64, 128, 256, 512):
        hnsw.set_params(ef_search=ef)
        measure(hnsw, "HNSW32", f"efConstruction=200, efSearch={ef}")
    ivf = FaissIndex.build(X, ids, factory="IVF1024,Flat")
    for nprobe in (16, 32, 64, 128, 256):
        ivf.set_params(nprobe=nprobe)
        measure(ivf, "IVF1024,Flat", f"nprobe={nprobe}")
    ivf = FaissIndex.build(X, ids, factory="IVF4096,Flat")  # smaller lists: fewer vectors scanned per probe
    for nprobe in (64, 128, 256, 512):
        ivf.set_params(nprobe=nprobe)
        measure(ivf, "IVF4096,Flat", f"nprobe={nprobe}")
    ivfpq = FaissIndex.build(X, ids, factory="IVF1024,PQ48")
    for nprobe in (16, 64):
        ivfpq.set_params(nprobe=nprobe)
        measure(ivfpq, "IVF1024,PQ48", f"nprobe={nprobe}")
    for r in rows:
        r["qps_vs_flat"] = r["qps"] / rows[0]["qps"]
        r["qps_single_vs_flat"] = r["qps_single"] / rows[0]["qps_single"]
    return {"vectors": len(X), "queries": len(Q), "single_queries": len(single), "k": k, "rows": rows}


TRAIN_SNIPPET = r"""
import json, resource, sys, time, torch
from retrieval.data import load_dataset
from encoders import BiEncoder, LoraSettings
mode, steps, batch, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ds = load_dataset(root + "/scifact", "train")
pairs = [(ds.queries[q], ds.corpus[d].contents) for q in ds.queries for d in ds.qrels[q]]
enc = BiEncoder()
enc.st.max_seq_length = 160
if mode == "lora":
    enc.add_lora(LoraSettings(r=16, alpha=32, side="both"))
else:
    for p in enc.st.parameters():
        p.requires_grad_(True)
params = [p for p in enc.st.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5)
enc.st.train()
times = []
for s in range(steps + 1):
    b = pairs[s * batch:(s + 1) * batch]
    t0 = time.perf_counter()
    q = enc.embed([x for x, _ in b], "query"); d = enc.embed([y for _, y in b], "document")
    loss = torch.nn.functional.cross_entropy(20 * q @ d.T, torch.arange(len(b)))
    opt.zero_grad(); loss.backward(); opt.step()
    if s: times.append(time.perf_counter() - t0)
print(json.dumps({"mode": mode, "s_per_step": sorted(times)[len(times) // 2], "pairs": len(pairs),
                  "trainable_share": enc.trainable_share(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def train_part(args) -> dict:
    rows = []
    for mode in ("lora", "full"):
        out = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET, mode, str(args.train_steps), "32",
                              str(args.datasets_root)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["s_per_epoch"] = row["s_per_step"] * -(-row["pairs"] // 32)
        rows.append(row)
    return {"batch": 32, "max_length": 160, "rows": rows,
            "ratios": {"full / lora (time per epoch)": rows[1]["s_per_epoch"] / rows[0]["s_per_epoch"],
                       "full / lora (peak memory)": rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}}


def main(args) -> int:
    result = {}
    lines = []
    if "encode" in args.parts:
        e = result["encode"] = encode_part(args)
        lines += [f"Encode throughput: {e['docs']} SciFact abstracts, max length {e['max_length']}, "
                  f"{e['threads']} threads, median of {args.repeats} alternating runs; CPU: {e['cpu']}", "",
                  "| variant | docs/s | cosine to plain (mean) | (min) |", "| --- | ---: | ---: | ---: |",
                  *[f"| {r['variant']} | {r['docs_per_s']:.1f} | {r['cosine_to_plain_mean']:.4f} | "
                    f"{r['cosine_to_plain_min']:.4f} |" for r in e["rows"]], "",
                  *[f"- {k}: {v:.3f}" for k, v in e["ratios"].items()], ""]
    if "ann" in args.parts:
        a = result["ann"] = ann_part(args)
        lines += [f"ANN: {a['vectors']:,} vectors of real sentences, {a['queries']} real queries, k={a['k']}; "
                  f"batched = all queries in one call, single = {a['single_queries']} queries one call each", "",
                  "| index | settings | recall@100 vs Flat | batched q/s | x Flat | single q/s | x Flat | build s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                  *[f"| {r['index']} | {r['settings']} | {r['recall@100']:.4f} | {r['qps']:.0f} | "
                    f"{r['qps_vs_flat']:.2f} | {r['qps_single']:.0f} | {r['qps_single_vs_flat']:.2f} | "
                    f"{r['build_s']:.1f} |" for r in a["rows"]], ""]
    if "train" in args.parts:
        t = result["train"] = train_part(args)
        lines += ["Training, both sides, batch 32, max length 160 (fresh process each):", "",
                  "| method | trainable | s/step | s/epoch (SciFact train) | peak RSS MB |",
                  "| --- | ---: | ---: | ---: | ---: |",
                  *[f"| {r['mode']} | {r['trainable_share']:.2%} | {r['s_per_step']:.2f} | {r['s_per_epoch']:.0f} | "
                    f"{r['peak_rss_mb']:.0f} |" for r in t["rows"]], "",
                  *[f"- {k}: {v:.2f}" for k, v in t["ratios"].items()]]
    text = "\n".join(lines)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "speed_dense.json", result)
    (args.output / "speed_dense.md").write_text(text + "\n", encoding="utf-8")
    return 0
