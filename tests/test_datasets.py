"""Loaders on the four shared datasets, and every bad-input case with real files."""


import pytest

from retrieval.data import available_splits, load_corpus, load_dataset, load_qrels, load_queries
from retrieval.types import DataFormatError, DataWarning

# name, split, documents, judged queries, judgements (from ../shared/datasets/README.md and the files)
SHARED = [
    ("scifact", "train", 5183, 599, 688),
    ("scifact", "dev", 5183, 210, 231),
    ("cranfield", "test", 1400, 225, None),
    ("medline", "test", 1033, 30, None),
    ("adi", "test", 82, 35, None),
]


@pytest.mark.parametrize("name,split,docs,queries,judgements", SHARED)
def test_shared_datasets_load(datasets_root, name, split, docs, queries, judgements):
    ds = load_dataset(datasets_root / name, split)
    assert len(ds.corpus) == docs
    assert len(ds.queries) == queries
    assert set(ds.queries) == set(ds.qrels)
    if judgements is not None:
        assert sum(len(v) for v in ds.qrels.values()) == judgements
    assert all(ds.queries[q].strip() for q in ds.queries)
    assert all(d in ds.corpus for docs_ in ds.qrels.values() for d in docs_)


def test_scifact_splits_are_disjoint(datasets_root):
    train = load_dataset(datasets_root / "scifact", "train")
    dev = load_dataset(datasets_root / "scifact", "dev")
    assert not set(train.queries) & set(dev.queries)


def _beir(tmp_path, corpus_lines, queries_lines=None, qrels_text=None, split="test"):
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    queries_lines = queries_lines or ['{"_id": "q1", "text": "alpha"}']
    (tmp_path / "queries.jsonl").write_text("\n".join(queries_lines) + "\n", encoding="utf-8")
    qrels_text = qrels_text or "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
    (tmp_path / "qrels" / f"{split}.tsv").write_text(qrels_text, encoding="utf-8")
    return tmp_path


GOOD = ['{"_id": "d1", "title": "T", "text": "alpha beta"}', '{"_id": "d2", "title": "", "text": "gamma"}']


