"""Which part of a long document a cross-encoder reads: its opening, or the sentences that speak to the query.

A cross-encoder reads ``max_length`` tokens of query and document together; a scientific abstract is often
longer, and its result and conclusion sentences come last. ``first`` (what every cross-encoder does) reads the
document's opening and cuts the rest. ``focused`` reads, within the same tokens, the document's first sentence
(where contents join a title and the opening sentence: both) and then the sentences that share the most query
terms (ties to the earlier), in the document's own order: query-focused passage selection (the cheap first step
of intra-document cascading, Hofstätter et al. 2021, "Intra-Document Cascading", with a term match as the cheap
selector), so a pair costs what it cost before. A document that fits is read whole either way.

Terms are those of the ``porter-words`` BM25 analyzer (lower case, stop words out, Porter-stemmed); sentences end
at ``.``, ``!`` or ``?`` followed by a space and a capital, a digit or a bracket.
"""

from __future__ import annotations

import re
from typing import Sequence

from retrieval.stages._analysis import porter_words

PASSAGES = ("first", "focused")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def check_passage(passage: str) -> str:
    if passage not in PASSAGES:
        raise ValueError(f"passage must be one of {PASSAGES} (which part of a long document the reranker reads), "
                         f"got {passage!r}")
    return passage


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def focus(query: str, parts: Sequence[str], sizes: Sequence[int], room: int) -> str:
    """The part of a text (``parts``: its sentences, ``sizes``: their tokens) read in ``room`` tokens: the first
    sentence, then the sentences sharing most of ``query``'s terms, joined in the text's order until ``room`` is
    used (the last one may run over it: the tokenizer cuts it). All of it when it fits."""
    if len(parts) < 2 or sum(sizes) <= room:
        return " ".join(parts)
    terms = set(porter_words(query))
    shared = [len(terms.intersection(porter_words(s))) for s in parts[1:]]
    keep, used = {0}, sizes[0]
    for i in sorted(range(1, len(parts)), key=lambda i: (-shared[i - 1], i)):
        if used >= room:
            break
        keep.add(i)
        used += sizes[i]
    return " ".join(parts[i] for i in sorted(keep))


def read(passage: str, queries: Sequence[str], docs: Sequence[str], max_length: int, tokenizer) -> list[str]:
    """``docs`` as a cross-encoder reading ``max_length`` tokens of each (query, doc) pair sees them (``passage``
    in ``PASSAGES``); ``tokenizer``: the model's (its special tokens for a pair are left room for). A document of
    one sentence, or one that fits, is returned as it is."""
    if passage == "first" or not docs:
        return list(docs)
    special = tokenizer.num_special_tokens_to_add(pair=True)
    parts = [sentences(d) for d in docs]
    unique = list(dict.fromkeys(queries))
    texts = unique + [s for p in parts for s in p]
    # one tokenizer call for every query and sentence: a call has a fixed cost (~2 ms) whatever its size
    sizes = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    q_len, at, out = dict(zip(unique, sizes)), len(unique), []
    for q, d, p in zip(queries, docs, parts):
        mine, at = sizes[at:at + len(p)], at + len(p)
        room = max(max_length - special - q_len[q], 1)
        out.append(d if len(p) < 2 or sum(mine) <= room else focus(q, p, mine, room))  # fits: the text as given
    return out
