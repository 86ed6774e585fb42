"""The dense stage in a pipeline folder: ``encoder/`` (BiEncoder.save) and ``index/`` (FaissIndex.save).

Loading checks that the encoder encodes queries and documents as it did when the pipeline was built, and that
the index was built from the saved corpus with that encoder's document side. Live, documents written to the
service are encoded and added to (or removed from) the FAISS index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from encoders.bi_encoder import BiEncoder

from ...index.faiss import IndexMismatch
from ...index.sharded import load_index
from ...stages.dense import Dense
from ...stages.fusion import Fusion
from ...types import Corpus, Document
from ...util import link_tree
from ..registry import LoadContext, PipelineMismatch, StageKind, WriteRefused, register


def check_ids(ids, corpus: Corpus, name: str) -> None:
    stored = {d for d in ids if d is not None}
    missing = [d for d in stored if d not in corpus]
    if missing or len(stored) != len(corpus):
        raise PipelineMismatch(f"{name}: the FAISS index holds {len(stored)} documents, the corpus {len(corpus)}"
                               + (f" (e.g. {missing[0]!r} is not in the corpus)" if missing else "")
                               + "; the index was built from another corpus")


class DenseKind(StageKind):
    name, stage_class = "dense", Dense
    writable = True

    def save(self, stage: Dense, folder: Path, corpus: Corpus) -> dict:
        check_ids(stage.index.ids, corpus, stage.name)
        stage.encoder.save(folder / "encoder")
        stage.index.save(folder / "index")
        return {"mode": stage.mode, "neighbours": stage.neighbours, "base_ensemble": stage.base_ensemble,
                "fusion": stage.fusion.to_dict() if stage.fusion is not None else None,
                "factory": stage.index.factory, "shards": getattr(stage.index, "shards", 1),
                "encoder_query": stage.encoder.fingerprint("query"),
                "encoder_document": stage.encoder.fingerprint("document")}

    def load(self, entry: dict, folder: Path, context: LoadContext) -> Dense:
        name = entry["name"]
        encoder = (context.models.encoder(folder / "encoder", context.adapter_name(name)) if context.models is not None
                   else BiEncoder.load(folder / "encoder", device=context.device, verify=not context.check_files))
        for side in ("query", "document"):
            if encoder.fingerprint(side) != entry[f"encoder_{side}"]:
                raise PipelineMismatch(f"{name}: the encoder in {folder / 'encoder'} encodes {side}s as "
                                       f"{encoder.fingerprint(side)}, the pipeline was built with "
                                       f"{entry[f'encoder_{side}']}")
        try:  # its files were hashed with the folder's already, when the folder was checked
            index = load_index(folder / "index", encoder_fingerprint=encoder.fingerprint("document"),
                               verify=not context.check_files, placer=context.placer)
        except IndexMismatch as e:
            raise PipelineMismatch(f"{name}: {e}") from None
        check_ids(index.ids, context.corpus, name)
        return Dense(encoder, index, mode=entry["mode"], k=entry["k"], fusion=Fusion.from_dict(entry.get("fusion")),
                     neighbours=entry["neighbours"], name=name, base_ensemble=entry.get("base_ensemble", False))

    def prepare(self, stage: Dense, docs: Sequence[Document]):
        return stage.encoder.encode_documents(list(docs)) if docs else None

    def check_write(self, stage: Dense, replaced: Sequence[str], deleted: Sequence[str]) -> None:
        if getattr(stage.index, "read_only", False):
            raise WriteRefused("read_only", f"stage {stage.name!r} keeps its vectors in a sharded index "
                                            f"({stage.index.shards} shards), which is read-only: build the domain "
                                            f"again with the new documents, or from one index to take writes")
        if stage.index.kind != "hnsw" or not (replaced or deleted):
            return
        what, code = (("delete from", "cannot_delete") if deleted else ("replace", "cannot_replace"))
        raise WriteRefused(code, f"stage {stage.name!r} keeps its vectors in an HNSW index ({stage.index.factory}), "
                                 f"which FAISS cannot delete from, so it cannot {what} documents "
                                 f"({(deleted or replaced)[0]!r}); build the domain with a Flat or IVF index")

    def apply(self, stage: Dense, upserts: Sequence[Document], deletes: Sequence[str], prepared) -> None:
        gone = [i for i in deletes if i in stage.index]
        if gone:
            stage.index.remove(gone)
        if upserts:
            stage.index.add(prepared, [d.id for d in upserts])  # replaces ids already present

    def snapshot(self, stage: Dense, entry: dict, src: Path, dst: Path, corpus: Corpus) -> dict:
        link_tree(src / "encoder", dst / "encoder")  # adapters do not change (and may hold ~90 MB of base weights)
        stage.index.save(dst / "index")
        return entry

    def describe(self, stage: Dense) -> dict:
        facts = {"factory": stage.index.factory, "vectors": len(stage.index)}
        if getattr(stage.index, "read_only", False):
            facts.update(shards=stage.index.shards, placed=getattr(stage.index.pool, "where", "local"))
        return {"vector_index": facts}

    def close(self, stage: Dense) -> None:
        close = getattr(stage.index, "close", None)
        if close is not None:
            close()


register(DenseKind())