def test_malformed_json_names_file_and_line(tmp_path):
    path = _beir(tmp_path, [GOOD[0], '{"_id": "d2", "text": "oops"'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: malformed JSON"):
        load_dataset(path, "test")


def test_non_object_line(tmp_path):
    path = _beir(tmp_path, [GOOD[0], '["d2", "text"]'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: expected a JSON object"):
        load_dataset(path, "test")


def test_missing_id(tmp_path):
    path = _beir(tmp_path, [GOOD[0], '{"title": "x", "text": "y"}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: missing '_id' \(keys found: text, title\)"):
        load_dataset(path, "test")
    path = _beir(tmp_path, GOOD, queries_lines=['{"text": "no id"}'])
    with pytest.raises(DataFormatError, match=r"queries.jsonl:1: missing '_id'"):
        load_dataset(path, "test")


def test_duplicate_ids(tmp_path):
    path = _beir(tmp_path, [GOOD[0], GOOD[1], '{"_id": "d1", "text": "again"}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:3: duplicate document id 'd1' \(first seen on line 1\)"):
        load_dataset(path, "test")
    path = _beir(tmp_path, GOOD, queries_lines=['{"_id": "q1", "text": "a"}', '{"_id": "q1", "text": "b"}'])
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: duplicate query id 'q1'"):
        load_dataset(path, "test")
    path = _beir(tmp_path, GOOD, qrels_text="q1\td1\t1\nq1\td1\t2\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:2: judgement for query 'q1' and document 'd1' repeats line 1"):
        load_dataset(path, "test")


def test_integer_ids_become_strings(tmp_path):
    path = _beir(tmp_path, ['{"_id": 7, "text": "x"}'], ['{"_id": 1, "text": "q"}'], "1\t7\t1\n")
    ds = load_dataset(path, "test")
    assert list(ds.corpus) == ["7"] and ds.qrels == {"1": {"7": 1}}


def test_qrels_unknown_queries_and_documents_warn_with_counts(tmp_path):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\nq1\tnope2\t1\nq9\td1\t1\nq8\td2\t1\n"
    path = _beir(tmp_path, GOOD, qrels_text=qrels)
    with pytest.warns(DataWarning) as record:
        ds = load_dataset(path, "test")
    messages = [str(w.message) for w in record]
    assert any("2 judgement(s) name 2 query id(s) not in the queries file" in m for m in messages)
    assert any("2 judgement(s) name document ids not in the corpus" in m for m in messages)
    assert ds.qrels == {"q1": {"d1": 1}}
    assert list(ds.queries) == ["q1"]


def test_unknown_split_lists_available(tmp_path):
    path = _beir(tmp_path, GOOD, split="test")
    with pytest.raises(DataFormatError, match=r"unknown split 'dev'; available splits: test"):
        load_dataset(path, "dev")


def test_crlf_bom_missing_title_and_empty_text(tmp_path):
    (tmp_path / "qrels").mkdir()
    corpus = '\ufeff{"_id": "d1", "text": "alpha"}\r\n{"_id": "d2", "title": "only title", "text": ""}\r\n\r\n'
    (tmp_path / "corpus.jsonl").write_bytes(corpus.encode("utf-8"))
    (tmp_path / "queries.jsonl").write_bytes('\ufeff{"_id": "q1", "text": "alpha"}\r\n'.encode("utf-8"))
    (tmp_path / "qrels" / "test.tsv").write_bytes("\ufeffquery-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n".encode("utf-8"))
    ds = load_dataset(tmp_path, "test")
    assert ds.corpus["d1"].title == "" and ds.corpus["d1"].text == "alpha"
    assert ds.corpus["d2"].contents == "only title"
    assert ds.qrels == {"q1": {"d1": 1}}


def test_document_with_no_text_at_all_warns(tmp_path):
    path = _beir(tmp_path, [GOOD[0], '{"_id": "d2"}'])
    with pytest.warns(DataWarning, match="1 document\\(s\\) have neither title nor text"):
        ds = load_dataset(path, "test")
    assert ds.corpus["d2"].contents == ""


def test_wrong_field_types(tmp_path):
    path = _beir(tmp_path, ['{"_id": "d1", "text": 5}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:1: 'text' must be a string"):
        load_dataset(path, "test")
    path = _beir(tmp_path, ['{"_id": "d 1", "text": "x"}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:1: '_id' 'd 1': an id holds no white space"):
        load_dataset(path, "test")


def test_encoding_errors_name_the_file_line_and_fix(tmp_path):
    """A non-UTF-8 byte (a Latin-1 file) and a JSON escape for a lone surrogate both become DataFormatError."""
    path = _beir(tmp_path, GOOD)
    lines = (path / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"text", b"t\xe9xt", 1) if b"text" in lines[1] else b'{"_id": "d9", "text": "caf\xe9"}\n'
    (path / "corpus.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: not valid UTF-8 \(byte 0xe9 at column \d+\); save the file as UTF-8"):
        load_dataset(path, "test")
    path = _beir(tmp_path / "sur", ['{"_id": "d1", "text": "bad \\ud800 text"}'])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:1: 'text' holds U\+D800 .* lone surrogate"):
        load_dataset(path, "test")
    path = _beir(tmp_path / "qsur", GOOD, queries_lines=['{"_id": "q1", "text": "\\udfff"}'])
    with pytest.raises(DataFormatError, match=r"queries.jsonl:1: 'text' holds U\+DFFF"):
        load_dataset(path, "test")


def test_empty_query_texts_are_counted_in_a_warning(tmp_path):
    path = _beir(tmp_path, GOOD, queries_lines=['{"_id": "q1", "text": "  "}'])
    with pytest.warns(DataWarning, match="1 query text\\(s\\) are empty"):
        load_dataset(path, "test")


def test_bad_qrels_lines(tmp_path):
    path = _beir(tmp_path, GOOD, qrels_text="q1\td1\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:1: expected 'query-id<TAB>corpus-id<TAB>score'"):
        load_dataset(path, "test")
    path = _beir(tmp_path, GOOD, qrels_text="q1\td1\thigh\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:1: relevance grade must be an integer, got 'high'"):
        load_dataset(path, "test")


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataFormatError, match="not a dataset folder"):
        load_dataset(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        load_dataset(tmp_path / "missing", "test")


def test_msmarco_layout(tmp_path):
    (tmp_path / "collection.tsv").write_text("0\tfirst passage\r\n1\tsecond passage\r\n", encoding="utf-8")
    (tmp_path / "queries.dev.tsv").write_text("100\twhat is first\n101\tsecond?\n", encoding="utf-8")
    (tmp_path / "qrels.dev.tsv").write_text("100 0 0 1\n101\t0\t1\t1\n", encoding="utf-8")
    ds = load_dataset(tmp_path, "dev")
    assert ds.corpus["1"].text == "second passage"
    assert ds.qrels == {"100": {"0": 1}, "101": {"1": 1}}
    assert available_splits(tmp_path) == ["dev"]
    with pytest.raises(DataFormatError, match="unknown split 'train'; available splits: dev"):
        load_dataset(tmp_path, "train")
    (tmp_path / "collection.tsv").write_text("0\tfirst\n0\tdup\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"collection.tsv:2: duplicate document id '0'"):
        load_corpus(tmp_path / "collection.tsv")
    (tmp_path / "queries.dev.tsv").write_text("100 no tab here\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"queries.dev.tsv:1: expected 'qid<TAB>text'"):
        load_queries(tmp_path / "queries.dev.tsv")


def test_trec_qrels_with_graded_relevance(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1 0 12 2\n1 0 13 -1\n", encoding="utf-8")
    assert load_qrels(path) == {"1": {"12": 2, "13": -1}}


def test_irds_ids_load_offline_from_where_ir_datasets_keeps_its_files(datasets_root, tmp_path):
    """`irds:beir/scifact/test` through ir_datasets, with no network: the BEIR zip is placed where ir_datasets
    keeps its download (here: the ADI files under scifact's name), so it reads that instead of downloading.
    Run in a child process, because ir_datasets fixes its home folder when it is first imported."""
    import json
    import subprocess
    import sys
    import zipfile

    adi = datasets_root / "adi"
    home = tmp_path / "irds"
    (home / "beir" / "scifact").mkdir(parents=True)
    with zipfile.ZipFile(home / "beir" / "scifact" / "source.zip", "w") as z:
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            z.write(adi / name, f"scifact/{name}")
    code = ("import json, sys; from retrieval.data import load_dataset; from retrieval.cli import check_split\n"
            "ds = load_dataset('irds:beir/scifact/test', 'train'); check_split('irds:beir/scifact', 'test')\n"
            "print(json.dumps({'name': ds.name, 'split': ds.split, 'docs': {d: [ds.corpus[d].title, ds.corpus[d].text]"
            " for d in ds.corpus}, 'queries': dict(ds.queries.items()), 'qrels': ds.qrels}))\n"
            "try:\n    check_split('irds:beir/scifact', 'dev')\nexcept Exception as e:\n    print(type(e).__name__, e, file=sys.stderr)\n")
    env = {**__import__("os").environ, "IR_DATASETS_HOME": str(home), "IR_DATASETS_SKIP_DISK_FREE": "true"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = load_dataset(adi, "test")
    assert got["name"] == "beir-scifact-test" and got["split"] == "test"  # the id's own split wins over the default
    assert got["docs"] == {d: [want.corpus[d].title, want.corpus[d].text] for d in want.corpus}
    assert got["queries"] == dict(want.queries.items()) and got["qrels"] == want.qrels
    assert "DataFormatError" in out.stderr and "no judged queries" in out.stderr  # beir/scifact/dev: not there
