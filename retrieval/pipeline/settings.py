"""How the full pipeline is trained and composed: ``PipelineSettings``, declared once.

Every default lives here. ``add_pipeline_args`` adds one flag per setting to a command line (``python -m
retrieval train`` and ``python -m benchmarks run`` both use it: Pyserini's ``define_search_args`` habit) and
``settings_from_args`` reads them back, so a new setting is one field here and appears everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass, field

from rerankers.cross_encoder import POOLER_INITS, PRECISIONS, RerankLoraSettings
from rerankers.passages import PASSAGES, check_passage
from rerankers.train import PACKAGED_KEEP_LAYERS, RerankTrainSettings, default_keep_layers

from ..lora.examples import PSEUDO_KINDS, check_pseudo_kind
from ..lora.openvino import INFERENCES
from ..lora.training import DROPOUTS, check_numbers, dropout_switches
from ..stages.bm25 import BACKENDS, DEFAULT_BACKEND
from ..stages.rerank import DEPTHS, check_share

NEGATIVE_SOURCES = ("bm25", "dense")
DENSE_SKIP = 10  # the dense stage's top ranks left out of the reranker's negatives by default (README routes)
RESIDUAL_BASES = ("first-stages", "bm25")  # what the reranker may learn the residual of (rerank_residual)
CORPUS_RERANK_ITEMS = 800  # corpus-only reranker: pseudo-queries trained on by default (~7 minutes an epoch on 2 cores)


def _setting(default, help: str, **flag):
    """A dataclass field whose metadata describes its command-line flag (``type`` where the default is None,
    ``choices``)."""
    kwargs = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return field(**kwargs, metadata={"help": help, **flag})


@dataclass
class PipelineSettings:
    """How ``build_pipeline`` trains and composes BM25 >> hybrid LoRA dense >> LoRA reranker."""

    corpus_only: bool = _setting(False, "no judgements: pseudo-queries from the corpus train the dense adapter, used "
                                        "beside the untouched base model")
    corpus_reranker: bool = _setting(False, "corpus-only: also train the LoRA reranker on pseudo-queries and add it as a "
                                            "third stage (off by default: without labels it could not be shown to help)")
    bm25_backend: str = _setting(DEFAULT_BACKEND, "BM25 engine: bm25s (Java-free, in memory: corpora that do not change), "
                                                  "lucene (writes in place: service domains that take many writes), "
                                                  "rank_bm25", choices=BACKENDS)
    bm25_k: int = _setting(1000, "BM25 candidates handed to the dense stage")
    bm25_fit: bool = _setting(True, "grid-search k1/b on the training queries (kept unless significantly better; "
                                    "never with corpus_only)",
                              negated="keep k1=0.9, b=0.4 instead of grid-searching them on the training queries")
    dense_factory: str = _setting("Flat", "FAISS factory string of the dense index (e.g. Flat, HNSW32, IVF1024,Flat; "
                                          "compressed: SQ8, PCAR128,SQ8, OPQ32_128,IVF1024,PQ32)")
    dense_exact_vectors: bool = _setting(True, "keep each document's exact float32 vector beside the index to rescore "
                                               "candidates", negated="rescore candidates from the index's own codes: "
                                               "the index is only as large as its codes (e.g. SQ8: 384 bytes a "
                                               "document at 384 dimensions, not 1,536 more)")
    dense_k: int = _setting(100, "candidates the dense stage hands to the reranker")
    neighbours: int = _setting(100, "the index's own nearest neighbours the dense stage adds to BM25's candidates")
    dense_epochs: int | None = _setting(None, "query-side adapter epochs (default: 8; corpus-only 4)", type=int)
    dense_dropout: str | None = _setting(None, "dropout while the dense adapter trains: all (the backbone's, the "
                                               "attention probabilities', LoRA's), no-attention or none (1.9x faster "
                                               "training on a CPU; default: none for the adapter trained on "
                                               "judgements, all for the corpus-only one)", type=str, choices=DROPOUTS)
    rerank_epochs: int = _setting(2, "reranker epochs")
    rerank_max_length: int = _setting(RerankTrainSettings.max_length, "query + passage tokens the reranker trains on")
    rerank_passage: str = _setting(RerankTrainSettings.passage, "what the reranker reads of a document longer than "
                                   "its tokens: first (its opening) or focused (its first sentence, then the sentences "
                                   "sharing most query terms, in the document's order: the same cost a pair)",
                                   choices=PASSAGES)
    rerank_keep_layers: int | None = _setting(None, "the reranker backbone's bottom transformer layers kept (default: "
                                                    f"{PACKAGED_KEEP_LAYERS} of the packaged MiniLM's 6, half a pair's "
                                                    "cost, a rule on held-out queries; all of another --rerank-model)",
                                              type=int)
    rerank_depths: tuple[int, ...] = _setting(DEPTHS, "rerank depths to choose from on held-out training queries")
    rerank_budget_ms: float | None = _setting(None, "latency budget: milliseconds a query may take through the whole "
                                                    "pipeline (median, one query at a time, measured on this machine "
                                                    "while building); rerank depths over it are not chosen (default: "
                                                    "no budget)", type=float)
    rerank_share: float = _setting(1.0, "share of queries the reranker runs on: those the first two stages are least "
                                        "sure of (their best candidate's smallest lead over the second, in z-scores); "
                                        "the margin is fitted on held-out training queries (1: every query)",
                                   type=float)
    rerank_max_items: int | None = _setting(None, "cap on reranker training pairs (default: all; corpus-only 800)",
                                            type=int)
    rerank_pseudo_items: int = _setting(0, "pseudo-queries from the corpus added to the reranker's judged training "
                                           "items (supervised only)")
    rerank_pseudo_kind: str = _setting("title", "which pseudo-queries: title (a document's title -> its text) or "
                                                "sentence (one sentence of its text -> the title and the rest)",
                                       choices=PSEUDO_KINDS)
    rerank_lora_rank: int = _setting(RerankLoraSettings.r, "rank r of the reranker's LoRA adapter (alpha = 2r, as "
                                                          "the default's; 8 before a rule on held-out queries)")
    rerank_head_pooler: str = _setting(RerankLoraSettings.new_head_pooler, "a new scoring head's pooler: base (the "
                                       "backbone's, with LoRA) or identity (the adapter's own, trained in full, starting "
                                       "as the identity; not kept on held-out queries: README routes)",
                                       choices=POOLER_INITS)
    rerank_lora_layers: tuple[int, ...] = _setting((), "transformer layers the reranker's LoRA adapts (0 = the lowest, "
                                                        "-1 = the top; default: all): top layers only train faster",
                                                   type=int)
    rerank_negatives: tuple[str, ...] = _setting(("bm25", "dense"), "first stages the reranker's hard negatives come "
                                                 "from (both since a rule on held-out queries; bm25 alone before)",
                                                 choices=NEGATIVE_SOURCES)
    rerank_group_negatives: int = _setting(RerankTrainSettings.negatives, "hard negatives beside each positive in a "
                                                                          "training group of the reranker's listwise loss")
    rerank_dense_skip: int | None = _setting(None, "with dense negatives: the trained dense stage's top ranks left out "
                                                   "of them (where it ranks unjudged positives and the positives of the "
                                                   f"queries it was trained on; default: {DENSE_SKIP} with dense "
                                                   "negatives, else 0)", type=int)
    rerank_distill: float = _setting(0.0, "weight of a KL term pulling the reranker's softmax over each training "
                                          "group towards the first two stages' fused scores (0: labels only)")
    rerank_residual: float = _setting(0.0, "weight of a base's z-scored score added to the reranker's logit in its "
                                           "training loss and validation, so it learns what the base misses (residual "
                                           "learning; 0: none)")
    rerank_residual_base: str = _setting("first-stages", "the base of --rerank-residual: first-stages (BM25 >> dense, "
                                                         "fused: what the reranker is fused with) or bm25",
                                         choices=RESIDUAL_BASES)
    rerank_lr: float = _setting(RerankTrainSettings.lr, "learning rate of the reranker's LoRA weights (its new "
                                                        f"scoring head's stays {RerankTrainSettings.head_lr:g})")
    rerank_max_grad_norm: float | None = _setting(None, "clip the global norm of the reranker's gradients to this "
                                                        "before each step (transformers' Trainer default: 1.0, "
                                                        "studied here and not kept; default: no clipping)", type=float)
    rerank_plateau_retries: int = _setting(RerankTrainSettings.plateau_retries,
                                           "times a reranker training whose last epoch ended on the listwise plateau "
                                           "(it did not learn) trains again from a fresh adapter, another init and "
                                           "order (0: never)")
    rerank_dropout: str = _setting("none", "dropout while the reranker trains: none (2.2x faster steps on a CPU), all "
                                           "(the backbone's, the attention probabilities', LoRA's) or no-attention (all "
                                           "but the attention probabilities': a fused attention kernel)", choices=DROPOUTS)
    fit_queries: int = _setting(120, "held-out training queries the weights and depth are chosen on (at most)")
    corpus_rerank_depth: int = _setting(20, "corpus-only: the rerank depth, a rule fixed in advance")
    dense_model: str | None = _setting(None, "bi-encoder: HF id or folder (default: the packaged all-MiniLM-L6-v2)",
                                       type=str)
    rerank_model: str | None = _setting(None, "cross-encoder backbone: HF id or folder (default: the same MiniLM)",
                                        type=str)
    rerank_precision: str = _setting("auto", "the reranker's torch precision, training included (auto: bf16 where the "
                                     "hardware has it)", choices=PRECISIONS)
    dense_inference: str = _setting("openvino-int8", "how the bi-encoder runs on a CPU once trained (documents and queries;"
                                                     " a GPU always runs torch)", choices=INFERENCES)
    rerank_inference: str = _setting("openvino-int8", "how the reranker runs on a CPU once trained (a GPU always runs "
                                                      "torch)", choices=INFERENCES)
    shards: int = _setting(1, "shards of the BM25 and dense indexes, each searched on its own (in threads, or on one Ray "
                              "actor each with --ray-address) and merged: the same rankings; needs the bm25s backend")
    seed: int = _setting(0, "seed of every split, shuffle and initialisation")

    def __post_init__(self):
        self.dense_model = str(self.dense_model) if self.dense_model else None
        self.rerank_model = str(self.rerank_model) if self.rerank_model else None
        self.rerank_depths = tuple(int(d) for d in self.rerank_depths)
        self.rerank_negatives = tuple(self.rerank_negatives)
        self.rerank_lora_layers = RerankLoraSettings(layers=self.rerank_lora_layers).layers  # checked there
        if not self.rerank_negatives or set(self.rerank_negatives) - set(NEGATIVE_SOURCES):
            raise ValueError(f"rerank_negatives must name 'bm25' and/or 'dense', got {self.rerank_negatives}")
        for name in ("bm25_k", "dense_k", "neighbours", "rerank_epochs", "rerank_max_length", "fit_queries",
                     "corpus_rerank_depth", "shards", "rerank_group_negatives", "rerank_lora_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        check_numbers(self, positive_ints=("rerank_keep_layers",),
                      non_negative_ints=("rerank_pseudo_items", "rerank_dense_skip", "rerank_plateau_retries"),
                      unit=("rerank_distill",), non_negative=("rerank_residual",), positive=("rerank_lr",),
                      positive_or_none=("rerank_budget_ms", "rerank_max_grad_norm"))
        check_share(self.rerank_share, "rerank_share")
        if self.rerank_residual_base not in RESIDUAL_BASES:
            raise ValueError(f"rerank_residual_base must be one of {RESIDUAL_BASES}, got {self.rerank_residual_base!r}")
        if self.rerank_residual_base != "first-stages" and not self.rerank_residual:
            raise ValueError(f"rerank_residual_base={self.rerank_residual_base!r} says what the reranker learns the "
                             f"residual of, and rerank_residual is 0: set it too (e.g. 1.0), or leave the base alone")
        check_pseudo_kind(self.rerank_pseudo_kind)
        check_passage(self.rerank_passage)
        if self.rerank_pseudo_kind != "title" and not self.rerank_pseudo_items:
            raise ValueError(f"rerank_pseudo_kind={self.rerank_pseudo_kind!r} says which pseudo-queries "
                             f"rerank_pseudo_items adds, and that is 0: set it too, or leave the kind at 'title'")
        if self.rerank_dense_skip is None:
            self.rerank_dense_skip = DENSE_SKIP if "dense" in self.rerank_negatives else 0
        if self.rerank_dense_skip and "dense" not in self.rerank_negatives:
            raise ValueError(f"rerank_dense_skip={self.rerank_dense_skip} skips the dense stage's top negatives, but "
                             f"rerank_negatives={self.rerank_negatives} takes none from it: add 'dense' or leave it at 0")
        if self.rerank_pseudo_items and self.corpus_only:
            raise ValueError("rerank_pseudo_items adds pseudo-queries to judged ones; with corpus_only the reranker "
                             "trains on pseudo-queries only already (rerank_max_items caps them): leave it at 0")
        for name in ("dense_epochs", "rerank_max_items"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if not self.rerank_depths or min(self.rerank_depths) < 1:
            raise ValueError(f"rerank_depths must be positive integers, got {self.rerank_depths}")
        if max(self.rerank_depths) > self.dense_k:
            raise ValueError(f"the deepest rerank depth ({max(self.rerank_depths)}) exceeds the dense stage's "
                             f"k ({self.dense_k}): the reranker can only see what the dense stage hands on")
        if self.bm25_backend not in BACKENDS:
            raise ValueError(f"bm25_backend must be one of {BACKENDS}, got {self.bm25_backend!r}")
        if self.shards > 1 and self.bm25_backend != "bm25s":
            raise ValueError(f"shards={self.shards} needs bm25_backend='bm25s' (its shards score with the collection's "
                             f"statistics), got {self.bm25_backend!r}")
        for name in ("dense_inference", "rerank_inference"):
            if getattr(self, name) not in INFERENCES:
                raise ValueError(f"{name} must be one of {INFERENCES}, got {getattr(self, name)!r}")
        for name in ("dense_dropout", "rerank_dropout"):
            if getattr(self, name) not in DROPOUTS + ((None,) if name == "dense_dropout" else ()):
                raise ValueError(f"{name} must be one of {DROPOUTS}, got {getattr(self, name)!r}")
        if self.rerank_head_pooler not in POOLER_INITS:
            raise ValueError(f"rerank_head_pooler must be one of {POOLER_INITS}, got {self.rerank_head_pooler!r}")
        if self.rerank_precision not in PRECISIONS:
            raise ValueError(f"rerank_precision must be one of {PRECISIONS}, got {self.rerank_precision!r}")

    def rerank_train_settings(self) -> RerankTrainSettings:
        """The reranker's training settings these ask for: judged items (corpus-only: pseudo-queries, at most
        ``CORPUS_RERANK_ITEMS`` unless ``rerank_max_items`` says otherwise), the kept layers resolved for the backbone
        (``default_keep_layers``), the distillation weight only when distilling (so the cache keys of rerankers
        trained without a teacher stay as they were), the dropout switches of ``rerank_dropout``."""
        max_items = self.rerank_max_items
        if max_items is None and self.corpus_only:
            max_items = CORPUS_RERANK_ITEMS
        keep = self.rerank_keep_layers if self.rerank_keep_layers is not None else default_keep_layers(self.rerank_model)
        extra = {"distill_weight": self.rerank_distill} if self.rerank_distill else {}
        return RerankTrainSettings(mode="corpus" if self.corpus_only else "supervised", epochs=self.rerank_epochs,
                                   max_items=max_items, seed=self.seed, max_length=self.rerank_max_length,
                                   pseudo_items=self.rerank_pseudo_items, pseudo_kind=self.rerank_pseudo_kind,
                                   lora=RerankLoraSettings(layers=self.rerank_lora_layers, r=self.rerank_lora_rank,
                                                           alpha=2 * self.rerank_lora_rank,
                                                           new_head_pooler=self.rerank_head_pooler),
                                   negatives=self.rerank_group_negatives, residual=self.rerank_residual,
                                   passage=self.rerank_passage, keep_layers=keep, lr=self.rerank_lr,
                                   max_grad_norm=self.rerank_max_grad_norm,
                                   plateau_retries=self.rerank_plateau_retries,
                                   **dropout_switches(self.rerank_dropout, "reranker training"), **extra)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rerank_depths"] = list(self.rerank_depths)
        d["rerank_negatives"] = list(self.rerank_negatives)
        d["rerank_lora_layers"] = list(self.rerank_lora_layers)
        return d


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_pipeline_args(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per ``PipelineSettings`` field (``--bm25-k``, ``--rerank-depths 10 20 30``, ``--no-bm25-fit``,
    ...), with the field's default and help; ``exclude`` leaves some out (a CLI that sets them itself)."""
    defaults = PipelineSettings()
    group = p.add_argument_group("pipeline settings (retrieval.PipelineSettings)")
    for f in dataclasses.fields(PipelineSettings):
        if f.name in exclude:
            continue
        default, meta = getattr(defaults, f.name), f.metadata
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{meta['help']}" + ("" if default is None or isinstance(default, bool) else f" (default: {shown})")
        if isinstance(default, bool):
            if default:
                group.add_argument(_flag("no_" + f.name), dest=f.name, action="store_false", help=meta["negated"])
            else:
                group.add_argument(_flag(f.name), dest=f.name, action="store_true", help=help)
        elif isinstance(default, tuple):
            group.add_argument(_flag(f.name), dest=f.name, nargs="+", type=meta.get("type") or type(default[0]),
                               default=list(default),
                               choices=meta.get("choices"), help=help)
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=meta.get("type", type(default)), default=default,
                               choices=meta.get("choices"), help=help)


def settings_from_args(args: argparse.Namespace, **overrides) -> PipelineSettings:
    """The ``PipelineSettings`` that ``add_pipeline_args``'s flags give (``overrides`` win; fields a CLI left
    out keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PipelineSettings) if hasattr(args, f.name)}
    return PipelineSettings(**{**given, **overrides})
