"""BM25 first-pass retrieval: Lucene through Pyserini (default) or rank-bm25 (no Java).

An index folder holds ``bm25_config.json`` (backend, k1, b, corpus fingerprint, build time, analyzer)
beside the engine's own files. Documents are indexed as ``title + " " + text``, as in Pyserini's
BEIR "flat" condition. ``fit`` tunes k1 and b by grid search and saves them with the index.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..stage import StageBase, as_queries, check_candidates, check_k
from ..types import Corpus, Document, Qrels, Queries, Ranking
from ..util import atomic_dir, default_cache_dir, library_version, read_json, write_json

CONFIG_NAME = "bm25_config.json"
BACKENDS = ("lucene", "rank_bm25")
DEFAULT_K1_GRID = (0.6, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0)
DEFAULT_B_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9)

# Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), used by the Java-free analyzer
# so that both backends drop the same words.
_STOP = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)


def _threads(threads: int | None) -> int:
    return max(1, threads or os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------- lucene
class _Lucene:
    def __init__(self, path: Path, threads: int):
        from ..java import start_jvm

        start_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self._cls = LuceneSearcher
        self.path = path / "lucene"
        self.threads = threads
        self._searchers: dict[tuple[float, float], object] = {}
        self._lock = threading.Lock()

    def _searcher(self, k1: float, b: float):
        key = (float(k1), float(b))
        s = self._searchers.get(key)
        if s is None:
            with self._lock:
                s = self._searchers.get(key)
                if s is None:
                    if len(self._searchers) >= 4:  # fit tries many settings: keep a few searchers open
                        oldest = next(iter(self._searchers))
                        self._searchers.pop(oldest).close()
                    s = self._cls(str(self.path))
                    s.set_bm25(key[0], key[1])
                    self._searchers[key] = s
        return s

    @staticmethod
    def build(corpus: Corpus, out: Path, threads: int, store_raw: bool = False) -> dict:
        """Index with Anserini's IndexCollection (JsonCollection, contents = title + " " + text).

        ``store_raw`` also stores the raw JSON and document vectors, as Pyserini's prebuilt BEIR indexes do;
        it is off by default because loading stored fields makes every hit 2-3x slower to return, and
        document text comes from the corpus here.
        """
        from ..java import start_jvm

        start_jvm()
        from jnius import autoclass

        docs_dir = out / "_json"
        docs_dir.mkdir()
        per_file = max(1, -(-len(corpus) // threads))  # one file per thread, for parallel indexing
        ids = list(corpus)
        for part, start in enumerate(range(0, len(ids), per_file)):
            with open(docs_dir / f"docs-{part:03d}.jsonl", "w", encoding="utf-8") as f:
                for doc_id in ids[start : start + per_file]:
                    f.write(json.dumps({"id": doc_id, "contents": corpus[doc_id].contents}, ensure_ascii=False))
                    f.write("\n")
        args = [
            "-collection", "JsonCollection", "-input", str(docs_dir), "-index", str(out / "lucene"),
            "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads),
            "-storePositions", "-quiet",
        ]
        if store_raw:
            args[-1:-1] = ["-storeDocvectors", "-storeRaw"]
        autoclass("io.anserini.index.IndexCollection").main(args)
        for p in docs_dir.iterdir():
            p.unlink()
        docs_dir.rmdir()
        lock = out / "lucene" / "write.lock"
        if lock.exists():
            lock.unlink()
        return {"analyzer": "Anserini default English (Porter, Lucene stop words)", "store_raw": store_raw}

    def _open_writer(self):
        """Lucene's IndexWriter on the index, with the analyzer and field options IndexCollection used."""
        if getattr(self, "_writer", None) is None:
            from jnius import autoclass

            config = autoclass("org.apache.lucene.index.IndexWriterConfig")(
                autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance())
            config.setOpenMode(autoclass("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
            directory = autoclass("org.apache.lucene.store.FSDirectory").open(
                autoclass("java.nio.file.Paths").get(str(self.path)))
            args = autoclass("io.anserini.index.IndexCollection$Args")()
            args.storePositions = True  # as build() indexes: the field options must match
            self._writer = autoclass("org.apache.lucene.index.IndexWriter")(directory, config)
            self._generator = autoclass("io.anserini.index.generator.DefaultLuceneDocumentGenerator")(args)
            self._json = autoclass("com.fasterxml.jackson.databind.ObjectMapper")()
            self._jdoc = autoclass("io.anserini.collection.JsonCollection$Document")
            self._term = autoclass("org.apache.lucene.index.Term")
            self._term_query = autoclass("org.apache.lucene.search.TermQuery")
        return self._writer

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[str]) -> None:
        """Add or replace (id, contents) documents and delete ids, then commit and reopen the searchers."""
        with self._lock:
            writer = self._open_writer()
            for doc_id in delete:
                writer.deleteDocuments(self._term_query(self._term("id", doc_id)))
            for doc_id, contents in add:
                node = self._json.readTree(json.dumps({"id": doc_id, "contents": contents}))
                writer.updateDocument(self._term("id", doc_id), self._generator.createDocument(self._jdoc(node)))
            writer.commit()  # durable and visible to readers opened from now on
            old, self._searchers = self._searchers, {}
        for searcher in old.values():
            searcher.close()

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_writer", None) is not None:
                self._writer.close()
                self._writer = None

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        searcher = self._searcher(k1, b)
        if len(qids) == 1:
            hits = {qids[0]: searcher.search(texts[0], k=k)}
        else:
            hits = searcher.batch_search(texts, qids, k=k, threads=self.threads)
        return {qid: {h.docid: h.score for h in hits.get(qid, ())} for qid in qids}


# ------------------------------------------------------------------------------------------ rank_bm25
def analyze(text: str, stem: bool = True) -> list[str]:
    """Lower-case word tokens without Lucene's English stop words, Porter-stemmed (PyStemmer)."""
    tokens = [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]
    if stem and tokens:
        return _stemmer().stemWords(tokens)
    return tokens


_stemmers = threading.local()


def _stemmer():
    s = getattr(_stemmers, "porter", None)
    if s is None:
        try:
            import Stemmer
        except ImportError:
            raise ImportError("the rank_bm25 backend stems with PyStemmer: pip install PyStemmer") from None
        s = _stemmers.porter = Stemmer.Stemmer("porter")
    return s


class _RankBM25:
    def __init__(self, path: Path, threads: int):
        from rank_bm25 import BM25Okapi

        with open(path / "docids.txt", encoding="utf-8") as f:
            self.doc_ids = [line.rstrip("\n") for line in f]
        with open(path / "tokens.jsonl", encoding="utf-8") as f:
            tokens = [json.loads(line) for line in f]
        if len(tokens) != len(self.doc_ids):
            raise ValueError(f"{path}: tokens.jsonl and docids.txt disagree in length; rebuild the index")
        # Empty documents make rank-bm25 divide by zero in its length statistics only when all are empty.
        self.path, self.tokens, self._cls = path, tokens, BM25Okapi
        self.model = BM25Okapi(tokens)
        self._lock = threading.Lock()

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[str]) -> None:
        """Add or replace and delete documents. rank-bm25 has no incremental update: its statistics are
        recomputed from the stored token lists (no document is tokenised again), and the files rewritten."""
        with self._lock:
            rows = {d: i for i, d in enumerate(self.doc_ids)}
            gone = {rows[d] for d in delete if d in rows} | {rows[d] for d, _ in add if d in rows}
            ids = [d for i, d in enumerate(self.doc_ids) if i not in gone] + [d for d, _ in add]
            tokens = [t for i, t in enumerate(self.tokens) if i not in gone] + [analyze(c) for _, c in add]
            if not ids:
                raise ValueError("the rank_bm25 backend cannot hold an empty index; keep at least one document")
            for name, lines in (("docids.txt", ids), ("tokens.jsonl", [json.dumps(t) for t in tokens])):
                tmp = self.path / f"{name}.tmp-update"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(line + "\n" for line in lines)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path / name)
            self.doc_ids, self.tokens, self.model = ids, tokens, self._cls(tokens)

    def close(self) -> None:
        pass

    @staticmethod
    def build(corpus: Corpus, out: Path, threads: int, store_raw: bool = False) -> dict:
        with open(out / "docids.txt", "w", encoding="utf-8") as ids, open(out / "tokens.jsonl", "w", encoding="utf-8") as tok:
            for doc_id in tqdm(corpus, desc="tokenizing", unit="doc", disable=len(corpus) < 20000):
                ids.write(doc_id + "\n")
                tok.write(json.dumps(analyze(corpus[doc_id].contents)) + "\n")
        return {"analyzer": "word tokens, lower case, Lucene English stop words, Porter (PyStemmer)"}

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:  # k1 and b are attributes of the shared model
            self.model.k1, self.model.b = k1, b
            for qid, text in zip(qids, texts):
                tokens = analyze(text)
                if not tokens:
                    out[qid] = {}
                    continue
                scores = self.model.get_scores(tokens)
                n = min(k, len(scores))
                top = np.argpartition(-scores, n - 1)[:n]
                out[qid] = {self.doc_ids[i]: float(scores[i]) for i in top if scores[i] > 0}
        return out


