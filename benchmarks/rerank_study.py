"""Third-stage study: what a saved pipeline's reranker adds on the queries its weights may be chosen on, as saved or
reading another number of tokens.

For each pipeline, each ``--max-length`` (none: as saved) and each ``--passage`` (none: as saved; ``focused``: a
long document's query-focused sentences, ``rerankers.passages``), the first two stages' top ``max(depths)`` for the
pipeline's held-out training queries are scored once by its reranker. Then, per depth, the reranker alone; and
fused with the incoming score (z-scores within the query, one weight: the pipeline's own fusion) with depth and
weight chosen

- in sample, on all held-out queries: what ``python -m retrieval train`` does;
- out of fold: chosen on ``k - 1`` folds, scored on the k-th, every query once: a figure the choice has not seen.

With ``--average`` a last row scores each pair by the pipelines' rerankers together: their z-scores averaged and
z-scored again within the query, then fused like one reranker (an ensemble; the pipelines must hold out the same
queries and share their first two stages: trained with one seed).

Rows on the same queries are compared with the first row by a paired t-test. ``--report-split`` applies each row's
in-sample choice to another split (dev), reported, never chosen on. Another length is read through the same
model (its int8 export, if it has one, calibrated at the saved length). A pipeline's held-out queries that earlier
choices were made on are no longer a fair judge of the next: give later rules another seed's pipeline (its held-out
queries are others), and pool several seeds' studies row by row with ``rerank-pool``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.data import load_dataset
from retrieval.evaluation import paired_ttest
from retrieval.pipeline.folder import load_pipeline
from retrieval.stages.fusion import zscore
from retrieval.stages.rerank import check_share, lead, margin_for, unsure
from retrieval.types import Qrels, Queries, Ranking
from retrieval.util import read_json, write_json

from .cutoffs import tuning_queries
from .gate import METRIC, Pairs, fit_global, folds, per_query
from .report import md_table

DEPTHS = (10, 20, 30)


def candidate_pairs(candidates: Ranking, alone: Ranking, qrels: Qrels, depth: int) -> list[Pairs]:
    """Each query's top ``depth`` candidates: the incoming and the reranker's scores as z-scores."""
    out = []
    for qid in alone.scores:
        top = candidates.ranked(qid)[:depth]
        docs = [d for d, _ in top]
        out.append(Pairs(qid, docs, zscore([s for _, s in top]), zscore([alone.scores[qid][d] for d in docs]),
                         np.array([float(qrels.get(qid, {}).get(d, 0) > 0) for d in docs]), {}))
    return out


def mean_fused(data: Sequence[Pairs], weight: float, qrels: Qrels) -> float:
    return float(np.mean(list(per_query(data, [weight] * len(data), qrels).values())))


def choose(by_depth: dict[int, list[Pairs]], qrels: Qrels, rows: Sequence[int]) -> tuple[int, float, float]:
    """Depth and weight fitted on the queries at ``rows`` (the pipeline's ``fit_rerank``: the weight by
    ``fit_weight`` at each depth, the best depth, ties to the shallower). Returns (depth, weight, figure)."""
    best = None
    for depth in sorted(by_depth):
        data = [by_depth[depth][i] for i in rows]
        weight = fit_global(data, qrels)
        score = mean_fused(data, weight, qrels)
        if best is None or score > best[2] + 1e-12:
            best = (depth, weight, score)
    assert best is not None
    return best


def skipping(data: Sequence[Pairs], weight: float, margin: float | None) -> list[float]:
    """Each query's reranker weight under a skip margin (``Rerank.skip_margin``): ``weight`` where the reranker runs,
    0 (the incoming order) where the incoming leader leads by more than ``margin``."""
    return [weight if unsure(lead(p.z_in), margin) else 0.0 for p in data]


def choose_margin(data: Sequence[Pairs], share: float) -> float | None:
    """The skip margin fitted on these queries, as ``fit_skip`` fits it in a build."""
    return margin_for([lead(p.z_in) for p in data], share)


def out_of_fold(by_depth: dict[int, list[Pairs]], qrels: Qrels, k: int, seed: int,
                share: float = 1.0) -> tuple[dict[str, float], int]:
    """Each query's fused nDCG@10 with depth, weight (and, for a ``share`` < 1, the skip margin) chosen on the other
    folds; and how many queries the reranker ran for."""
    n = len(next(iter(by_depth.values())))
    scores: dict[str, float] = {}
    reranked = 0
    for train, held in folds(n, k, seed):
        depth, weight, _ = choose(by_depth, qrels, train)
        margin = choose_margin([by_depth[depth][i] for i in train], share)
        data = [by_depth[depth][i] for i in held]
        weights = skipping(data, weight, margin)
        reranked += sum(w > 0 for w in weights)
        scores.update(per_query(data, weights, qrels))
    return scores, reranked


def candidates_of(pipe, queries: Queries, qrels: Qrels) -> tuple[Queries, Qrels, Ranking]:
    """The first two stages' candidates for ``queries``: searched once, whatever the reranker reads."""
    first, second, _ = pipe.stages
    return queries, qrels, second.search(queries, first.search(queries))


