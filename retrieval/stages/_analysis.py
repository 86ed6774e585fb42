"""Text analysis for the Java-free BM25 engines: text -> the terms an index stores and a query looks up.

Two analyzers, chosen by name and recorded in each index's config (an index is always queried with the
analyzer it was built with):

- ``lucene-english``: as close to Anserini's ``DefaultEnglishAnalyzer`` (the Lucene engine's) as Python gets:
  UAX#29 word breaks (``.``, ``'`` and ``:`` join letters, ``.``, ``,`` and ``;`` join digits, symbols such as
  ``©`` are tokens, super- and subscripts break words), English possessives removed, lower case, Lucene's English
  stop words, and Porter's stemmer as Lucene has it (Porter's own C version: NLTK's ``MARTIN_EXTENSIONS``, words
  of one or two letters left alone). On SciFact its terms equal Lucene's for every query and all but 4 of
  5,183 documents.
- ``porter-words``: ``\\w+`` tokens, lower case, the same stop words, snowball's Porter (PyStemmer); what the
  rank-bm25 engine was built with.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import unicodedata

# Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET): both analyzers drop the same words.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)

_WORDS = re.compile(r"\w+", re.UNICODE)
_LETTER = r"[^\W\d_]"
# Extended_Pictographic characters, which Lucene's StandardTokenizer emits as tokens of their own
_PICTOGRAPHIC = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf\u23e9-\u23f3"
                 "\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u27bf\u2934\u2935\u2b05-\u2b07"
                 "\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299\U0001F000-\U0001FAFF")
_UAX29 = re.compile(rf"\w+(?:(?:(?<={_LETTER})[.'’:](?={_LETTER})|(?<=\d)[.,;'’](?=\d))\w+)*|[{_PICTOGRAPHIC}]",
                    re.UNICODE)
_POSSESSIVE = ("'s", "’s", "＇s")
_no_table: dict[int, str] | None = None  # super- and subscripts, fractions (Unicode "No"): word breaks in UAX#29
_local = threading.local()


def _number_others() -> dict[int, str]:
    global _no_table
    if _no_table is None:
        _no_table = {i: " " for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) == "No"}
    return _no_table


def _snowball_porter():
    s = getattr(_local, "snowball", None)
    if s is None:
        try:
            import Stemmer
        except ImportError:
            raise ImportError("the porter-words analyzer stems with PyStemmer: pip install PyStemmer") from None
        s = _local.snowball = Stemmer.Stemmer("porter")
    return s


@functools.lru_cache(maxsize=1)
def _martin_porter():
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        raise ImportError("the lucene-english analyzer stems with NLTK's Porter: pip install nltk") from None
    stemmer = PorterStemmer(mode=PorterStemmer.MARTIN_EXTENSIONS)
    return functools.lru_cache(maxsize=1 << 20)(lambda word: stemmer.stem(word, to_lowercase=False))


def porter_words(text: str) -> list[str]:
    """``\\w+`` tokens, lower case, Lucene's English stop words removed, Porter-stemmed (PyStemmer)."""
    tokens = [t for t in _WORDS.findall(text.lower()) if t not in STOP_WORDS]
    return _snowball_porter().stemWords(tokens) if tokens else tokens


def lucene_english(text: str) -> list[str]:
    """The terms Anserini's default English analyzer makes of ``text`` (see the module docstring)."""
    stem = _martin_porter()
    out = []
    for token in _UAX29.findall(text.lower().translate(_number_others())):
        if token.endswith(_POSSESSIVE):
            token = token[:-2]
        if token and token not in STOP_WORDS:
            out.append(stem(token))
    return out


ANALYZERS = {"lucene-english": lucene_english, "porter-words": porter_words}


def analyzer(name: str):
    if name not in ANALYZERS:
        raise ValueError(f"unknown analyzer {name!r}; this library has {sorted(ANALYZERS)} (the index was built "
                         f"by another version: build it again)")
    return ANALYZERS[name]
