import pytest

from retrieval.types import Corpus, DataFormatError, Document, Queries, Ranking


def test_document_contents_joins_title_and_text():
    assert Document("d", "body", "Title").contents == "Title body"
    assert Document("d", "body").contents == "body"
    assert Document("d", "", "Title").contents == "Title"


def test_corpus_rejects_duplicates_and_fingerprint_tracks_content():
    with pytest.raises(DataFormatError, match="duplicate document id 'a'"):
        Corpus([Document("a", "x"), Document("a", "y")])
    c1 = Corpus([Document("a", "x"), Document("b", "y")])
    c2 = Corpus([Document("a", "x"), Document("b", "z")])
    c3 = Corpus([Document("a", "x"), Document("by")])  # the same bytes in order, other boundaries
    assert len({c1.fingerprint(), c2.fingerprint(), c3.fingerprint()}) == 3
    assert c1.fingerprint() == Corpus([Document("a", "x"), Document("b", "y")]).fingerprint()


@pytest.mark.parametrize("bad", ["", "has space", "tab\there", "new\nline", "nul\x00", "zw\u200bj", "sur\ud800",
                                 "a//b", "./a", "a/..", "/lead", ".", "..", "x" * 513])
def test_one_id_rule_for_documents_and_queries(bad):
    with pytest.raises(DataFormatError, match="id"):
        Document(bad, "text")
    with pytest.raises(DataFormatError, match="query id"):
        Queries({bad: "text"})


@pytest.mark.parametrize("good", ["d1", "a/b", "ünï-cødé_42", "10.1038/nature12373", "x" * 512, "a:b@c#d?e%f"])
def test_ids_the_rule_accepts(good):
    assert Document(good, "t").id == good and list(Queries({good: "t"})) == [good]


def test_texts_must_be_valid_unicode():
    with pytest.raises(DataFormatError, match="lone surrogate"):
        Document("d", "bad \ud800 text")
    with pytest.raises(DataFormatError, match="lone surrogate"):
        Queries({"q": "\udfff"})


def test_queries_type_checks():
    with pytest.raises(TypeError, match="query ids must be strings"):
        Queries({1: "x"})
    with pytest.raises(TypeError, match="text must be a string"):
        Queries({"1": None})
    assert list(Queries({"b": "x", "a": "y"}).subset(["a"]).items()) == [("a", "y")]


def test_ranking_top_k_and_order():
    r = Ranking({"q": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 2.0}})
    assert [d for d, _ in r.ranked("q")] == ["b", "c", "d", "a"]
    assert list(r.top_k(2).scores["q"]) == ["b", "c"]
    with pytest.raises(ValueError, match="positive integer"):
        r.top_k(0)


def test_trec_round_trip(tmp_path):
    r = Ranking({"q1": {"d1": 0.5, "d2": 1.25}, "q2": {"d3": -1.0}})
    path = tmp_path / "run.trec"
    r.to_trec(path, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 1.250000 t"
    back = Ranking.from_trec(path)
    assert back.scores == r.scores


def test_trec_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 notanumber t\n")
    with pytest.raises(DataFormatError, match=r"bad.trec:2: score column must be a number"):
        Ranking.from_trec(bad)
    bad.write_text("q1 Q0 d1 1 1.0\n")
    with pytest.raises(DataFormatError, match=r"bad.trec:1: a TREC run line has 6 columns"):
        Ranking.from_trec(bad)
    with pytest.raises(ValueError, match="no spaces"):
        Ranking({"q 1": {"d": 1.0}}).to_trec(tmp_path / "x.trec")
