"""Training LoRA adapters for the bi-encoder.

``query`` mode (implemented here): the adapter is applied to queries only. Documents keep the frozen
base model, so their vectors are fixed: they come straight from the existing FAISS index (nothing is
re-encoded, and the index stays byte-identical), and a softmax over the *whole corpus* — the query's
other positives masked — replaces sampled negatives.

Every run: a seed, a validation slice held out of the training queries (nDCG@10 by exact search each
epoch, best epoch kept), the trainable share, wall time and peak memory, and a progress bar.

Its command line, ``python -m encoders.train``, lives in ``__main__.py`` beside this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval.evaluation import evaluate
from retrieval.lora.examples import TrainExample, pseudo_examples, supervised_examples
from retrieval.lora.mining import mine_negatives
from retrieval.lora.settings import LoraSettings
from retrieval.lora.training import (TrainResult, check_numbers, dropout_switches, fit_adapter, peak_memory_mb, recorded_dropout,
                                     split_queries)
from retrieval.types import Qrels, Queries, Ranking

from ..bi_encoder import BiEncoder


MODES = ("query", "supervised", "corpus", "corpus-query")


@dataclass
class DenseTrainSettings:
    mode: str = "query"
    epochs: int = 8
    lr: float = 3e-4
    batch_size: int = 32
    scale: float = 20.0               # logits = scale x cosine (MultipleNegativesRankingLoss uses 20)
    val_fraction: float = 0.15        # of the training queries, held out to choose the epoch
    seed: int = 0
    weight_decay: float = 0.01
    warmup: float = 0.1               # share of steps with a linear warm-up
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, side="query"))
    adapter_name: str = "default"
    doc_max_length: int = 160         # passages are cut to this many tokens while training (both-sides modes),
                                      # or to the encoder's own max length if that is shorter
    dropout: bool = True              # dropout while training (see retrieval.lora.training.DROPOUTS)
    attention_dropout: bool = True    # with dropout: also on the attention probabilities

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"dense training mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        check_numbers(self, positive_ints=("epochs", "batch_size", "doc_max_length"), positive=("lr", "scale"),
                      fractions=("val_fraction",), unit=("warmup", "weight_decay"))

    def to_dict(self) -> dict:
        return recorded_dropout({**asdict(self), "lora": self.lora.to_dict()})


def _fit(encoder: BiEncoder, settings: DenseTrainSettings, items: list, loss_fn, validate, desc: str,
         progress: bool, n_train: int, n_val: int) -> TrainResult:
    """Add the adapter and run the shared loop (``retrieval.lora.training.fit_adapter``) on the encoder."""
    encoder.add_lora(settings.lora, name=settings.adapter_name)
    share = encoder.trainable_share()
    out = fit_adapter(encoder, settings.adapter_name, items, loss_fn, validate,
                      epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                      weight_decay=settings.weight_decay, warmup=settings.warmup, seed=settings.seed,
                      desc=desc, progress=progress, train_module=encoder.st, dropout=settings.dropout,
                      attention_dropout=settings.attention_dropout)
    return TrainResult(**out, trainable_share=share, peak_memory_mb=peak_memory_mb(), train_queries=n_train,
                       val_queries=n_val, settings=settings.to_dict())


def validation_queries(queries: Queries, qrels: Qrels, doc_ids, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) query ids of query-side training: the judged queries with a relevant document among
    ``doc_ids``, split by ``split_queries``. The held-out ones never take a gradient step, so later choices
    (fusion weights) can be made on them; pass the settings the adapter was trained with."""
    ids = set(doc_ids)
    judged = [q for q in queries if q in qrels and any(g > 0 and d in ids for d, g in qrels[q].items())]
    if not judged:
        raise ValueError("no training query has a relevant document in the index")
    return split_queries(judged, val_fraction, seed)


