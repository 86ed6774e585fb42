"""A FAISS vector index with string document ids, stored vectors, and a self-describing folder.

One ``factory`` string chooses the index: ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF1024,PQ32"``
(FAISS's own ``index_factory`` syntax). Scores are inner products of L2-normalised vectors (cosine).

Folder layout: ``index.faiss`` (CPU index), ``docids.txt`` (row -> string id), ``vectors.npy`` (the
exact float32 vectors, for rescoring candidates without re-encoding; left out with ``exact_vectors=False``, when
candidates are rescored from the index's own codes: the index is then only as large as its codes, e.g. 384 bytes a
document for ``SQ8`` of 384 dimensions instead of 1,536 + the codes), ``index_config.json`` (factory,
metric, dimension, search parameters, the encoder and adapter it was built with, sha256 checksums).
Loading against another encoder, or a damaged folder, is an error. FAISS row numbers never leave here.
"""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..util import DamagedArtefact, atomic_dir, check_seal, file_checksums, library_version, read_json, sealed, verify_files, write_json

CONFIG_NAME = "index_config.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "the dense stage needs FAISS: pip install 'retrieval[cpu]' (faiss-cpu) or 'retrieval[gpu]' (faiss-gpu); "
            "never both"
        ) from None
    return faiss


class IndexMismatch(ValueError):
    """The index was built with another encoder or adapter than the one given."""