def score_split(pipe, split: tuple[Queries, Qrels, Ranking], depths: Sequence[int]) -> dict[int, list[Pairs]]:
    """A split's candidates scored once by the reranker at the deepest depth: ``Pairs`` per depth."""
    queries, qrels, candidates = split
    alone = pipe.stages[2].scores(queries, candidates, max(depths))
    return {d: candidate_pairs(candidates, alone, qrels, d) for d in depths}


def averaged(scored: Sequence[dict[int, list[Pairs]]]) -> dict[int, list[Pairs]]:
    """Several rerankers' ``score_split`` of the same candidates as one: each pair's reranker z-scores averaged and
    z-scored again within the query, so that the fitted weight means what it means for one reranker."""
    first = scored[0]
    return {d: [Pairs(p.qid, p.docs, p.z_in, zscore(np.mean([s[d][i].z_re for s in scored], axis=0)), p.labels, {})
                for i, p in enumerate(first[d])] for d in first}


def measure(score, held: tuple[Queries, Qrels, Ranking], depths: Sequence[int], k: int, seed: int,
            report: tuple[Queries, Qrels, Ranking] | None = None, share: float = 1.0) -> dict:
    """One row: the first two stages, the reranker alone at each depth, fused in sample and out of fold; with
    ``report``, the in-sample choice applied to those queries. Splits come from ``candidates_of``; ``score(split,
    depths)`` scores one (``score_split`` of a pipeline, or ``averaged`` over several). With ``share`` < 1 the
    reranker runs only for that share of queries, those whose incoming leader leads least (the margin fitted after
    depth and weight, as a build fits it: ``PipelineSettings.rerank_share``)."""
    qrels = held[1]
    by_depth = score(held, depths)
    deepest = by_depth[max(depths)]
    first_two = per_query(deepest, [0.0] * len(deepest), qrels)  # weight 0: the incoming order
    alone = {d: mean_fused(by_depth[d], 1.0, qrels) for d in depths}
    depth, weight, _ = choose(by_depth, qrels, range(len(deepest)))
    margin = choose_margin(by_depth[depth], share)
    in_sample = float(np.mean(list(per_query(by_depth[depth], skipping(by_depth[depth], weight, margin), qrels).values())))
    oof, reranked = out_of_fold(by_depth, qrels, k, seed, share)
    qids = [p.qid for p in deepest]
    _, p = paired_ttest([oof[q] for q in qids], [first_two[q] for q in qids])
    row = {"queries": len(qids), "first_two": float(np.mean([first_two[q] for q in qids])), "alone": alone,
           "depth": depth, "weight": weight, "fused_in_sample": in_sample, "share": share, "margin": margin,
           "reranked_out_of_fold": reranked,
           "fused_out_of_fold": float(np.mean([oof[q] for q in qids])), "oof_vs_first_two_p": p,
           "per_query": {"first_two": first_two, "out_of_fold": oof}}
    if report is not None:
        r_qrels = report[1]
        r_depth = score(report, [depth])[depth]
        r_first = per_query(r_depth, [0.0] * len(r_depth), r_qrels)
        r_weights = skipping(r_depth, weight, margin)
        r_fused = per_query(r_depth, r_weights, r_qrels)
        r_qids = [p.qid for p in r_depth]
        _, rp = paired_ttest([r_fused[q] for q in r_qids], [r_first[q] for q in r_qids])
        row["report"] = {"queries": len(r_qids), "first_two": float(np.mean(list(r_first.values()))),
                         "fused": float(np.mean(list(r_fused.values()))), "vs_first_two_p": rp,
                         "alone": mean_fused(r_depth, 1.0, r_qrels), "reranked": sum(w > 0 for w in r_weights),
                         "per_query": {"first_two": r_first, "fused": r_fused}}
    return row


