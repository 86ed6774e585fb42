"""Learned gate study: does weighing the reranker per (query, document) beat the pipeline's one global weight?

The rerank stage fuses ``(1 - w) z_in + w z_re`` over its top ``D`` candidates (z-scores within the query of the
incoming score and of the reranker's), with one weight ``w`` chosen on held-out training queries. A gate makes
the weight a function of the pair, ``g = sigmoid(b + W.x)`` (the seed article's ``gate = sigmoid(W_g.[q; d])``):

- ``embedding``: ``x = [q; d]``, the dense stage's query vector and the document's stored vector;
- ``score``: ``x = [z_in, z_re, abs(z_in - z_re), rank / D]``, four numbers the stage already has.

``b`` is held at the global weight (``W = 0`` *is* the pipeline's fusion) and ``W`` is fitted, from zero, by
listwise softmax cross-entropy over the query's top ``D`` (the judged positives as targets), inputs standardised,
with an L2 penalty whose strength is chosen by an inner cross-validation: any difference is the per-pair part's. The comparison is an outer k-fold cross-validation over the
queries a saved pipeline held out of its adapters' training (the only queries its weights may be chosen on):
in each fold the global weight is fitted again (``fit_weight``) and each gate is fitted, on the same training
folds; every query is scored once, out of fold. Output: a table, ``gate.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.data import load_dataset
from retrieval.evaluation import evaluate, paired_ttest
from retrieval.pipeline.folder import load_pipeline
from retrieval.stages.fusion import fit_weight, zscore
from retrieval.types import Qrels, Queries, Ranking
from retrieval.util import write_json

from .cutoffs import tuning_queries
from .report import md_table

GATES = ("embedding", "score")
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
METRIC = "nDCG@10"


@dataclass
class Pairs:
    """One query's top ``D`` candidates: incoming and reranker z-scores, judgements, gate inputs."""

    qid: str
    docs: list[str]
    z_in: np.ndarray
    z_re: np.ndarray
    labels: np.ndarray
    inputs: dict[str, np.ndarray]


def collect(pipe, queries: Queries, qrels: Qrels) -> tuple[list[Pairs], int]:
    """Run BM25 >> Dense on ``queries``, score the rerank stage's top ``D`` with its reranker, and gather each
    gate's inputs. Returns (one ``Pairs`` per query, ``D``)."""
    if len(pipe.stages) != 3 or type(pipe.stages[2]).__name__ != "Rerank":
        raise ValueError(f"the gate study takes a BM25 >> Dense >> Rerank pipeline, got {[s.name for s in pipe.stages]}")
    bm25, dense, rerank = pipe.stages
    index = dense.index
    if not hasattr(index, "vectors_of"):
        raise ValueError(f"the embedding gate reads the documents' stored vectors, which a {type(index).__name__} "
                         f"does not expose; save the pipeline with one shard (--shards 1)")
    depth = rerank.k
    candidates = dense.search(queries, bm25.search(queries))
    alone = rerank.scores(queries, candidates, depth)
    qids = list(queries)
    query_vectors = dense.encoder.encode_queries([queries[q] for q in qids])
    out = []
    for qid, qv in zip(qids, query_vectors):
        top = candidates.ranked(qid)[:depth]
        docs, doc_vectors = index.vectors_of([d for d, _ in top])
        if len(docs) != len(top):
            raise ValueError(f"query {qid!r}: {len(top) - len(docs)} candidate(s) are not in the dense index")
        z_in = zscore([s for _, s in top])
        z_re = zscore([alone.scores[qid][d] for d in docs])
        labels = np.array([float(qrels.get(qid, {}).get(d, 0) > 0) for d in docs])
        rank = np.arange(len(docs), dtype=np.float64) / depth
        out.append(Pairs(qid, docs, z_in, z_re, labels, {
            "embedding": np.hstack([np.repeat(qv[None, :], len(docs), axis=0), doc_vectors]).astype(np.float64),
            "score": np.stack([z_in, z_re, np.abs(z_in - z_re), rank], axis=1),
        }))
    return out, depth


