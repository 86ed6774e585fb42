"""Reranker speed, in one run, against its peers measured beside it.

1. Throughput (pairs/s) on real (query, passage) pairs — SciFact dev queries and their BM25 top passages:
   a plain transformers forward of the same model (tokenize a batch, call the model; float32, and bf16
   autocast where the CPU has it) vs ``CrossEncoderReranker.score``; the base model vs an unmerged LoRA
   adapter vs ``merged()`` vs the OpenVINO exports (fp32, bf16, int8 calibrated on other dev queries' BM25
   pairs), each with the Spearman correlation of its scores to the plain float32 forward's.
2. How rerank time grows with depth: the ``Rerank`` stage over BM25 candidates at k = 10, 20, 50, 100.
3. A training step (listwise, 8 queries x (1 + the default negatives) passages, LoRA) in float32 vs bf16 autocast,
   and which of the two ``precision="auto"`` takes on this CPU: bf16 pays only where the CPU computes it fast
   (AMX granted to the process: ``retrieval.cpu``); and in float32 with dropout as ``PipelineSettings.rerank_dropout`` sets it: all, no-attention (the attention
   probabilities' off: PyTorch's fused attention kernel runs) and none (the default).
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import numpy as np

from rerankers.cross_encoder import CrossEncoderReranker, RerankLoraSettings
from rerankers.train import RerankTrainSettings
from retrieval.cpu import cpu_facts
from retrieval.data import load_dataset
from retrieval.lora.training import dropout_switches, dropouts_off
from retrieval.stages.bm25 import BM25
from retrieval.stages.rerank import Rerank
from retrieval.types import Queries
from retrieval.util import write_json
from .measure import auto_int8_label, export_variants, one_batch_at_a_time


def _data(args):
    ds = load_dataset(args.datasets_root / "scifact", "dev")
    bm25, _ = BM25.from_corpus(ds.corpus)
    return ds, bm25


def throughput_part(args, ds, bm25) -> dict:
    import torch

    from scipy.stats import spearmanr

    qids = list(ds.queries)
    n = max(1, args.pairs // 8)
    timed, other = qids[:n], qids[n : n + max(4, n)]  # as many other queries calibrate (and check) the exports

    def pairs_of(some):
        first = bm25.search(Queries({q: ds.queries[q] for q in some}), k=8)
        return [(ds.queries[q], ds.corpus[d].contents) for q in some for d, _ in first.ranked(q)]

    pairs = pairs_of(timed)[: args.pairs]
    queries, docs = [p[0] for p in pairs], [p[1] for p in pairs]
    calibration = pairs_of(other) if other else pairs  # from other queries where there are any
    base = CrossEncoderReranker(max_length=args.max_length)
    lora = CrossEncoderReranker(max_length=args.max_length)
    lora.add_lora(RerankLoraSettings())
    with torch.no_grad():  # a trained-looking adapter: non-zero B (a fresh one is a no-op but costs the same)
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    merged = lora.merged()
    exported = {}
    for label, precision, scope in export_variants():
        exported[label] = CrossEncoderReranker(max_length=args.max_length)
        exported[label].use_openvino(precision, [q for q, _ in calibration], [d for _, d in calibration],
                                     min_spearman=None, int8_scope=scope)
    auto = auto_int8_label()

    def auto_one_batch_at_a_time():
        with one_batch_at_a_time(exported[auto].export_of("pairs")):
            return exported[auto].score(queries, docs)
    model, tok, bs = base.model, base.tokenizer, base.batch_size

    def plain(autocast: bool):
        out = []
        with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()):
            for i in range(0, len(pairs), bs):
                f = tok(queries[i : i + bs], docs[i : i + bs], truncation=True, max_length=base.max_length,
                        padding=True, return_tensors="pt")
                out.append(model(**f).logits.float()[:, 0])
        return torch.cat(out).numpy()

    runs = {"plain transformers forward (float32)": lambda: plain(False)}
    if base.precision == "bfloat16" and base.device == "cpu":
        runs["plain transformers forward (bf16 autocast)"] = lambda: plain(True)
    runs.update({
        f"CrossEncoderReranker.score (base, {base.precision})": lambda: base.score(queries, docs),
        "unmerged LoRA adapter": lambda: lora.score(queries, docs),
        "merged adapter": lambda: merged.score(queries, docs),
        **{label: (lambda r=r: r.score(queries, docs)) for label, r in exported.items()},
        f"{auto}, one batch at a time": auto_one_batch_at_a_time,
    })
    scores = {k: np.asarray(fn()) for k, fn in runs.items()}  # warm-up, and the scores compared
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # alternate so drift hits every variant alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    reference = scores["plain transformers forward (float32)"]
    rows = [{"variant": k, "pairs_per_s": len(pairs) / statistics.median(v), "runs_s": v,
             "spearman_to_fp32": float(spearmanr(scores[k], reference).statistic)} for k, v in times.items()]
    rate = {r["variant"]: r["pairs_per_s"] for r in rows}
    ours = rate[f"CrossEncoderReranker.score (base, {base.precision})"]
    peer = "plain transformers forward (bf16 autocast)" if base.precision == "bfloat16" and base.device == "cpu" \
        else "plain transformers forward (float32)"
    fp32 = rate["plain transformers forward (float32)"]
    return {"pairs": len(pairs), "max_length": base.max_length, "precision": base.precision, "batch_size": bs,
            "threads": torch.get_num_threads(),
            "same_scores_as_plain": bool(np.allclose(scores[peer], scores[f"CrossEncoderReranker.score (base, {base.precision})"],
                                                     atol=1e-2)),
            "rows": rows, "ratios": {
                "reranker / plain transformers at the same precision (throughput)": ours / rate[peer],
                "merged / base (throughput)": rate["merged adapter"] / ours,
                "unmerged / base (throughput)": rate["unmerged LoRA adapter"] / ours,
                **{f"{label} / plain float32 forward (throughput)": rate[label] / fp32 for label in exported},
                f"int8 as int8_scope='auto' takes it here, {auto} / plain float32 forward (throughput)": rate[auto] / fp32,
                f"{auto}: a batch on each core at once / one batch at a time (throughput)":
                    rate[auto] / rate[f"{auto}, one batch at a time"],
                **({f"{auto} / plain bf16 forward (throughput)": rate[auto] / rate[peer]}
                   if peer != "plain transformers forward (float32)" else {}),
            }}


def depth_part(args, ds, bm25) -> dict:
    ce = CrossEncoderReranker(max_length=args.max_length)
    qids = list(ds.queries)[: args.depth_queries]
    rows = []
    for k in args.depths:
        stage = Rerank(ce, ds.corpus, k=k)
        per_query = []
        for q in qids:  # one query at a time, as a service sees them
            one = Queries({q: ds.queries[q]})
            first = bm25.search(one, k=k)
            t0 = time.perf_counter()
            stage.search(one, first)
            per_query.append(time.perf_counter() - t0)
        rows.append({"k": k, "ms_per_query_p50": 1000 * statistics.median(per_query),
                     "ms_per_query_mean": 1000 * statistics.fmean(per_query)})
    for r in rows:
        r["x_k10"] = r["ms_per_query_p50"] / rows[0]["ms_per_query_p50"]
    return {"queries": len(qids), "max_length": ce.max_length, "precision": ce.precision, "rows": rows}


# (precision, dropout while training as PipelineSettings.rerank_dropout names it) of each timed training step
STEP_VARIANTS = (("float32", "all"), ("bfloat16", "all"), ("float32", "no-attention"), ("float32", "none"))


def train_step_part(args, ds, bm25, batch: int = 8, group: int = 1 + RerankTrainSettings.negatives) -> dict:
    """Seconds per listwise LoRA training step for each of ``STEP_VARIANTS``, on real SciFact pairs (the training
    default's shape), the variants alternating; and the loss of the first step of each (they start from one
    state; with dropout on, the losses differ by its random masks too)."""
    import torch

    qids = list(ds.queries)[:batch]
    first = bm25.search(Queries({q: ds.queries[q] for q in qids}), k=group)
    queries = [ds.queries[q] for q in qids for _ in range(group)]
    docs = [ds.corpus[d].contents for q in qids for d, _ in first.ranked(q)[:group]]
    if len(docs) != len(queries):
        raise ValueError(f"BM25 found fewer than {group} passages for a query")
    models = {}
    for variant in STEP_VARIANTS:
        torch.manual_seed(0)
        ce = CrossEncoderReranker(max_length=args.max_length, precision=variant[0])
        ce.add_lora(RerankLoraSettings())
        ce.model.train()
        optim = torch.optim.AdamW([p for p in ce.model.parameters() if p.requires_grad], lr=1e-3)
        models[variant] = (ce, optim)

    def step(variant):
        ce, optim = models[variant]
        with dropouts_off(ce.model, **dropout_switches(variant[1])):
            logits = ce.logits(queries, docs).view(batch, group)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))
            optim.zero_grad()
            loss.backward()
            optim.step()
        return loss.item()

    first_loss = {v: step(v) for v in models}  # warm-up
    times = {v: [] for v in models}
    for _ in range(args.train_steps):
        for v in models:
            t0 = time.perf_counter()
            step(v)
            times[v].append(time.perf_counter() - t0)
    rows = [{"precision": v[0], "dropout": v[1], "s_per_step": statistics.median(t), "runs_s": t,
             "first_loss": first_loss[v]} for v, t in times.items()]
    by = {(r["precision"], r["dropout"]): r["s_per_step"] for r in rows}
    auto = CrossEncoderReranker(max_length=args.max_length).precision
    return {"pairs_per_step": len(docs), "queries_per_step": batch, "max_length": args.max_length,
            "steps": args.train_steps,
            "threads": torch.get_num_threads(), "cpu": cpu_facts(), "auto": auto, "rows": rows,
            "ratio": {"bfloat16 / float32 (step time, dropout all)": by["bfloat16", "all"] / by["float32", "all"],
                      "auto / fastest precision (step time, dropout all)":
                          by[auto, "all"] / min(by["float32", "all"], by["bfloat16", "all"]),
                      "float32: dropout all / no-attention (step time)": by["float32", "all"] / by["float32", "no-attention"],
                      "float32: dropout all / none (step time)": by["float32", "all"] / by["float32", "none"]}}


def main(args) -> int:
    ds, bm25 = _data(args)
    t = throughput_part(args, ds, bm25)
    d = depth_part(args, ds, bm25)
    s = train_step_part(args, ds, bm25)
    lines = [f"Reranker throughput: {t['pairs']} real SciFact (query, passage) pairs, max length {t['max_length']}, "
             f"{t['precision']}, batch {t['batch_size']}, {t['threads']} threads, median of {args.repeats} alternating runs", "",
             "| variant | pairs/s | Spearman to float32 |", "| --- | ---: | ---: |",
             *[f"| {r['variant']} | {r['pairs_per_s']:.1f} | {r['spearman_to_fp32']:.4f} |" for r in t["rows"]], "",
             *[f"- {k}: {v:.3f}" for k, v in t["ratios"].items()],
             f"- same scores as the plain forward (within bf16 rounding): {t['same_scores_as_plain']}", "",
             f"Rerank time by depth: {d['queries']} SciFact dev queries one at a time, BM25 candidates", "",
             "| k | ms/query (p50) | ms/query (mean) | x k=10 |", "| ---: | ---: | ---: | ---: |",
             *[f"| {r['k']} | {r['ms_per_query_p50']:.0f} | {r['ms_per_query_mean']:.0f} | {r['x_k10']:.2f} |"
               for r in d["rows"]],
             "", f"LoRA training step: {s['pairs_per_step']} pairs ({s['queries_per_step']} queries x "
                 f"{s['pairs_per_step'] // s['queries_per_step']}), max length {s['max_length']}, median of "
                 f"{s['steps']} alternating steps; CPU: {s['cpu']}", "",
             "| precision | dropout | s/step | first loss |", "| --- | --- | ---: | ---: |",
             *[f"| {r['precision']} | {r['dropout']} | {r['s_per_step']:.2f} | {r['first_loss']:.4f} |" for r in s["rows"]], "",
             *[f"- {k}: {v:.2f}" for k, v in s["ratio"].items()], f"- `precision=\"auto\"` takes {s['auto']} here"]
    text = "\n".join(lines)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "speed_rerank.json", {"throughput": t, "depth": d, "train_step": s})
    (args.output / "speed_rerank.md").write_text(text + "\n", encoding="utf-8")
    return 0
