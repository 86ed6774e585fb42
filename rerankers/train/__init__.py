"""Training LoRA adapters for the cross-encoder reranker.

Each training item is a (query, positive passage) pair. A step scores, for each item of the batch, its
positive and ``negatives`` documents drawn from the first stages' top ``negatives_depth`` (BM25 and, when
given, a dense stage), the query's positives excluded:

- ``listwise`` (default): softmax cross-entropy over the group, the positive as the target;
- ``pointwise``: binary cross-entropy on every pair of the group (same pairs, so the cost is the same);
- with a ``teacher`` (any scorer ``teacher(queries, docs) -> scores``, e.g. a stronger cross-encoder the user
  has), a KL term pulls the group's softmax towards the teacher's (``distill_weight``, ``temperature``);
- with a ``base`` scorer (the same signature: e.g. the first stages the reranker will be fused with) and
  ``residual`` > 0, the loss (and the validation ranking) scores each pair by the reranker's logit plus
  ``residual`` x the base's score, so the reranker learns what the base misses, not what it already ranks
  (residual learning as in CLEAR, Gao et al. 2021, which trains a dense retriever on BM25's residual).

Modes: ``supervised`` (judged queries) and ``corpus`` (pseudo-queries from the corpus itself, the same ones
the dense stage uses; no judgements). ``pseudo_items`` adds that many of the corpus's pseudo-queries to supervised
training (they never join the validation queries). Validation after each epoch on queries held out of the training items:
nDCG@10 of the first stage's top ``val_depth`` reordered by the reranker alone; the best epoch is kept (before
training too, unless the scoring head is new: a random head's figure would say nothing and cost a pass).

Its command line, ``python -m rerankers.train``, lives in ``__main__.py`` beside this file.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from retrieval.evaluation import evaluate
from retrieval.lora.base import PACKAGED_ID
from retrieval.lora.examples import TrainExample, check_pseudo_kind, pseudo_examples, supervised_examples
from retrieval.lora.mining import mine_pool
from retrieval.lora.training import TrainResult, check_numbers, fit_adapter, peak_memory_mb, recorded_dropout, split_queries
from retrieval.stages.rerank import Rerank
from retrieval.types import Qrels, Queries, Ranking

from ..cross_encoder import CrossEncoderReranker, RerankLoraSettings
from ..passages import check_passage

MODES = ("supervised", "corpus")
LOSSES = ("listwise", "pointwise")
PACKAGED_KEEP_LAYERS = 3  # of the packaged MiniLM's 6: half a pair's cost; a rule on seeds 5-7's held-out queries (README)


def default_keep_layers(model: str | os.PathLike | None) -> int | None:
    """The backbone layers a reranker trained by this project's commands keeps unless told: the bottom 3 of the
    packaged MiniLM's 6 (``PACKAGED_KEEP_LAYERS``), all of any other backbone (None)."""
    return PACKAGED_KEEP_LAYERS if model is None or str(model) == PACKAGED_ID else None


