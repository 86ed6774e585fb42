"""The Stage protocol, input checks at stage boundaries, and pipelines composed with ``>>``."""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Protocol, runtime_checkable

from .types import Queries, Ranking, StageTrace


@runtime_checkable
class Stage(Protocol):
    name: str
    k: int | None

    def search(self, queries: Queries, candidates: Ranking | None = None, k: int | None = None) -> Ranking: ...


def as_queries(queries: Queries | Mapping[str, str] | Iterable[tuple[str, str]]) -> Queries:
    """Accept a Queries object, a dict or (qid, text) pairs; reject anything else with a clear message."""
    if isinstance(queries, Queries):
        return queries
    if isinstance(queries, str):
        raise TypeError("search takes many queries ({qid: text}); for a single query string use search_one(text)")
    try:
        return Queries(queries)
    except (TypeError, ValueError) as e:
        raise TypeError(f"queries must be a mapping {{qid: text}} of strings: {e}") from None


def check_k(k: int | None, name: str) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k must be a positive integer, got {k!r}")
    return k


def check_candidates(candidates: Ranking | None, queries: Queries, name: str) -> Ranking | None:
    if candidates is None:
        return None
    if not isinstance(candidates, Ranking):
        raise TypeError(f"{name}: candidates must be a Ranking, got {type(candidates).__name__}")
    extra = [q for q in candidates.scores if q not in queries]
    if extra:
        raise ValueError(
            f"{name}: candidates hold {len(extra)} query id(s) that are not among the queries "
            f"(e.g. {extra[0]!r}); pass the same queries to every stage"
        )
    return candidates


class StageBase:
    """Shared behaviour of the concrete stages: ``>>`` composition and ``search_one``."""

    name: str = "stage"
    k: int | None = None

    def __rshift__(self, other: Stage) -> "Pipeline":
        return Pipeline([self, other])

    def search_one(self, query: str, k: int | None = None) -> "Hits":
        """One query string -> its ranked (doc_id, score) list; ``.trace`` holds each stage's time and counts."""
        if not isinstance(query, str):
            raise TypeError(f"search_one takes a query string, got {type(query).__name__}")
        ranking = self.search(Queries({"q": query}), k=k)  # type: ignore[attr-defined]
        return Hits(ranking.ranked("q"), ranking.trace)


class Hits(list):
    """A ranked list of (doc_id, score) from ``search_one``, with the per-stage trace of the call."""

    def __init__(self, hits, trace=None):
        super().__init__(hits)
        self.trace: list[StageTrace] = list(trace or [])


class Pipeline(StageBase):
    """Stages run in order; each receives the previous stage's ranking as its candidates.

    A pipeline is itself a stage, so pipelines nest and compose with ``>>``.
    """

    def __init__(self, stages: Iterable[Stage], name: str | None = None):
        flat: list[Stage] = []
        for stage in stages:
            if isinstance(stage, Pipeline):
                flat.extend(stage.stages)
            elif isinstance(stage, Stage):
                flat.append(stage)
            else:
                raise TypeError(f"{type(stage).__name__} is not a stage: it needs a name, a k and search()")
        if not flat:
            raise ValueError("a pipeline needs at least one stage")
        names = [s.name for s in flat]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique within a pipeline, got {names}")
        self.stages = flat
        self.name = name or ">>".join(names)

    @property
    def k(self) -> int | None:  # type: ignore[override]
        return self.stages[-1].k

    def __rshift__(self, other: Stage) -> "Pipeline":
        return Pipeline([*self.stages, other])

    def __repr__(self) -> str:
        return " >> ".join(f"{s.name}(k={s.k})" for s in self.stages)

    def search(
        self,
        queries: Queries | Mapping[str, str],
        candidates: Ranking | None = None,
        k: int | None = None,
        keep_stages: bool = False,
    ) -> Ranking:
        """Run every stage at its own depth and return the final ranking, cut to its top ``k`` when given:
        ``k`` never changes what a stage does (a reranker's depth stays the depth it was built with), so the
        top 3 at ``k=3`` are the first 3 at ``k=10``. To change a stage's depth, set that stage's ``k``."""
        queries = as_queries(queries)
        k = check_k(k, self.name)
        candidates = check_candidates(candidates, queries, self.name)
        traces: list[StageTrace] = []
        per_stage: dict[str, Ranking] = {}
        for stage in self.stages:
            n_in = candidates.num_candidates() if candidates is not None else 0
            t0 = time.perf_counter()
            result = stage.search(queries, candidates)
            seconds = time.perf_counter() - t0
            traces.append(StageTrace(stage.name, stage.k, seconds, len(queries), n_in, result.num_candidates()))
            if keep_stages:
                per_stage[stage.name] = Ranking(result.scores)
                for part, ranking in result.stages.items():  # a stage's own parts, e.g. a reranker before fusion
                    per_stage[f"{stage.name}/{part}"] = ranking
            candidates = result
        assert candidates is not None
        final = candidates.top_k(k) if k else candidates
        return Ranking(final.scores, trace=traces, stages=per_stage)