def set_length(reranker, max_length: int | None) -> int:
    """Make ``reranker`` read ``max_length`` tokens (query + passage); ``None`` keeps what it was saved with."""
    if max_length is None:
        return int(reranker.max_length)
    limit = int(reranker.max_positions)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 16 <= max_length <= limit:
        raise ValueError(f"--max-length must be an integer from 16 to the model's {limit} positions, got {max_length!r}")
    reranker.max_length = max_length
    return max_length


def _dig(row: dict, path: Sequence[str]):
    for key in path:
        row = row.get(key) if isinstance(row, dict) else None
    return row


def compare(rows: list[dict], path: Sequence[str], name: str) -> None:
    """Paired t-test of each row's per-query figures (at ``path``) against the first row's, where the queries
    are the same ones; stored as ``row[name]`` (None where they are not)."""
    base = _dig(rows[0], path)
    for row in rows:
        mine = _dig(row, path)
        if base is None or mine is None or set(mine) != set(base):
            row[name] = None
            continue
        qids = sorted(base)
        a, b = [mine[q] for q in qids], [base[q] for q in qids]
        row[name] = {"delta": float(np.mean(a) - np.mean(b)), "p_value": paired_ttest(a, b)[1]}


def _reads(row: dict) -> str:
    """What a row's reranker read: tokens, and of long documents which part where that is not the opening (rows of
    older studies: none); the ``--average`` row's rerankers read what each was saved with."""
    if row.get("trained_at") is None:
        return str(row["reads"])
    read, trained = row.get("passage", "first"), row.get("trained_passage", "first")
    part = "" if read == trained == "first" else f", {read} (saved {trained})"
    return f"{row['reads']} (saved {row['trained_at']}){part}"


def _reranks(row: dict) -> str:
    """Which queries a row's reranker ran for (out of fold): every one, or a share and how many."""
    share = row.get("share", 1.0)
    return "all" if share >= 1 else f"{share:g}: {row['reranked_out_of_fold']} of {row['queries']}"


def _fmt_vs(v: dict | None) -> str:
    return "-" if not v else f"{v['delta']:+.4f} (p {v['p_value']:.3f})"