def train_query_adapter(encoder: BiEncoder, index, queries: Queries, qrels: Qrels,
                        settings: DenseTrainSettings | None = None, progress: bool = True) -> TrainResult:
    """Train a query-side LoRA adapter against the fixed document vectors of ``index``.

    ``index`` must have been built with this encoder's base model (no document-side adapter); its
    stored vectors are used as they are.
    """
    import torch

    settings = settings or DenseTrainSettings()
    if settings.lora.side != "query":
        raise ValueError("query-only modes train a query-side adapter: set LoraSettings(side='query')")
    base_fp = encoder.fingerprint("document")
    if index.encoder_fingerprint is not None and index.encoder_fingerprint != base_fp:
        raise ValueError(f"the index was built with {index.encoder_fingerprint}, not this encoder's document side "
                         f"({base_fp}); query-only training needs the base model's document vectors")
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)

    rows = [r for r, d in enumerate(index.ids) if d is not None]
    row_of = {index.ids[r]: i for i, r in enumerate(rows)}
    doc_ids = [index.ids[r] for r in rows]
    D = torch.from_numpy(np.ascontiguousarray(index.vectors[rows])).to(encoder.st.device)

    train_q, val_q = validation_queries(queries, qrels, row_of, settings.val_fraction, settings.seed)
    positives = {q: [row_of[d] for d, g in qrels[q].items() if g > 0 and d in row_of] for q in train_q}
    pairs = [(q, p) for q in train_q for p in positives[q]]

    val_qrels = {q: qrels[q] for q in val_q}

    def validate() -> float:
        encoder.st.eval()
        with torch.no_grad():
            qv = encoder.encode_queries([queries[q] for q in val_q])
        scores = qv @ index.vectors[rows].T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = Ranking({q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(val_q)})
        return evaluate(run, val_qrels, ["nDCG@10"]).aggregate["nDCG@10"]

    def loss_fn(batch, rng):
        """Softmax over the whole (fixed) corpus; the query's other positives are masked out."""
        q_emb = encoder.embed([queries[q] for q, _ in batch], side="query")
        logits = settings.scale * (q_emb @ D.T)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for b, (q, p) in enumerate(batch):
            others = [o for o in positives[q] if o != p]
            if others:
                mask[b, others] = True
        target = torch.tensor([p for _, p in batch], device=logits.device)
        return torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), target)

    return _fit(encoder, settings, pairs, loss_fn, validate, f"{settings.mode} LoRA", progress, len(train_q), len(val_q))


def train_adapter(encoder: BiEncoder, corpus, examples: list[TrainExample], first_stage,
                  settings: DenseTrainSettings, progress: bool = True, val_pool: int = 20,
                  max_val_queries: int = 64, negatives_depth: int = 30) -> TrainResult:
    """Train a LoRA adapter on both sides with in-batch negatives plus one hard negative per pair.

    Hard negatives come from ``first_stage`` (BM25): its top ``negatives_depth`` documents for the
    query, the positives excluded. Validation each epoch, on queries held out of ``examples``:
    nDCG@10 after re-ordering the first stage's top ``val_pool`` by the adapted encoder.
    """
    import torch

    if settings.lora.side != "both":
        raise ValueError("supervised and corpus-only training adapt both sides: LoraSettings(side='both')")
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(settings.seed)
    qids = sorted({e.qid for e in examples})
    train_q, val_q = split_queries(qids, settings.val_fraction, settings.seed)
    val_q = val_q[:max_val_queries]
    train_set = set(train_q)
    train_ex = [e for e in examples if e.qid in train_set]
    by_qid = {e.qid: e for e in examples}
    texts = {e.qid: e.query for e in examples}
    exclude = {e.qid: set(e.positives) for e in examples}
    negatives = mine_negatives(first_stage, {q: texts[q] for q in train_q}, exclude, depth=negatives_depth)
    pools = first_stage.search(Queries({q: texts[q] for q in val_q}), k=val_pool)
    val_qrels = {q: {d: 1 for d in by_qid[q].positives} for q in val_q}

    def validate() -> float:
        encoder.st.eval()
        doc_ids = sorted({d for q in val_q for d in pools.scores.get(q, {})})
        if not doc_ids:
            return 0.0
        with torch.no_grad():
            dv = encoder.encode_documents([corpus[d] for d in doc_ids])
            qv = encoder.encode_queries([texts[q] for q in val_q])
        row = {d: i for i, d in enumerate(doc_ids)}
        run = Ranking({q: {d: float(dv[row[d]] @ qv[i]) for d in pools.scores.get(q, {})} for i, q in enumerate(val_q)})
        return evaluate(run, val_qrels, ["nDCG@10"]).aggregate["nDCG@10"]

    def loss_fn(batch, rng):
        """In-batch negatives plus one BM25 hard negative per pair; other positives of a query masked."""
        neg_ids = [rng.choice(negatives[e.qid]) if negatives.get(e.qid) else None for e in batch]
        cand_ids = [None] * len(batch) + [d for d in neg_ids if d is not None]
        q_emb = encoder.embed([e.query for e in batch], side="query")
        c_emb = encoder.embed([e.passage for e in batch] + [corpus[d].contents for d in cand_ids[len(batch):]],
                              side="document")
        logits = settings.scale * (q_emb @ c_emb.T)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for b, e in enumerate(batch):
            for j, other in enumerate(batch):  # another pair's passage that is also a positive of b
                if j != b and other.positives & e.positives:
                    mask[b, j] = True
            for j, d in enumerate(cand_ids):
                if d is not None and d in e.positives:
                    mask[b, j] = True
        target = torch.arange(len(batch), device=logits.device)
        return torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), target)

    saved_len = encoder.st.max_seq_length
    encoder.st.max_seq_length = min(settings.doc_max_length, saved_len)  # never past what the model takes
    try:
        return _fit(encoder, settings, train_ex, loss_fn, validate, f"{settings.mode} LoRA", progress,
                    len(train_q), len(val_q))
    finally:
        encoder.st.max_seq_length = saved_len


