"""The Lucene BM25 engine of the BM25 stage: Anserini's indexer and Pyserini's searcher (Java 21).

Documents are indexed as ``title + " " + text`` with Anserini's default English analyzer (Porter stemming,
Lucene's stop words), as in Pyserini's BEIR "flat" condition; ``update`` goes through Lucene's own
IndexWriter with the same analyzer and field options.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

from ..java import start_jvm
from ..types import Corpus
from ..util import DamagedArtefact


def _java_error(e: Exception) -> bool:
    return type(e).__name__ == "JavaException"


def _damaged(path: Path, e: Exception) -> DamagedArtefact:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return DamagedArtefact(f"{path}: Lucene cannot read the index ({first}); its files are damaged or incomplete: "
                           f"build it again (BM25.build) or restore it from a copy")

class LuceneEngine:
    def __init__(self, path: Path, threads: int, config: dict):
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
                    try:
                        s = self._cls(str(self.path))
                    except Exception as e:
                        if _java_error(e):
                            raise _damaged(self.path, e) from None
                        raise
                    s.set_bm25(key[0], key[1])
                    self._searchers[key] = s
        return s

    @staticmethod
    def build(corpus: Corpus, out: Path, threads: int, k1: float, b: float, store_raw: bool = False) -> dict:
        """Index with Anserini's IndexCollection (JsonCollection, contents = title + " " + text).

        ``store_raw`` also stores the raw JSON and document vectors, as Pyserini's prebuilt BEIR indexes do;
        it is off by default because loading stored fields makes every hit 2-3x slower to return, and
        document text comes from the corpus here.
        """
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

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[str], k1: float, b: float) -> None:
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

    def settings_changed(self, k1: float, b: float) -> None:
        pass  # Lucene applies k1 and b at search time

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_writer", None) is not None:
                self._writer.close()
                self._writer = None

    def search(self, qids: list[str], texts: list[str], k: int, k1: float, b: float) -> dict[str, dict[str, float]]:
        searcher = self._searcher(k1, b)
        try:
            if len(qids) == 1:
                hits = {qids[0]: searcher.search(texts[0], k=k)}
            else:
                hits = searcher.batch_search(texts, qids, k=k, threads=self.threads)
        except Exception as e:
            if _java_error(e):
                raise _damaged(self.path, e) from None
            raise
        return {qid: {h.docid: h.score for h in hits.get(qid, ())} for qid in qids}