@dataclass
class RerankTrainSettings:
    mode: str = "supervised"
    loss: str = "listwise"
    epochs: int = 2                   # 2/3 of 3's steps; a rule on seed 3's held-out queries (README routes)
    lr: float = 1e-3                  # LoRA weights
    head_lr: float = 3e-3             # the new scoring head
    batch_size: int = 8               # training items (queries) per step; each brings 1 + negatives pairs
    negatives: int = 2                # beside each positive (3 before; a rule on seeds 4-6's held-out queries, README)
    negatives_depth: int = 30
    max_length: int = 128             # query + passage tokens while training (and scoring); 256 before, a rule on
                                      # seeds 4-6's held-out queries pooled (README routes): fused, the same; alone, worse
    passage: str = "first"            # what it reads of a longer document: its opening or the query's sentences (PASSAGES)
    keep_layers: int | None = None    # the backbone's bottom layers the reranker keeps (None: all); recorded, the model
                                      # is built with them (CrossEncoderReranker(keep_layers=...))
    val_fraction: float = 0.15
    max_val_queries: int = 64
    val_depth: int = 20
    max_items: int | None = None      # cap on training items (corpus mode on a large corpus)
    pseudo_items: int = 0             # supervised mode: pseudo-queries from the corpus added to the judged items
    pseudo_kind: str = "title"        # which: titles -> their text, or a sentence -> the rest (PSEUDO_KINDS)
    distill_weight: float = 0.5
    temperature: float = 1.0
    residual: float = 0.0             # weight of the base scorer's score added to each logit in the loss (0: none)
    seed: int = 0
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float | None = None  # the gradients' global norm clipped to this before each step (None: never)
    plateau_retries: int = 2          # a listwise training whose last epoch ended on the plateau trains again from a
                                      # fresh adapter, another init and order, at most this often (check_learned)
    dropout: bool = False             # dropout while training (False: every dropout layer off; see DROPOUTS: none is
                                      # the default, 2.2x faster steps on a CPU, and it won on held-out queries)
    attention_dropout: bool = True    # with dropout: also on the attention probabilities (off: a fused attention kernel)
    lora: RerankLoraSettings = field(default_factory=RerankLoraSettings)
    adapter_name: str = "default"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"reranker training mode must be one of {MODES}, got {self.mode!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"reranker loss must be one of {LOSSES}, got {self.loss!r}")
        if isinstance(self.lora, dict):
            self.lora = RerankLoraSettings(**self.lora)
        check_numbers(self, positive_ints=("epochs", "batch_size", "negatives", "negatives_depth", "max_length",
                                           "max_val_queries", "val_depth", "max_items", "keep_layers"),
                      non_negative_ints=("pseudo_items", "plateau_retries"),
                      positive=("lr", "head_lr", "temperature"), fractions=("val_fraction",),
                      non_negative=("residual",), unit=("distill_weight", "warmup", "weight_decay"),
                      positive_or_none=("max_grad_norm",))
        check_pseudo_kind(self.pseudo_kind)
        check_passage(self.passage)
        if self.pseudo_kind != "title" and self.mode != "supervised":
            raise ValueError(f"pseudo_kind={self.pseudo_kind!r} chooses the pseudo-queries pseudo_items adds to "
                             f"supervised training; mode={self.mode!r} trains on the corpus's title pseudo-queries "
                             f"(a sentence where a document has no title): leave pseudo_kind at 'title'")
        if self.pseudo_kind != "title" and not self.pseudo_items:
            raise ValueError(f"pseudo_kind={self.pseudo_kind!r} says which pseudo-queries pseudo_items adds, and "
                             f"pseudo_items is 0: set pseudo_items too, or leave pseudo_kind at 'title'")
        if self.pseudo_items and self.mode != "supervised":
            raise ValueError(f"pseudo_items adds pseudo-queries to supervised training; mode={self.mode!r} trains on "
                             f"pseudo-queries only already: leave pseudo_items at 0")

    def to_dict(self) -> dict:
        """The settings as recorded and cache-keyed (``pseudo_kind`` only when not titles, ``residual`` only when
        set, ``passage`` only when not the opening, ``max_grad_norm`` only when set: earlier keys stay)."""
        d = recorded_dropout({**asdict(self), "lora": self.lora.to_dict()}, always=("dropout",))
        unset = {"pseudo_kind": "title", "residual": 0.0, "passage": "first", "keep_layers": None,
                 "max_grad_norm": None}
        return {k: v for k, v in d.items() if k not in unset or v != unset[k]}


def split_examples(examples: list[TrainExample], settings: RerankTrainSettings) -> tuple[list[str], list[str]]:
    """(training query ids, held-out query ids): the held-out ones never take a gradient step, so depth
    and fusion weight can be chosen on them."""
    return split_queries(sorted({e.qid for e in examples}), settings.val_fraction, settings.seed)