def train_dense(mode: str, corpus, queries: Queries | None = None, qrels: Qrels | None = None,
                settings: DenseTrainSettings | None = None, encoder: BiEncoder | None = None,
                index=None, first_stage=None, progress: bool = True) -> tuple[BiEncoder, TrainResult]:
    """Train a dense LoRA adapter in one of the three modes and return (encoder, result).

    - ``query``: query-side adapter against ``index`` (the base model's document vectors);
    - ``supervised``: both sides, from ``queries``/``qrels``, hard negatives from ``first_stage``;
    - ``corpus``: both sides, pseudo-queries from ``corpus`` alone (no judgements needed);
    - ``corpus-query``: query side only, pseudo-queries from ``corpus`` against ``index`` (no judgements,
      no document re-encoding).
    """
    if mode not in MODES:
        raise ValueError(f"training mode must be one of {MODES}, got {mode!r}")
    encoder = encoder or BiEncoder()
    if settings is None:
        settings = default_settings(mode)
    if settings.mode != mode:
        raise ValueError(f"settings are for mode {settings.mode!r}, not {mode!r}")
    if mode in ("query", "supervised") and (queries is None or qrels is None):
        raise ValueError(f"{mode} training needs queries and qrels (use mode='corpus' when there are none)")
    if mode in ("query", "corpus-query"):
        if index is None:
            raise ValueError("query-only training needs the base model's document index (retrieval.stages.dense.document_index)")
        if mode == "corpus-query":  # pseudo-queries stand in for judged queries
            pseudo = pseudo_examples(corpus, settings.seed)
            queries = Queries((e.qid, e.query) for e in pseudo)
            qrels = {e.qid: {d: 1 for d in e.positives} for e in pseudo}
        return encoder, train_query_adapter(encoder, index, queries, qrels, settings, progress)
    if first_stage is None:
        raise ValueError(f"{mode} training mines hard negatives with a first stage: pass first_stage=BM25(...)")
    examples = supervised_examples(corpus, queries, qrels) if mode == "supervised" else pseudo_examples(corpus, settings.seed)
    return encoder, train_adapter(encoder, corpus, examples, first_stage, settings, progress)



def default_dropout(mode: str) -> str:
    """Which dropout layers train (one of ``DROPOUTS``) by default: none for the query-side adapter trained on
    judgements (``query``: better on three seeds' held-out queries, +0.011 fused, at ~1.9x faster training; README),
    every one for the other modes, where that was not measured."""
    return "none" if mode == "query" else "all"


def default_settings(mode: str, epochs: int | None = None, seed: int = 0, dropout: str | None = None) -> DenseTrainSettings:
    """The settings the benchmarks use: query-only 8 epochs at 3e-4; supervised both sides 4 epochs at 2e-4
    (the best epoch is chosen on validation; 2 epochs stopped while validation was still rising);
    corpus-only both sides 2 epochs. ``seed`` splits off the validation queries and shuffles; ``dropout`` is one
    of ``DROPOUTS`` (default: ``default_dropout(mode)``)."""
    switches = dropout_switches(dropout or default_dropout(mode), "dense training")
    if mode == "query":
        return DenseTrainSettings(mode="query", epochs=8 if epochs is None else epochs, seed=seed, **switches)
    if mode == "corpus-query":
        return DenseTrainSettings(mode="corpus-query", epochs=4 if epochs is None else epochs, seed=seed, **switches)
    return DenseTrainSettings(mode=mode, epochs=(4 if mode == "supervised" else 2) if epochs is None else epochs,
                              lr=2e-4, lora=LoraSettings(r=16, alpha=32, side="both"), seed=seed, **switches)