class FaissIndex:
    """ANN search over document vectors, keyed by string ids.

    >>> idx = FaissIndex.build(vectors, doc_ids, factory="HNSW32", encoder_fingerprint=enc.fingerprint())
    >>> hits = idx.search(query_vectors, k=100)        # [[(doc_id, score), ...], ...]
    """

    def __init__(self, factory: str, dim: int, encoder_fingerprint: str | None = None,
                 encoder_info: dict | None = None, ef_construction: int = 200, ef_search: int = 128,
                 nprobe: int = 16, exact_vectors: bool = True):
        faiss = _faiss()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.factory = factory.strip()
        self.dim = dim
        inner = self.check_factory(self.factory, dim)
        self.kind = "hnsw" if "HNSW" in self.factory.upper() else ("ivf" if "IVF" in self.factory.upper() else "flat")
        if self.kind == "hnsw":
            faiss.downcast_index(inner).hnsw.efConstruction = ef_construction
        # IVF takes ids and deletes natively; IndexIDMap2 over IVF would mis-map ids after a delete.
        self.index = inner if self.kind == "ivf" else faiss.IndexIDMap2(inner)
        self.encoder_fingerprint = encoder_fingerprint
        self.encoder_info = encoder_info or {}
        self.params = {"ef_construction": ef_construction, "ef_search": ef_search, "nprobe": nprobe}
        self.ids: list[str | None] = []  # row -> id (None for deleted rows)
        self.rows: dict[str, int] = {}
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.exact_vectors = bool(exact_vectors)
        self.build_seconds = 0.0
        self._gpu = None
        self._direct_map()

    def _direct_map(self) -> None:
        """An IVF index finds a stored vector by id only through a direct map (for rescoring from codes)."""
        if not self.exact_vectors and self.kind == "ivf":
            faiss = _faiss()
            faiss.extract_index_ivf(self.index).set_direct_map_type(faiss.DirectMap.Hashtable)

    @staticmethod
    def check_factory(factory: str, dim: int, vectors: int | None = None):
        """The FAISS index ``factory`` builds for ``dim``-d vectors; ``ValueError`` (with examples) for a string
        FAISS refuses, or for an IVF index with more lists than ``vectors`` to train them on."""
        faiss = _faiss()
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"a FAISS factory string is needed, e.g. Flat, HNSW32, IVF1024,Flat; got {factory!r}")
        try:
            index = faiss.index_factory(dim, factory.strip(), faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build factory string {factory!r} for {dim}-d vectors: "
                             f"{str(e).strip().splitlines()[-1]}; examples: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ32") from None
        lists = re.search(r"IVF(\d+)", factory)
        if lists and vectors is not None and int(lists.group(1)) > vectors:
            raise ValueError(f"{factory!r} has {lists.group(1)} lists but only {vectors} vectors to train them on; IVF "
                             f"needs at least as many vectors as lists (ideally 39x): e.g. "
                             f"IVF{max(1, vectors // 39)},Flat, or Flat")
        return index

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, ids: Sequence[str], factory: str = "Flat", train_sample: int = 100_000,
              seed: int = 0, **kwargs) -> "FaissIndex":
        vectors = _check_vectors(vectors)
        idx = cls(factory, vectors.shape[1], **kwargs)
        t0 = time.perf_counter()
        if not idx.index.is_trained:
            idx.train(vectors, sample=train_sample, seed=seed)
        idx.add(vectors, ids)
        idx.build_seconds = time.perf_counter() - t0
        return idx

    def train(self, vectors: np.ndarray, sample: int = 100_000, seed: int = 0) -> None:
        """Train IVF/PQ quantisers on a random sample of the vectors."""
        vectors = _check_vectors(vectors, self.dim)
        if len(vectors) > sample:
            rng = np.random.default_rng(seed)
            vectors = vectors[np.sort(rng.choice(len(vectors), size=sample, replace=False))]
        try:
            self.index.train(vectors)
        except RuntimeError as e:
            raise ValueError(f"training {self.factory!r} on {len(vectors)} vectors failed: {str(e).splitlines()[-1]} "
                             f"(IVF needs at least as many vectors as lists, ideally 39x)") from None

    def add(self, vectors: np.ndarray, ids: Sequence[str]) -> None:
        """Add documents; an id already present is replaced (its old vector removed where FAISS can)."""
        vectors = _check_vectors(vectors, self.dim)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("ids given to add() must be unique")
        if not self.index.is_trained:
            raise ValueError(f"{self.factory!r} must be trained before adding: use FaissIndex.build or train()")
        present = [i for i in ids if i in self.rows]
        if present:
            self.remove(present)
        start = len(self.ids)
        rows = np.arange(start, start + len(ids), dtype=np.int64)
        self.index.add_with_ids(vectors, rows)
        if self.exact_vectors:
            self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors.copy()
        self.ids.extend(ids)
        self.rows.update(zip(ids, range(start, start + len(ids))))
        self._gpu = None

    def remove(self, ids: Sequence[str]) -> int:
        """Delete documents by id. HNSW cannot delete in FAISS: that raises, naming the alternatives."""
        faiss = _faiss()
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the index, e.g. {missing[0]!r}")
        if self.kind == "hnsw":
            raise NotImplementedError(
                f"FAISS cannot delete from an HNSW index ({self.factory!r}); rebuild it without those documents, "
                f"or use a Flat or IVF index (e.g. 'IVF1024,Flat'), which support deletion")
        rows = np.array([self.rows[i] for i in ids], dtype=np.int64)
        removed = self.index.remove_ids(faiss.IDSelectorArray(rows.size, faiss.swig_ptr(rows)))
        for i in ids:
            self.ids[self.rows.pop(i)] = None
        self._gpu = None
        return int(removed)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.rows

    # ------------------------------------------------------------------ searching
    def _searcher(self):
        faiss = _faiss()
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.params["ef_search"]
        elif self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.params["nprobe"]
        if self.kind != "hnsw" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            if self._gpu is None:  # GPU copy for search; the CPU index stays the one that is saved
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
            return self._gpu
        return self.index

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        queries = _check_vectors(queries, self.dim)
        if len(self) == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        k = min(int(k), len(self))
        scores, rows = self._searcher().search(queries, k)
        out = []
        for srow, rrow in zip(scores, rows):
            out.append([(self.ids[r], float(s)) for s, r in zip(srow, rrow) if r >= 0 and self.ids[r] is not None])
        return out

    def vectors_of(self, doc_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(the ids found, their stored vectors: exact, or decoded from the index's codes); ids not in the index
        are left out."""
        rows = [self.rows[d] for d in doc_ids if d in self.rows]
        if not rows:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        stored = self.vectors[rows] if self.exact_vectors else self.index.reconstruct_batch(np.asarray(rows, np.int64))
        return [self.ids[r] for r in rows], stored

    def score(self, query: np.ndarray, doc_ids: Sequence[str]) -> dict[str, float]:
        """Exact inner products of one query with stored vectors; ids not in the index are left out."""
        found, stored = self.vectors_of(doc_ids)
        if not found:
            return {}
        # row by row (not one matrix product), so a document's score does not depend on which others are scored
        # with it: a shard scoring part of the pool gives the very scores one index gives
        values = (stored * np.asarray(query, dtype=np.float32)).sum(axis=1)
        return {d: float(v) for d, v in zip(found, values)}

    def score_batch(self, queries: np.ndarray, pools: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """``score`` for many queries at once: ``pools[i]`` are the ids to score for ``queries[i]``."""
        queries = _check_vectors(queries, self.dim)
        if len(pools) != len(queries):
            raise ValueError(f"{len(queries)} query vectors but {len(pools)} id lists")
        return [self.score(q, ids) for q, ids in zip(queries, pools)]

    def doc_ids(self) -> list[str]:
        """The ids of the documents in the index (deleted rows left out)."""
        return [d for d in self.ids if d is not None]

    def empty_copy(self) -> "FaissIndex":
        """A new, empty index with this one's settings and training (IVF centroids, PQ codebooks, PCA): shards built
        from one trained copy share their quantizer, so their scores are comparable."""
        faiss = _faiss()
        copy = FaissIndex.__new__(FaissIndex)
        copy.__dict__.update(self.__dict__)
        copy.index = faiss.clone_index(self.index)
        copy.index.reset()
        copy.ids, copy.rows, copy.params = [], {}, dict(self.params)
        copy.vectors = np.zeros((0, self.dim), dtype=np.float32)
        copy.build_seconds, copy._gpu = 0.0, None
        copy._direct_map()
        return copy

    def without_vectors(self) -> "FaissIndex":
        """This index (a copy sharing nothing) rescoring from its own codes: the exact vectors dropped."""
        copy = pickle.loads(pickle.dumps(self))
        copy.vectors, copy.exact_vectors = np.zeros((0, self.dim), dtype=np.float32), False
        copy._direct_map()
        return copy

    def nbytes(self) -> int:
        """What the index holds: its serialised FAISS index, plus the exact vectors where it keeps them."""
        return int(_faiss().serialize_index(self.index).nbytes + self.vectors.nbytes)

    def __getstate__(self) -> dict:  # picklable (to a worker process or a Ray actor): FAISS's own serialisation
        state = dict(self.__dict__, _gpu=None)
        state["index"] = _faiss().serialize_index(self.index)
        return state

    def __setstate__(self, state: dict) -> None:
        state = {"exact_vectors": True, **state}
        state["index"] = _faiss().deserialize_index(state["index"])
        self.__dict__.update(state)

    def set_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        if ef_search is not None:
            self.params["ef_search"] = int(ef_search)
        if nprobe is not None:
            self.params["nprobe"] = int(nprobe)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        faiss = _faiss()
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            with open(tmp / "docids.txt", "w", encoding="utf-8") as f:
                for doc_id in self.ids:
                    f.write(("" if doc_id is None else doc_id) + "\n")
            if self.exact_vectors:
                np.save(tmp / "vectors.npy", self.vectors)
            write_json(tmp / CONFIG_NAME, sealed({
                "kind": "faiss",
                "factory": self.factory,
                "metric": "inner_product",
                "dim": self.dim,
                "count": len(self),
                "rows": len(self.ids),
                "params": self.params,
                "exact_vectors": self.exact_vectors,
                "encoder_fingerprint": self.encoder_fingerprint,
                "encoder": self.encoder_info,
                "build_seconds": self.build_seconds,
                "checksums": file_checksums(tmp, skip=(CONFIG_NAME,)),
                "library_version": library_version(),
            }))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, encoder_fingerprint: str | None = None, verify: bool = True,
             require_seal: bool = False) -> "FaissIndex":
        """Load a saved index; with ``encoder_fingerprint``, refuse one built with another encoder. Its settings
        are checked against their seal; with ``verify``, every file against its checksum (``DamagedArtefact``).
        ``require_seal`` refuses an index saved before seals existed (a cache does: it cannot check one)."""
        faiss = _faiss()
        path = Path(path)
        config = read_json(path / CONFIG_NAME, "FAISS index config")
        if not check_seal(config, path / CONFIG_NAME, "the index's settings") and require_seal:
            raise DamagedArtefact(f"{path}: {CONFIG_NAME} has no seal (written by an older version); its settings "
                                  f"cannot be checked")
        if verify:
            verify_files(path, config["checksums"], "FAISS index folder")
        check_encoder(path, config, encoder_fingerprint)
        idx = cls.__new__(cls)
        idx.factory, idx.dim = config["factory"], int(config["dim"])
        idx.kind = "hnsw" if "HNSW" in idx.factory.upper() else ("ivf" if "IVF" in idx.factory.upper() else "flat")
        try:
            idx.index = faiss.read_index(str(path / "index.faiss"))
            idx.exact_vectors = bool(config.get("exact_vectors", True))
            idx.vectors = (np.load(path / "vectors.npy") if idx.exact_vectors
                           else np.zeros((0, idx.dim), dtype=np.float32))
            idx._direct_map()
        except (RuntimeError, ValueError, OSError) as e:
            raise DamagedArtefact(f"{path}: the index files cannot be read ({str(e).splitlines()[-1][:200]}); the "
                                  f"index is damaged or incomplete: rebuild it") from None
        idx.encoder_fingerprint = config["encoder_fingerprint"]
        idx.encoder_info = config.get("encoder", {})
        idx.params = dict(config["params"])
        with open(path / "docids.txt", encoding="utf-8") as f:
            idx.ids = [line.rstrip("\n") or None for line in f]
        idx.rows = {d: r for r, d in enumerate(idx.ids) if d is not None}
        idx.build_seconds = float(config.get("build_seconds", 0.0))
        idx._gpu = None
        if len(idx.rows) != config["count"] or idx.index.ntotal != len(idx.rows):
            raise DamagedArtefact(f"{path}: {idx.index.ntotal} vectors in FAISS, {len(idx.rows)} ids, "
                                  f"{config['count']} expected; the index is damaged, rebuild it")
        return idx


def check_encoder(path: Path, config: dict, encoder_fingerprint: str | None) -> None:
    """``IndexMismatch`` if the index whose ``config`` is at ``path`` was built with another encoder than the one
    given (None: not checked)."""
    if encoder_fingerprint is not None and config["encoder_fingerprint"] != encoder_fingerprint:
        raise IndexMismatch(
            f"{path}: built with encoder {config['encoder_fingerprint']} ({config.get('encoder')}), "
            f"but the given encoder is {encoder_fingerprint}; rebuild the index with this encoder, "
            f"or load the encoder and adapter it was built with")


def _check_vectors(vectors, dim: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array (n, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"vectors have dimension {arr.shape[1]}, the index has {dim}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinite values")
    return arr