def train_reranker(reranker: CrossEncoderReranker, corpus, examples: list[TrainExample], first_stages: Sequence,
                   settings: RerankTrainSettings | None = None, teacher: Callable | None = None,
                   progress: bool = True, on_epoch: Callable[[int, dict], None] | None = None,
                   base: Callable | None = None) -> TrainResult:
    """Train a LoRA adapter (and the scoring head) on ``examples``; negatives mined with ``first_stages``; with
    ``settings.residual`` > 0, on the residual of ``base`` (``base(queries, docs) -> scores``). A listwise training
    that ends on its plateau trains again (``settings.plateau_retries``; ``on_epoch`` sees every training's epochs,
    the kept one's last; the result's ``abandoned`` holds the others' histories)."""
    import torch

    settings = settings or RerankTrainSettings()
    if settings.keep_layers is not None and reranker.keep_layers != settings.keep_layers:
        raise ValueError(f"the settings say the reranker keeps {settings.keep_layers} of its backbone's layers, but it "
                         f"was built with keep_layers={reranker.keep_layers}: build it with "
                         f"CrossEncoderReranker(..., keep_layers={settings.keep_layers}) or leave the setting at None")
    if not examples:
        raise ValueError("no training examples")
    if settings.residual and base is None:
        raise ValueError(f"residual={settings.residual} trains on the residual of a base scorer, and none was given: "
                         f"pass base=<scorer(queries, docs) -> scores> (e.g. retrieval.pipeline.teacher.RankingTeacher "
                         f"over the first stages), or leave residual at 0")
    residual = base if settings.residual else None
    if not first_stages:
        raise ValueError("hard negatives are mined with a first stage: pass first_stages=[BM25(...)]")
    torch.manual_seed(settings.seed)
    train_q, val_q = split_examples(examples, settings)
    val_q = val_q[: settings.max_val_queries]
    train_set = set(train_q)
    items = [e for e in examples if e.qid in train_set]
    if settings.max_items and len(items) > settings.max_items:
        items = random.Random(settings.seed).sample(items, settings.max_items)
    pseudo = added_pseudo_items(corpus, settings)
    items = items + pseudo
    pseudo_q = {e.qid for e in pseudo}
    texts = {e.qid: e.query for e in examples + pseudo}
    positives: dict[str, set[str]] = {}
    for e in examples + pseudo:
        positives.setdefault(e.qid, set()).update(e.positives)
    used_q = sorted({e.qid for e in items})
    negatives = mine_pool(first_stages, {q: texts[q] for q in used_q}, positives, settings.negatives_depth)
    doc_ids = list(corpus)
    pools = first_stages[0].search(Queries({q: texts[q] for q in val_q}), k=settings.val_depth)
    val_qrels = {q: {d: 1 for d in positives[q]} for q in val_q}
    # title pseudo-queries' positives are passages without their title, so their negatives are too
    def doc_text(e: TrainExample, d: str) -> str:
        untitled = settings.mode == "corpus" or (e.qid in pseudo_q and settings.pseudo_kind == "title")
        return corpus[d].text if untitled else corpus[d].contents

    val_queries = Queries({q: texts[q] for q in val_q})

    def validate() -> float:
        """The reranker alone (with a residual base: plus the base's weighted score, as the loss sees it) over the
        pools, scored by a copy with the adapter merged into its weights: the same scores to float rounding, without
        LoRA's extra products (~30% of a pass on a CPU); training goes on with the adapter as it was."""
        val_stage = Rerank(reranker.merged(), corpus, k=settings.val_depth)
        ranking = val_stage.scores(val_queries, pools)
        if residual is not None:
            ranking = with_residual(ranking, val_queries, residual, settings.residual,
                                    lambda d: corpus[d].contents)
        return evaluate(ranking, val_qrels, ["nDCG@10"]).aggregate["nDCG@10"]

    def group(e: TrainExample, rng) -> list[str]:
        negs = negatives.get(e.qid) or []
        if len(negs) >= settings.negatives:
            chosen = rng.sample(negs, settings.negatives)
        elif negs:
            chosen = [rng.choice(negs) for _ in range(settings.negatives)]
        else:  # nothing mined (tiny corpus): random documents that are not positives
            pool = [d for d in doc_ids if d not in positives[e.qid]] or doc_ids
            chosen = [rng.choice(pool) for _ in range(settings.negatives)]
        return [e.passage] + [doc_text(e, d) for d in chosen]

    def loss_fn(batch, rng):
        n = 1 + settings.negatives
        docs = [t for e in batch for t in group(e, rng)]
        queries = [e.query for e in batch for _ in range(n)]
        logits = reranker.logits(queries, docs).view(len(batch), n)
        if residual is not None:  # the loss sees the base's weighted score beside each logit; no gradient flows to it
            b = torch.as_tensor(np.asarray(residual(queries, docs), dtype=np.float32), device=logits.device)
            logits = logits + settings.residual * b.view(len(batch), n).to(logits.dtype)
        if settings.loss == "listwise":
            target = torch.zeros(len(batch), dtype=torch.long, device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits, target)
        else:
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        if teacher is not None and settings.distill_weight > 0:
            with torch.no_grad():
                t = torch.as_tensor(np.asarray(teacher(queries, docs), dtype=np.float32), device=logits.device)
            t = torch.log_softmax(t.view(len(batch), n) / settings.temperature, dim=-1)
            s = torch.log_softmax(logits / settings.temperature, dim=-1)
            kl = torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")
            loss = (1 - settings.distill_weight) * loss + settings.distill_weight * kl
        return loss

    saved_len = reranker.max_length
    reranker.max_length = min(settings.max_length, saved_len)
    reranker.passage = settings.passage  # it reads as it was trained, from now on (and saved so)
    checked = teacher is None or settings.distill_weight == 0  # with a teacher, the loss has no plateau of its own
    retries = settings.plateau_retries if checked else 0
    abandoned: list[list[dict]] = []
    try:
        reranker.add_lora(settings.lora, name=settings.adapter_name)
        share = reranker.trainable_share()
        lora = [p for n, p in reranker.model.named_parameters() if p.requires_grad and "lora_" in n]
        head = [p for n, p in reranker.model.named_parameters() if p.requires_grad and "lora_" not in n]
        groups = [{"params": lora, "lr": settings.lr}, {"params": head, "lr": settings.head_lr}]
        fresh = reranker.adapter_state(settings.adapter_name)
        for attempt in range(retries + 1):
            if attempt:  # the same start for the head, LoRA drawn afresh, another order of the items
                reranker.set_adapter_state(fresh, settings.adapter_name)
                reranker.redraw_lora(settings.adapter_name, seed=settings.seed + RETRY_SEED_STEP * attempt)
                for p in lora + head:
                    p.requires_grad_(True)
            out = fit_adapter(reranker, settings.adapter_name, items, loss_fn, validate,
                              epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                              weight_decay=settings.weight_decay, warmup=settings.warmup,
                              seed=settings.seed + RETRY_SEED_STEP * attempt,
                              desc=f"{settings.mode} reranker LoRA" + (f" (retry {attempt})" if attempt else ""),
                              progress=progress, param_groups=[g for g in groups if g["params"]], on_epoch=on_epoch,
                              dropout=settings.dropout, attention_dropout=settings.attention_dropout,
                              validate_start=not reranker.new_head, max_grad_norm=settings.max_grad_norm)
            if attempt == retries or not on_plateau(out["history"], settings):
                break
            abandoned.append(out["history"])
            if progress:
                print(f"the reranker ended on the listwise plateau (last epoch's loss {out['history'][-1]['loss']:.4f}"
                      f"): training again from a fresh adapter, retry {attempt + 1} of {retries}", file=sys.stderr)
    finally:
        reranker.max_length = saved_len
    if checked:
        check_learned(out["history"], settings, retried=len(abandoned))
    out["seconds"] += sum(h[-1]["seconds"] for h in abandoned)
    return TrainResult(**out, trainable_share=share, peak_memory_mb=peak_memory_mb(), train_queries=len(used_q),
                       val_queries=len(val_q), settings=settings.to_dict(), abandoned=abandoned)


