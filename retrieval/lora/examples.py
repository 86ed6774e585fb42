"""Training examples for both encoders: (query, positive passage) pairs from judgements, or from the corpus.

``supervised_examples`` makes one example per judged positive. ``pseudo_examples`` makes pseudo-queries from
the corpus itself, for domains with no judgements: for a document with a title, the title is the query and the text is its positive passage; without
a title, one sentence is the query and the rest of the passage is the positive. The query's words are
removed from the front of the positive when the text repeats the title (as Cranfield's does), so the
pair never matches by copying.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..types import Corpus, Qrels, Queries

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class PseudoPair:
    qid: str
    query: str
    doc_id: str
    passage: str


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def pseudo_queries(corpus: Corpus, seed: int = 0, min_words: int = 3, min_passage_words: int = 10) -> list[PseudoPair]:
    """One (query, passage) pair per usable document, deterministic for a seed."""
    rng = random.Random(seed)
    pairs = []
    for doc_id, doc in corpus.items():
        title, text = doc.title.strip(), doc.text.strip()
        if title and _norm(text).startswith(_norm(title)):
            text = text[len(title):].lstrip(" .\n")  # text repeats its title: drop it from the positive
            text = text if _norm(text) else ""
        if title and len(title.split()) >= min_words and len(text.split()) >= min_passage_words:
            pairs.append(PseudoPair(f"pq-{doc_id}", title, doc_id, text))
            continue
        sentences = [s for s in _SENTENCE.split(f"{title} {text}".strip()) if s.strip()]
        total = sum(len(s.split()) for s in sentences)
        usable = [i for i, s in enumerate(sentences)
                  if len(s.split()) >= min_words and total - len(s.split()) >= min_passage_words]
        if len(sentences) < 2 or not usable:
            continue
        i = rng.choice(usable)
        rest = " ".join(sentences[:i] + sentences[i + 1:])
        pairs.append(PseudoPair(f"pq-{doc_id}", sentences[i], doc_id, rest))
    return pairs


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


def pseudo_examples(corpus: Corpus, seed: int = 0) -> list[TrainExample]:
    """One example per usable document, from ``pseudo_queries``."""
    return [TrainExample(p.qid, p.query, p.passage, frozenset([p.doc_id])) for p in pseudo_queries(corpus, seed)]