def main(args) -> int:
    """``python -m benchmarks rerank-study --pipeline DIR [--pipeline DIR2] --dataset DIR [--max-length 192 256]``."""
    for share in args.share:
        check_share(share, f"--share {share:g}: a share of queries to rerank")
    dataset = load_dataset(args.dataset, args.split)
    report_ds = load_dataset(args.dataset, args.report_split) if args.report_split else None
    r_qids = [q for q in report_ds.queries if q in report_ds.qrels] if report_ds is not None else []
    lengths = args.max_length or [None]
    passages = args.passage or [None]
    if args.average and len(args.pipeline) < 2:
        raise ValueError("--average scores with several pipelines' rerankers together: give at least two --pipeline")
    rows, kept = [], []
    for path in args.pipeline:
        pipe, corpus, config = load_pipeline(path, threads=args.threads)
        if len(pipe.stages) != 3 or not hasattr(pipe.stages[2], "reranker"):
            raise ValueError(f"{path}: the rerank study takes a three-stage pipeline ending in a reranker, "
                             f"got {[s.name for s in pipe.stages]}")
        queries, qrels, held = tuning_queries(config, dataset, corpus, path, args.split)
        folds(len(queries), args.folds, args.seed)  # a fold count that cannot work is refused before any scoring
        held_split = candidates_of(pipe, queries, qrels)
        report = (candidates_of(pipe, report_ds.queries.subset(r_qids), {q: report_ds.qrels[q] for q in r_qids})
                  if report_ds is not None else None)
        ce = pipe.stages[2].reranker
        saved, saved_passage = int(ce.max_length), ce.passage
        for length, passage, share in tqdm([(n, p, s) for n in lengths for p in passages for s in args.share],
                                           desc=f"rerank study {path}", unit="row"):
            reads = set_length(ce, length)
            ce.passage = passage or saved_passage
            row = measure(lambda split, depths: score_split(pipe, split, depths), held_split, args.depths, args.folds,
                          args.seed, report, share)
            row.update(pipeline=str(path), reads=reads, trained_at=saved, held_out=held, passage=ce.passage,
                       trained_passage=saved_passage)
            rows.append(row)
        ce.max_length, ce.passage = saved, saved_passage
        if args.average:
            kept.append((path, pipe, held_split, report, held))
    if args.average:
        rows.append(average_row(kept, args))
    compare(rows, ("per_query", "out_of_fold"), "vs_first_row")
    if report_ds is not None:
        compare(rows, ("report", "per_query", "fused"), "report_vs_first_row")
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "rerank_study.json", {"split": args.split, "report_split": args.report_split,
                                                   "depths": list(args.depths), "folds": args.folds, "seed": args.seed,
                                                   "rows": rows})
    head = ["pipeline", "reads tokens", "reranks", "queries", "first two", "alone (" + "/".join(map(str, args.depths)) + ")",
            "in sample (depth, w)", "out of fold", "vs first two (p)", "vs row 1"]
    table = [[r["pipeline"], _reads(r), _reranks(r), r["queries"], r["first_two"],
              " / ".join(f"{r['alone'][d]:.4f}" for d in args.depths),
              f"{r['fused_in_sample']:.4f} ({r['depth']}, {r['weight']:.2f})", r["fused_out_of_fold"],
              f"{r['fused_out_of_fold'] - r['first_two']:+.4f} ({r['oof_vs_first_two_p']:.3f})",
              _fmt_vs(r["vs_first_row"])] for r in rows]
    text = [f"{METRIC} on {args.split!r} ({'held out of the adapters training' if rows and rows[0]['held_out'] else 'all'}"
            f" queries), {args.folds}-fold out of fold (seed {args.seed})", "", md_table(head, table)]
    if report_ds is not None:
        text += ["", f"reported on {args.report_split!r} with each row's in-sample choice (never chosen on):", "",
                 md_table(["pipeline", "reads tokens", "reranked", "queries", "first two", "alone", "fused",
                           "vs first two (p)", "vs row 1"],
                          [[r["pipeline"], r["reads"], r["report"]["reranked"], r["report"]["queries"], r["report"]["first_two"],
                            r["report"]["alone"], r["report"]["fused"],
                            f"{r['report']['fused'] - r['report']['first_two']:+.4f} ({r['report']['vs_first_two_p']:.3f})",
                            _fmt_vs(r["report_vs_first_row"])] for r in rows])]
    (args.output / "rerank_study.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {args.output}/rerank_study.json, rerank_study.md")
    return 0


def _top(split: tuple[Queries, Qrels, Ranking], depth: int) -> dict[str, list[str]]:
    return {q: [d for d, _ in split[2].ranked(q)[:depth]] for q in split[0]}


def average_row(kept: Sequence[tuple], args) -> dict:
    """The ``--average`` row: the pipelines' rerankers (as saved) scoring the first pipeline's candidates together.
    Refused unless every pipeline holds out the same queries and gives the same candidates (the same first two
    stages), so that the row differs from the others by its reranker only."""
    path0, _, held0, report0, held_out = kept[0]
    for path, _, held, report, _ in kept[1:]:
        for name, mine, theirs in (("held-out training", held, held0), (args.report_split, report, report0)):
            if mine is not None and _top(mine, max(args.depths)) != _top(theirs, max(args.depths)):
                raise ValueError(f"--average: {path} and {path0} give other candidates on their {name} queries; "
                                 f"average pipelines trained with the same seed (same held-out queries, same first "
                                 f"two stages), or drop --average")
    pipes = [k[1] for k in kept]
    row = measure(lambda split, depths: averaged([score_split(p, split, depths) for p in pipes]), held0, args.depths,
                  args.folds, args.seed, report0)
    row.update(pipeline="average of " + ", ".join(str(k[0]) for k in kept), reads="as saved", trained_at=None,
               held_out=held_out, passage="as saved", trained_passage="as saved")
    return row