PLATEAU_SHARE = 0.97  # a last epoch's mean listwise loss within 3% of log(group size): the reranker did not learn
RETRY_SEED_STEP = 1_000_003  # a retry's LoRA draw and item order: seed + this x the retry's number


def on_plateau(history: Sequence[dict], settings: RerankTrainSettings) -> bool:
    """Whether a listwise training's last epoch ended on its plateau: a mean loss still about log(group size), what
    scores that do not rank the group give (another loss, or one with a residual base: never said)."""
    last = history[-1].get("loss") if history else None
    if settings.loss != "listwise" or settings.residual or last is None:
        return False
    return last >= PLATEAU_SHARE * float(np.log(1 + settings.negatives))


def check_learned(history: Sequence[dict], settings: RerankTrainSettings, retried: int = 0) -> bool:
    """Warn when a listwise training ended on its plateau (``on_plateau``): a new head on a backbone whose pooled
    features barely differ between pairs can stay there for a whole run, or fall back onto it when a step blows up
    its pooler (README, routes: 2 layers; 3 epochs on seed 20; the default on seed 22). ``retried``: how many
    trainings before this one ended there too. Returns whether it learned."""
    if not on_plateau(history, settings):
        return True
    plateau = float(np.log(1 + settings.negatives))
    best = max((h["val_nDCG@10"] for h in history if h.get("val_nDCG@10") is not None), default=None)
    warnings.warn(f"the reranker did not learn{f' in {retried + 1} trainings' if retried else ''}: its last epoch's "
                  f"listwise loss {history[-1]['loss']:.4f} is still about log(1 + {settings.negatives} negatives) = "
                  f"{plateau:.4f}, the loss of scores that do not rank"
                  f"{'' if best is None else f' (best validation nDCG@10 {best:.4f})'}; fused, it gets a weight near 0 "
                  f"and costs its time for nothing: train again with another seed (--seed), more retries "
                  f"(--rerank-plateau-retries; rerankers.train --plateau-retries) or the head's own pooler "
                  f"(--rerank-head-pooler identity; rerankers.train --new-head-pooler identity)",
                  RuntimeWarning, stacklevel=3)
    return False