_ENGINES = {"lucene": _Lucene, "rank_bm25": _RankBM25}


# ------------------------------------------------------------------------------------------- the stage
@dataclass
class FitResult:
    """What ``BM25.fit`` tried and chose."""

    metric: str
    k1: float
    b: float
    score: float
    default_score: float
    grid: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # the arg-max of the grid and its p-value against the start
    alpha: float = 0.05

    def to_dict(self) -> dict:
        return {"metric": self.metric, "k1": self.k1, "b": self.b, "score": self.score,
                "default_score": self.default_score, "best": self.best, "alpha": self.alpha, "grid": self.grid}


class BM25(StageBase):
    """BM25 over a persistent index folder; ``search`` returns the top ``k`` per query.

    >>> bm25 = BM25.build(corpus, "indexes/scifact")          # Lucene via Pyserini
    >>> bm25 = BM25("indexes/scifact", k=1000)                 # load it again later
    >>> ranking = bm25.search({"q1": "protein folding"})
    """

    def __init__(
        self,
        index_dir: str | os.PathLike,
        k: int = 1000,
        k1: float | None = None,
        b: float | None = None,
        threads: int | None = None,
        name: str = "bm25",
    ):
        self.index_dir = Path(index_dir)
        self.config = read_json(self.index_dir / CONFIG_NAME, "BM25 index config (build one with BM25.build)")
        backend = self.config.get("backend")
        if backend not in _ENGINES:
            raise ValueError(f"{self.index_dir}: unknown BM25 backend {backend!r} in {CONFIG_NAME}; expected one of {BACKENDS}")
        self.backend = backend
        self.k = check_k(k, name)
        self.k1 = float(self.config["k1"] if k1 is None else k1)
        self.b = float(self.config["b"] if b is None else b)
        _check_params(self.k1, self.b)
        self.name = name
        self.threads = _threads(threads)
        self._engine = _ENGINES[backend](self.index_dir, self.threads)

    def __repr__(self) -> str:
        return f"BM25({str(self.index_dir)!r}, backend={self.backend!r}, k={self.k}, k1={self.k1}, b={self.b})"

    @property
    def corpus_fingerprint(self) -> str:
        return self.config["corpus_fingerprint"]

    @property
    def build_seconds(self) -> float:
        return float(self.config.get("build_seconds", 0.0))

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        corpus: Corpus,
        index_dir: str | os.PathLike,
        backend: str = "lucene",
        k: int = 1000,
        k1: float = 0.9,
        b: float = 0.4,
        threads: int | None = None,
        overwrite: bool = False,
        store_raw: bool = False,
    ) -> "BM25":
        """Index ``corpus`` into ``index_dir`` (written to a temporary folder, then renamed)."""
        if backend not in _ENGINES:
            raise ValueError(f"unknown BM25 backend {backend!r}; choose one of {BACKENDS}")
        if not isinstance(corpus, Corpus):
            raise TypeError(f"BM25.build takes a Corpus, got {type(corpus).__name__}")
        if len(corpus) == 0:
            raise ValueError("cannot index an empty corpus")
        _check_params(k1, b)
        threads = _threads(threads)
        t0 = time.perf_counter()
        with atomic_dir(index_dir, overwrite=overwrite) as tmp:
            info = _ENGINES[backend].build(corpus, tmp, threads, store_raw=store_raw)
            write_json(tmp / CONFIG_NAME, {
                "kind": "bm25",
                "backend": backend,
                "k1": k1,
                "b": b,
                "fitted": None,
                "contents": "title + ' ' + text",
                "num_docs": len(corpus),
                "corpus_fingerprint": corpus.fingerprint(),
                "build_seconds": time.perf_counter() - t0,
                "threads": threads,
                "library_version": library_version(),
                **info,
            })
        return cls(index_dir, k=k, threads=threads)

    @classmethod
    def from_corpus(
        cls,
        corpus: Corpus,
        backend: str = "lucene",
        cache_dir: str | os.PathLike | None = None,
        k: int = 1000,
        threads: int | None = None,
        **params,
    ) -> tuple["BM25", bool]:
        """Load the cached index for this exact corpus, or build it. Returns (stage, built_now)."""
        root = Path(cache_dir) if cache_dir else default_cache_dir() / "bm25"
        path = root / f"{backend}-{corpus.fingerprint()[:16]}"
        if (path / CONFIG_NAME).is_file():
            stage = cls(path, k=k, threads=threads, **params)
            if stage.corpus_fingerprint != corpus.fingerprint():
                raise ValueError(f"{path}: cached index was built from another corpus; delete the folder")
            return stage, False
        built = cls.build(corpus, path, backend=backend, k=k, threads=threads, overwrite=False)
        return (cls(path, k=k, threads=threads, **params) if params else built), True

    # ------------------------------------------------------------------ searching
    def search(
        self,
        queries: Queries,
        candidates: Ranking | None = None,
        k: int | None = None,
    ) -> Ranking:
        queries = as_queries(queries)
        k = check_k(k, self.name) or self.k
        if check_candidates(candidates, queries, self.name) is not None:
            raise ValueError(
                f"{self.name}: BM25 is a first-stage retriever and takes no candidates; put it first in the pipeline"
            )
        if len(queries) == 0:
            return Ranking({})
        qids = list(queries)
        return Ranking(self._engine.search(qids, [queries[q] for q in qids], k, self.k1, self.b))

    # ------------------------------------------------------------------ updating
    def update(self, add: Sequence[Document] = (), delete: Sequence[str] = ()) -> None:
        """Add or replace ``add`` and delete the ids in ``delete``, in place, without rebuilding the index.

        Lucene: documents go through Lucene's IndexWriter with the analyzer and field options of the build
        (scores equal those of an index built from scratch over the same documents, until deletions, which
        Lucene's statistics count until segments merge), then a commit. Searches of this index must not run
        while it updates (the search service holds a lock for that). The config's corpus checksum still
        names the corpus the index was built from.
        """
        for doc in add:
            if not isinstance(doc, Document):
                raise TypeError(f"{self.name}: update takes Document objects, got {type(doc).__name__}")
        self._engine.update([(d.id, d.contents) for d in add], [str(i) for i in delete])

    def close(self) -> None:
        """Release the index writer (and Lucene's write lock), if ``update`` opened one."""
        self._engine.close()

    # ------------------------------------------------------------------ tuning
    def fit(
        self,
        queries: Queries,
        qrels: Qrels,
        k1_grid: Sequence[float] = DEFAULT_K1_GRID,
        b_grid: Sequence[float] = DEFAULT_B_GRID,
        metric: str = "nDCG@10",
        depth: int | None = None,
        alpha: float = 0.05,
        save: bool = True,
    ) -> FitResult:
        """Grid-search k1 and b on ``queries``/``qrels`` (a training split) for the best mean ``metric``.

        The current values stay unless the best setting beats them significantly on these queries
        (paired t-test over per-query scores, p < ``alpha``): BM25's surface is flat near its usual
        values, and a gain within the noise of the training queries does not carry to new ones.
        ``alpha=1.0`` takes the plain arg-max. With ``save`` the result is written to the index's config.
        """
        from scipy.stats import ttest_rel

        from benchmarks.metrics import evaluate  # depends only on retrieval.types and ir-measures

        queries = as_queries(queries)
        judged = queries.subset(q for q in queries if q in qrels)
        if len(judged) == 0:
            raise ValueError("fit needs queries that have judgements in qrels; none of the given queries do")
        if depth is None:
            cut = re.search(r"@(\d+)", metric)
            depth = max(100, int(cut.group(1))) if cut else 1000
        start = (self.k1, self.b)
        pairs = [start] + [(k1, b) for k1 in k1_grid for b in b_grid if (k1, b) != start]
        for k1, b in pairs:
            _check_params(k1, b)
        qids = list(judged)
        texts = [judged[q] for q in qids]
        sub_qrels = {q: qrels[q] for q in qids}
        grid, per_query = [], []
        for k1, b in tqdm(pairs, desc=f"fit bm25 ({len(qids)} queries)", unit="setting"):
            ev = evaluate(Ranking(self._engine.search(qids, texts, depth, k1, b)), sub_qrels, [metric])
            grid.append({"k1": k1, "b": b, metric: ev.aggregate[metric]})
            per_query.append([ev.per_query[q][metric] for q in qids])
        best_i = max(range(len(grid)), key=lambda i: grid[i][metric])  # first best wins: the start on ties
        p_value = 1.0
        if best_i != 0:
            p_value = float(ttest_rel(per_query[best_i], per_query[0]).pvalue)
        chosen = grid[best_i] if best_i != 0 and p_value < alpha else grid[0]
        result = FitResult(metric, chosen["k1"], chosen["b"], chosen[metric], grid[0][metric], grid,
                           best={**grid[best_i], "p_value": p_value}, alpha=alpha)
        self.k1, self.b = float(chosen["k1"]), float(chosen["b"])
        if save:
            self.config.update(k1=self.k1, b=self.b, fitted={
                "metric": metric, "queries": len(qids), "score": chosen[metric], "start": list(start),
                "start_score": grid[0][metric], "best": result.best, "alpha": alpha,
            })
            write_json(self.index_dir / CONFIG_NAME, self.config)
        return result


def _check_params(k1: float, b: float) -> None:
    if not (isinstance(k1, (int, float)) and k1 >= 0):
        raise ValueError(f"BM25 k1 must be a number >= 0, got {k1!r}")
    if not (isinstance(b, (int, float)) and 0 <= b <= 1):
        raise ValueError(f"BM25 b must be a number between 0 and 1, got {b!r}")
