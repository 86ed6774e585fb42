"""The rerank stage in a pipeline folder: ``reranker/`` (CrossEncoderReranker.save); it reads document text
from the pipeline's corpus (live: from the service's document store)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rerankers.cross_encoder import CrossEncoderReranker

from ...stages.fusion import Fusion
from ...stages.rerank import Rerank
from ...types import Corpus, Document
from ..registry import LoadContext, PipelineMismatch, StageKind, register


class RerankKind(StageKind):
    name, stage_class = "rerank", Rerank
    writable = True  # it holds nothing per document but the text, which it reads from the live store

    def save(self, stage: Rerank, folder: Path, corpus: Corpus) -> dict:
        stage.reranker.save(folder / "reranker")
        return {"fusion": stage.fusion.to_dict() if stage.fusion is not None else None, "keep_rest": stage.keep_rest,
                "skip_margin": stage.skip_margin, "reranker": stage.reranker.fingerprint()}

    def load(self, entry: dict, folder: Path, context: LoadContext) -> Rerank:
        name = entry["name"]
        reranker = (context.models.reranker(folder / "reranker", context.adapter_name(name))
                    if context.models is not None
                    else CrossEncoderReranker.load(folder / "reranker", device=context.device, verify=not context.check_files))
        if reranker.fingerprint() != entry["reranker"]:
            raise PipelineMismatch(f"{name}: the reranker in {folder / 'reranker'} is {reranker.fingerprint()}, "
                                   f"the pipeline was built with {entry['reranker']}")
        return Rerank(reranker, context.corpus, k=entry["k"], fusion=Fusion.from_dict(entry.get("fusion")),
                      keep_rest=entry.get("keep_rest", False), name=name, skip_margin=entry.get("skip_margin"))

    def attach_documents(self, stage: Rerank, documents: dict[str, Document]) -> None:
        stage.corpus = documents  # added documents are reranked by their text

    def apply(self, stage: Rerank, upserts: Sequence[Document], deletes: Sequence[str], prepared) -> None:
        pass  # the document store is updated by the service


register(RerankKind())