def per_query(data: Sequence[Pairs], gates: Sequence[np.ndarray], qrels: Qrels) -> dict[str, float]:
    """nDCG@10 of each query when its pairs are fused with weights ``gates[i]`` (one per pair, or a scalar)."""
    fused = {p.qid: dict(zip(p.docs, ((1 - g) * p.z_in + g * p.z_re).tolist())) for p, g in zip(data, gates)}
    ev = evaluate(Ranking(fused), {p.qid: qrels[p.qid] for p in data}, [METRIC])
    return {q: r[METRIC] for q, r in ev.per_query.items()}


def fit_global(data: Sequence[Pairs], qrels: Qrels) -> float:
    """The global weight of the reranker, chosen as the pipeline chooses it (``fit_weight``)."""
    first = Ranking({p.qid: dict(zip(p.docs, p.z_in.tolist())) for p in data})
    second = Ranking({p.qid: dict(zip(p.docs, p.z_re.tolist())) for p in data})
    fusion, _ = fit_weight(first, second, {p.qid: qrels[p.qid] for p in data})
    return float(fusion.weights[1])


class Gate:
    """``g = sigmoid(b + W.x)`` over standardised inputs: ``b`` held at the global weight's logit, ``W`` fitted by
    listwise cross-entropy with an L2 penalty."""

    def __init__(self, kind: str, l2: float, weight: float, steps: int = 300, lr: float = 0.05, seed: int = 0):
        if kind not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {kind!r}")
        self.kind, self.l2, self.steps, self.lr, self.seed = kind, l2, steps, lr, seed
        w = min(max(weight, 1e-4), 1 - 1e-4)
        self.bias = float(np.log(w / (1 - w)))

    def fit(self, data: Sequence[Pairs]) -> "Gate":
        import torch

        torch.manual_seed(self.seed)
        x_all = np.concatenate([p.inputs[self.kind] for p in data])
        self.mean, self.std = x_all.mean(axis=0), x_all.std(axis=0) + 1e-8
        used = [p for p in data if p.labels.sum() > 0]  # a query with no positive in its top D gives no signal
        self.weights = np.zeros(x_all.shape[1])
        if not used:
            return self
        n = max(len(p.docs) for p in used)

        def pad(rows, fill=0.0):
            out = np.full((len(used), n) + rows[0].shape[1:], fill)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return torch.as_tensor(out, dtype=torch.float32)

        x = pad([(p.inputs[self.kind] - self.mean) / self.std for p in used])
        z_in, z_re, y = pad([p.z_in for p in used]), pad([p.z_re for p in used]), pad([p.labels for p in used])
        mask = pad([np.ones(len(p.docs)) for p in used]) > 0
        w = torch.zeros(x.shape[-1], requires_grad=True)
        b = torch.tensor(self.bias)
        opt = torch.optim.Adam([w], lr=self.lr)
        target = y / y.sum(dim=1, keepdim=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tensors this small only lose to threads (waits on a busy machine)
        try:
            for _ in range(self.steps):
                g = torch.sigmoid(b + x @ w)
                s = ((1 - g) * z_in + g * z_re).masked_fill(~mask, -1e9)
                loss = -(target * torch.log_softmax(s, dim=1)).sum(dim=1).mean() + self.l2 * (w ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            torch.set_num_threads(threads)
        self.weights = w.detach().numpy().astype(np.float64)
        return self

    def __call__(self, p: Pairs) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.bias + ((p.inputs[self.kind] - self.mean) / self.std) @ self.weights)))


