"""Training examples for both encoders: (query, positive passage) pairs from judgements, or from the corpus.

``supervised_examples`` makes one example per judged positive. ``pseudo_examples`` makes pseudo-queries from
the corpus itself, for domains with no judgements. Two kinds (``PSEUDO_KINDS``): ``title`` (the default): for a
document with a title, the title is the query and the text is its positive passage; without a title, one sentence is
the query and the rest of the passage is the positive. The query's words are removed from the front of the positive
when the text repeats the title (as Cranfield's does), so the pair never matches by copying. ``sentence`` (inverse
cloze): one sentence of the text, drawn at random, is the query and the title with the rest of the text the positive,
for every document of 2+ sentences: queries that read like statements (SciFact's claims) rather than titles.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..types import Corpus, Qrels, Queries

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
PSEUDO_KINDS = ("title", "sentence")


@dataclass(frozen=True)
class PseudoPair:
    qid: str
    query: str
    doc_id: str
    passage: str


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def pseudo_queries(corpus: Corpus, seed: int = 0, min_words: int = 3, min_passage_words: int = 10,
                   kind: str = "title") -> list[PseudoPair]:
    """One (query, passage) pair per usable document, deterministic for a seed; ``kind`` in ``PSEUDO_KINDS``."""
    check_pseudo_kind(kind)
    rng = random.Random(seed)
    pairs = []
    for doc_id, doc in corpus.items():
        title, text = doc.title.strip(), doc.text.strip()
        if title and _norm(text).startswith(_norm(title)):
            text = text[len(title):].lstrip(" .\n")  # text repeats its title: drop it from the positive
            text = text if _norm(text) else ""
        if kind == "title" and title and len(title.split()) >= min_words and len(text.split()) >= min_passage_words:
            pairs.append(PseudoPair(f"pq-{doc_id}", title, doc_id, text))
            continue
        # a sentence is the query, the rest the positive: of the title and text (kind "title", no usable title) or
        # of the text, the title staying in the positive (kind "sentence")
        context, text = (title, text) if kind == "sentence" else ("", f"{title} {text}".strip())
        sentences = [s for s in _SENTENCE.split(text) if s.strip()]
        total = sum(len(s.split()) for s in sentences) + len(context.split())
        usable = [i for i, s in enumerate(sentences)
                  if len(s.split()) >= min_words and total - len(s.split()) >= min_passage_words]
        if len(sentences) < 2 or not usable:
            continue
        i = rng.choice(usable)
        rest = " ".join(([context] if context else []) + sentences[:i] + sentences[i + 1:])
        pairs.append(PseudoPair(f"pq-{doc_id}", sentences[i], doc_id, rest))
    return pairs


def check_pseudo_kind(kind: str) -> str:
    if kind not in PSEUDO_KINDS:
        raise ValueError(f"pseudo-query kind must be one of {PSEUDO_KINDS}, got {kind!r}")
    return kind


@dataclass(frozen=True)
class TrainExample:
    """One training pair: a query, its positive passage, and the document ids that are positives."""

    qid: str
    query: str
    passage: str
    positives: frozenset[str]


def supervised_examples(corpus: Corpus, queries: Queries, qrels: Qrels) -> list[TrainExample]:
    """One example per (judged query, relevant document in the corpus)."""
    out = []
    for q in queries:
        pos = frozenset(d for d, g in qrels.get(q, {}).items() if g > 0 and d in corpus)
        out.extend(TrainExample(q, queries[q], corpus[d].contents, pos) for d in sorted(pos))
    return out


def pseudo_examples(corpus: Corpus, seed: int = 0, kind: str = "title") -> list[TrainExample]:
    """One example per usable document, from ``pseudo_queries``."""
    return [TrainExample(p.qid, p.query, p.passage, frozenset([p.doc_id]))
            for p in pseudo_queries(corpus, seed, kind=kind)]
