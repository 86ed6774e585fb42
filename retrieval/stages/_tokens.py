"""What the Java-free BM25 engines share: every document's terms kept in the index folder (``docids.txt``,
``tokens.jsonl``), indexed from, and rebuilt from on a write (neither rank-bm25 nor bm25s updates in place).

An engine subclasses ``TokenEngine``, names the analyzer new indexes are built with (``ANALYZER``; an index is
always queried with the one it records) and says how its model is made from the term lists (``_reset``) and
searched.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..types import Corpus
from ..util import DamagedArtefact
from ._analysis import analyzer

# what indexes built before analyzers had names recorded
_LEGACY_ANALYZERS = {"word tokens, lower case, Lucene English stop words, Porter (PyStemmer)": "porter-words"}


def top_k(doc_ids: list[str], scores: np.ndarray, k: int) -> dict[str, float]:
    """The ``k`` best documents with a positive score; of equal scores at the cut, the earlier rows (as Lucene)."""
    n = min(k, len(scores))
    if n <= 0:
        return {}
    part = np.argpartition(-scores, n - 1)[:n]
    cut = scores[part].min()
    above = np.flatnonzero(scores > cut)
    top = np.concatenate([above, np.flatnonzero(scores == cut)[: n - len(above)]])
    return {doc_ids[i]: float(scores[i]) for i in top if scores[i] > 0}


class TokenEngine:
    ANALYZER = "lucene-english"

    def __init__(self, path: Path, threads: int, config: dict):
        self.path, self.threads = Path(path), threads
        name = config.get("analyzer", self.ANALYZER)
        self.analyze = analyzer(_LEGACY_ANALYZERS.get(name, name))
        self._doc_ids: list[str] | None = None
        self._tokens: list[list[str]] | None = None
        self._lock = threading.Lock()
        self._reset()

    # ------------------------------------------------------------------ the stored terms
    @property
    def doc_ids(self) -> list[str]:
        if self._doc_ids is None:
            with open(self.path / "docids.txt", encoding="utf-8") as f:
                self._doc_ids = [line.rstrip("\n") for line in f]
        return self._doc_ids

    @property
    def tokens(self) -> list[list[str]]:
        if self._tokens is None:
            try:
                with open(self.path / "tokens.jsonl", encoding="utf-8") as f:
                    self._tokens = [json.loads(line) for line in f]
            except (ValueError, UnicodeDecodeError) as e:
                raise DamagedArtefact(f"{self.path}: tokens.jsonl cannot be read ({e}); build the index again") from None
            if len(self._tokens) != len(self.doc_ids):
                raise DamagedArtefact(f"{self.path}: tokens.jsonl and docids.txt disagree in length; build the "
                                      f"index again")
        return self._tokens

    @staticmethod
    def _write(folder: Path, doc_ids: Sequence[str], tokens: Sequence[list[str]], sync: bool = False) -> None:
        """The two files, each written beside and renamed into place."""
        for name, lines in (("docids.txt", doc_ids), ("tokens.jsonl", (json.dumps(t) for t in tokens))):
            tmp = folder / f"{name}.tmp-write"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, folder / name)

    # ------------------------------------------------------------------ what an engine does
    def _reset(self) -> None:
        """(Re)make the model from the stored terms (after loading, and after every write)."""
        raise NotImplementedError

    def _saved(self, folder: Path, k1: float, b: float) -> None:
        """Write anything else the engine keeps in the index folder (called after build and after a write)."""

    @classmethod
    def build(cls, corpus: Corpus, out: Path, threads: int, k1: float, b: float, store_raw: bool = False) -> dict:
        analyze = analyzer(cls.ANALYZER)
        ids = list(corpus)
        tokens = [analyze(corpus[d].contents) for d in tqdm(ids, desc="analysing", unit="doc", disable=len(ids) < 20000)]
        cls._write(out, ids, tokens)
        if cls._saved is not TokenEngine._saved:  # the engine keeps its own index too
            cls(out, threads, {"analyzer": cls.ANALYZER})._saved(out, k1, b)
        return {"analyzer": cls.ANALYZER}

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[str], k1: float, b: float) -> None:
        """Add or replace (id, contents) and delete ids: the new documents are analysed, the model made again from
        every stored term list (no document is analysed twice), and the files rewritten."""
        with self._lock:
            rows = {d: i for i, d in enumerate(self.doc_ids)}
            gone = {rows[d] for d in delete if d in rows} | {rows[d] for d, _ in add if d in rows}
            ids = [d for i, d in enumerate(self.doc_ids) if i not in gone] + [d for d, _ in add]
            tokens = [t for i, t in enumerate(self.tokens) if i not in gone] + [self.analyze(c) for _, c in add]
            if not ids:
                raise ValueError("a Java-free BM25 index cannot be empty; keep at least one document")
            self._write(self.path, ids, tokens, sync=True)
            self._doc_ids, self._tokens = ids, tokens
            self._reset()
            self._saved(self.path, k1, b)

    def settings_changed(self, k1: float, b: float) -> None:
        """The index's saved k1 and b changed (``BM25.fit(save=True)``): keep what depends on them."""
        with self._lock:
            self._saved(self.path, k1, b)

    def close(self) -> None:
        pass