def pool(studies: Sequence[dict], names: Sequence[str]) -> list[dict]:
    """Rows of several ``rerank-study`` runs pooled by position: row ``i`` of every study (e.g. one training variant,
    a study per seed) makes one pooled row, its per-query figures (out of fold, and the first two stages') joined over
    the studies, each query counted once per study (``"<study>:<query id>"``: seeds hold out overlapping queries, each
    judged by other pipelines). Each pooled row is compared with the first by a paired t-test over all of them."""
    if not studies:
        raise ValueError("rerank-pool needs at least one rerank-study output")
    if len(set(names)) < len(names):
        raise ValueError(f"rerank-pool was given a study twice: {list(names)}")
    for name, study in zip(names, studies):
        rows = study.get("rows")
        if not rows or not all(isinstance(r, dict) and isinstance(r.get("per_query"), dict)
                               and {"out_of_fold", "first_two"} <= set(r["per_query"]) for r in rows):
            raise ValueError(f"{name}: not a rerank-study output (rows with per-query figures); run python -m "
                             f"benchmarks rerank-study again to write it")
    firsts = [s["rows"][0].get("pipeline") for s in studies]
    if len(set(firsts)) < len(firsts):
        raise ValueError(f"rerank-pool: two studies judge the same pipeline ({firsts}); pool studies of other seeds")
    widths = {len(s["rows"]) for s in studies}
    if len(widths) != 1:
        raise ValueError(f"rerank-pool pools row i of every study: they must have as many rows, got "
                         f"{dict(zip(names, (len(s['rows']) for s in studies)))}")
    pooled = []
    for i in range(widths.pop()):
        rows = [s["rows"][i] for s in studies]
        oof = {f"{n}:{q}": v for n, r in zip(names, rows) for q, v in r["per_query"]["out_of_fold"].items()}
        first = {f"{n}:{q}": v for n, r in zip(names, rows) for q, v in r["per_query"]["first_two"].items()}
        pooled.append({"pipelines": [r["pipeline"] for r in rows], "queries": len(oof),
                       "first_two": float(np.mean(list(first.values()))),
                       "fused_out_of_fold": float(np.mean(list(oof.values()))),
                       "depths": [r["depth"] for r in rows], "weights": [r["weight"] for r in rows],
                       "per_query": {"first_two": first, "out_of_fold": oof}})
    compare(pooled, ("per_query", "out_of_fold"), "vs_first_row")
    return pooled


def pool_main(args) -> int:
    """``python -m benchmarks rerank-pool --study DIR DIR ...``: ``rerank-study`` outputs pooled row by row."""
    names = [str(d) for d in args.study]
    studies = [read_json(d / "rerank_study.json", "rerank-study output (give folders written by python -m benchmarks "
                                                  "rerank-study)") for d in args.study]
    rows = pool(studies, names)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "rerank_pool.json", {"studies": names, "rows": rows})
    head = ["row", "pipelines", "queries", "first two", "depth, weight per study", "out of fold", "vs first two",
            "vs row 1"]
    table = [[i + 1, ", ".join(r["pipelines"]), r["queries"], r["first_two"],
              "; ".join(f"{d}, {w:.2f}" for d, w in zip(r["depths"], r["weights"])), r["fused_out_of_fold"],
              f"{r['fused_out_of_fold'] - r['first_two']:+.4f}", _fmt_vs(r["vs_first_row"])] for i, r in enumerate(rows)]
    text = [f"{METRIC}, out of fold, pooled over {len(names)} studies ({', '.join(names)}); row i pools row i of each", "",
            md_table(head, table)]
    (args.output / "rerank_pool.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {args.output}/rerank_pool.json, rerank_pool.md")
    return 0