def folds(n: int, k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``k`` seeded (training indices, held-out indices) splits of ``range(n)``; every index is held out once."""
    if not 2 <= k <= n:
        raise ValueError(f"cross-validation needs 2 <= folds <= queries, got {k} folds for {n} queries")
    order = np.random.default_rng(seed).permutation(n)
    out = []
    for held in np.array_split(order, k):
        held_set = set(held.tolist())
        out.append(([i for i in range(n) if i not in held_set], sorted(held_set)))
    return out


def fit_gate(kind: str, data: list[Pairs], qrels: Qrels, weight: float, inner_folds: int = 3,
             seed: int = 0) -> tuple[Gate, float, dict]:
    """A gate around the global ``weight`` fitted on ``data``, its L2 strength chosen by an inner cross-validation
    (ties: the stronger)."""
    scores = {}
    if len(data) < 2:  # nothing to cross-validate on: the strongest penalty
        return Gate(kind, L2_GRID[-1], weight, seed=seed).fit(data), L2_GRID[-1], scores
    for l2 in L2_GRID:
        oof: dict[str, float] = {}
        for train_i, held in folds(len(data), min(inner_folds, len(data)), seed + 1):
            train = [data[i] for i in train_i]
            gate = Gate(kind, l2, weight, seed=seed).fit(train)
            test = [data[i] for i in held]
            oof.update(per_query(test, [gate(p) for p in test], qrels))
        scores[l2] = float(np.mean(list(oof.values())))
    best = max(L2_GRID, key=lambda l2: (round(scores[l2], 10), l2))
    return Gate(kind, best, weight, seed=seed).fit(data), best, scores


def study(data: list[Pairs], qrels: Qrels, k: int = 5, seed: int = 0, gates: Sequence[str] = GATES) -> dict:
    """Outer ``k``-fold cross-validation: out-of-fold nDCG@10 of the global weight and of each gate."""
    oof: dict[str, dict[str, float]] = {"global": {}, **{g: {} for g in gates}}
    per_fold = []
    for train_i, held in tqdm(folds(len(data), k, seed), desc="gate study (outer folds)", unit="fold"):
        train = [data[i] for i in train_i]
        test = [data[i] for i in held]
        weight = fit_global(train, qrels)
        oof["global"].update(per_query(test, [weight] * len(test), qrels))
        fold = {"queries": len(test), "global_weight": weight}
        for kind in gates:
            gate, l2, inner = fit_gate(kind, train, qrels, weight, seed=seed)
            values = [gate(p) for p in test]
            oof[kind].update(per_query(test, values, qrels))
            fold[kind] = {"l2": l2, "inner": inner, "mean_gate": float(np.mean(np.concatenate(values))),
                          "gate_spread": float(np.std(np.concatenate(values)))}
        per_fold.append(fold)
    qids = [p.qid for p in data]
    base = [oof["global"][q] for q in qids]
    rows = []
    for name, scores in oof.items():
        values = [scores[q] for q in qids]
        t, pv = paired_ttest(values, base)
        rows.append({"fusion": name, METRIC: float(np.mean(values)), "delta": float(np.mean(values) - np.mean(base)),
                     "t": t, "p_value": pv, "wins": int(sum(a > b for a, b in zip(values, base))),
                     "losses": int(sum(a < b for a, b in zip(values, base)))})
    return {"queries": len(data), "folds": k, "seed": seed, "rows": rows, "per_fold": per_fold,
            "per_query": oof, "l2_grid": list(L2_GRID)}


def main(args) -> int:
    """``python -m benchmarks gate-study --pipeline PIPEDIR --dataset DIR``."""
    pipe, corpus, config = load_pipeline(args.pipeline, threads=args.threads)
    dataset = load_dataset(args.dataset, args.split)
    queries, qrels, held = tuning_queries(config, dataset, corpus, args.pipeline, args.split)
    print(f"gate study on {len(queries)} queries of {args.split!r}{' (held out of the adapters training)' if held else ''}")
    folds(len(queries), args.folds, args.seed)  # a fold count that cannot work is refused before any scoring
    data, depth = collect(pipe, queries, qrels)
    result = study(data, qrels, args.folds, args.seed)
    result.update(depth=depth, split=args.split, pipeline=str(args.pipeline))
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "gate.json", result)
    names = {"global": "one global weight (as the pipeline)", "embedding": "gate on [q; d]",
             "score": "gate on [z_in, z_re, abs(z_in - z_re), rank/D]"}
    table = md_table(["fusion", f"{METRIC} out of fold", "vs global", "p (paired t)", "wins / losses"],
                     [[names[r["fusion"]], r[METRIC], r["delta"], r["p_value"], f"{r['wins']} / {r['losses']}"]
                      for r in result["rows"]])
    folds_text = "; ".join(f"w={f['global_weight']:.2f}, " + ", ".join(f"{g} L2 {f[g]['l2']:g} (gate {f[g]['mean_gate']:.2f}"
                                                                         f" ± {f[g]['gate_spread']:.2f})" for g in GATES)
                           for f in result["per_fold"])
    text = [f"{len(data)} queries, rerank depth {depth}, {args.folds}-fold cross-validation (seed {args.seed})", "",
            table, "", f"per fold: {folds_text}"]
    (args.output / "gate.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {args.output}/gate.json, gate.md")
    return 0