def with_residual(ranking: Ranking, queries: Queries, base: Callable, weight: float,
                  text: Callable[[str], str]) -> Ranking:
    """``ranking`` with ``weight`` x ``base``'s score of each (query, document) pair added (``text(doc_id)``: the
    document's text as the base reads it)."""
    pairs = [(q, d) for q, docs in ranking.scores.items() for d in docs]
    extra = base([queries[q] for q, _ in pairs], [text(d) for _, d in pairs])
    out: dict[str, dict[str, float]] = {}
    for (q, d), b in zip(pairs, extra):
        out.setdefault(q, {})[d] = ranking.scores[q][d] + weight * float(b)
    return Ranking(out)


def added_pseudo_items(corpus, settings: RerankTrainSettings) -> list[TrainExample]:
    """``settings.pseudo_items`` of the corpus's pseudo-queries (a seeded sample), for supervised training."""
    if not settings.pseudo_items:
        return []
    pool = pseudo_examples(corpus, settings.seed, settings.pseudo_kind)
    if not pool:
        raise ValueError(f"pseudo_items: the corpus gives no {settings.pseudo_kind} pseudo-queries (no titles of 3+ "
                         f"words and no passages of 2+ sentences); leave pseudo_items at 0")
    return random.Random(settings.seed + 1).sample(pool, min(settings.pseudo_items, len(pool)))


def training_examples(mode: str, corpus, queries: Queries | None = None, qrels: Qrels | None = None,
                      seed: int = 0) -> list[TrainExample]:
    if mode == "supervised":
        if queries is None or qrels is None:
            raise ValueError("supervised reranker training needs queries and qrels (use mode='corpus' when there are none)")
        return supervised_examples(corpus, queries, qrels)
    if mode == "corpus":
        return pseudo_examples(corpus, seed)
    raise ValueError(f"reranker training mode must be one of {MODES}, got {mode!r}")
