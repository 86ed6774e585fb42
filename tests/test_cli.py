"""The command lines: a known error is one ``error: ...`` line naming the problem (file, line, fix) and exit
status 2, never a traceback (``--debug`` shows it); every argument is checked before any work starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.__main__ import main as bench_main
from encoders.train.__main__ import main as dense_main
from rerankers.train.__main__ import main as rerank_main
from retrieval.__main__ import main as retrieval_main
from retrieval.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture()
def latin1_adi(datasets_root, tmp_path) -> Path:
    """ADI with one Latin-1 byte in line 5 of the corpus (a file saved in the wrong encoding)."""
    folder = tmp_path / "adi-latin1"
    shutil.copytree(datasets_root / "adi", folder)
    lines = (folder / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"text": "', b'"text": "caf\xe9 ', 1)
    (folder / "corpus.jsonl").write_bytes(b"".join(lines))
    return folder


@pytest.mark.parametrize("cli", ["retrieval", "benchmarks", "encoders", "rerankers"])
def test_bad_bytes_in_a_data_file_are_one_line_in_every_cli(cli, latin1_adi, tmp_path, capsys):
    main, argv = {
        "retrieval": (retrieval_main, ["train", "--dataset", str(latin1_adi), "--split", "test", "--output", str(tmp_path / "o")]),
        "benchmarks": (bench_main, ["run", "--dataset", str(latin1_adi), "--split", "test", "--pipeline", "bm25",
                                    "--output", str(tmp_path / "o")]),
        "encoders": (dense_main, ["--dataset", str(latin1_adi), "--split", "test", "--output", str(tmp_path / "o")]),
        "rerankers": (rerank_main, ["--dataset", str(latin1_adi), "--split", "test", "--output", str(tmp_path / "o")]),
    }[cli]
    assert run_cli(main, argv) == 2
    line = _error(capsys)
    assert line.startswith("error: ") and "corpus.jsonl:5: not valid UTF-8 (byte 0xe9" in line and "iconv" in line


def test_debug_shows_the_traceback(latin1_adi, tmp_path):
    from retrieval.types import DataFormatError

    with pytest.raises(DataFormatError, match="corpus.jsonl:5"):
        run_cli(bench_main, ["run", "--dataset", str(latin1_adi), "--split", "test", "--pipeline", "bm25",
                             "--output", str(tmp_path / "o"), "--debug"])


def test_argument_mistakes_are_refused_before_any_work(datasets_root, tiny_model_dir, tmp_path, capsys):
    adi = str(datasets_root / "adi")
    run = ["run", "--dataset", adi, "--split", "test", "--output", str(tmp_path / "o")]
    cases = [  # (main, argv, what the one line says)
        (bench_main, [*run, "--pipeline", "bm25", "--baseline", "bm99"], "baseline 'bm99' is not among the conditions"),
        (bench_main, [*run, "--pipeline", "hybrid"], "unknown training split (--train-split) 'train'"),
        (bench_main, [*run, "--pipeline", "dense", "--dense-factory", "IVF9x,Flat", "--dense-model", str(tiny_model_dir)],
         "FAISS cannot build factory string 'IVF9x,Flat'"),
        (bench_main, [*run, "--pipeline", "full-corpus", "--rerank-model", str(tmp_path / "no-such-model")],
         "model folder"),
        (retrieval_main, ["train", "--dataset", adi, "--split", "test", "--dev-split", "dev", "--output",
                          str(tmp_path / "p")], "unknown --dev-split 'dev'; available splits: test"),
        (retrieval_main, ["train", "--dataset", adi, "--split", "test", "--output", str(tmp_path / "p"),
                          "--dense-model", str(tiny_model_dir), "--dense-factory", "IVF1024,Flat"],
         "'IVF1024,Flat' has 1024 lists but only 82 vectors"),
        (retrieval_main, ["train", "--dataset", adi, "--split", "test", "--output", str(tmp_path / "p"),
                          "--rerank-depths", "50", "--dense-k", "20"], "exceeds the dense stage's k"),
        (rerank_main, ["--dataset", adi, "--split", "test", "--output", str(tmp_path / "r"), "--model",
                       str(tiny_model_dir.parent / "hf"), "--teacher", "./no/such/teacher"], "model folder ./no/such/teacher not found"),
        (dense_main, ["--dataset", adi, "--split", "test", "--output", str(tmp_path / "d"), "--model",
                      "someorg/no-such-model"], "is not a local folder and not in the Hugging Face cache"),
    ]
    for main, argv, says in cases:
        t0 = time.perf_counter()
        assert run_cli(main, argv) == 2, argv
        line = _error(capsys)
        assert line.startswith("error: ") and says in line, (argv, line)
        assert time.perf_counter() - t0 < 30, f"{argv}: refused only after {time.perf_counter() - t0:.0f} s"
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("cli", ["retrieval train", "retrieval shard", "encoders", "rerankers"])
def test_an_existing_output_is_refused_unless_overwrite(cli, datasets_root, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    data = ["--dataset", str(datasets_root / "adi"), "--split", "test", "--output", str(out)]
    main, argv = {"retrieval train": (retrieval_main, ["train", *data]),
                  "retrieval shard": (retrieval_main, ["shard", "--pipeline", str(tmp_path / "p"), "--shards", "2",
                                                       "--output", str(out)]),
                  "encoders": (dense_main, data), "rerankers": (rerank_main, data)}[cli]
    assert run_cli(main, argv) == 2
    assert _error(capsys) == f"error: {out} exists; pass --overwrite to replace it"
    assert [f.name for f in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_two_datasets_with_one_name_are_refused(datasets_root, tmp_path, capsys):
    other = tmp_path / "elsewhere" / "adi"
    shutil.copytree(datasets_root / "adi", other)
    assert run_cli(bench_main, ["run", "--dataset", str(datasets_root / "adi"), "--dataset", str(other), "--split", "test",
                                "--pipeline", "bm25", "--output", str(tmp_path / "o")]) == 2
    assert "both named 'adi': their results would overwrite each other" in _error(capsys)


@pytest.mark.parametrize("argv", [
    ["benchmarks", "run", "--latency-queries", "-3"], ["encoders.train", "--epochs", "0"],
    ["rerankers.train", "--batch-size", "0"], ["retrieval", "train", "--bm25-k", "x"]])
def test_nonsense_numbers_are_usage_errors(argv, capsys):
    module, *rest = argv
    main = {"benchmarks": bench_main, "encoders.train": dense_main, "rerankers.train": rerank_main,
            "retrieval": retrieval_main}[module]
    with pytest.raises(SystemExit) as exit:
        main([*rest, "--dataset", "x", "--split", "s", "--output", "o"] if module != "benchmarks" else rest)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_dense_settings_refuse_zero_epochs():
    from encoders.train import DenseTrainSettings, default_settings

    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        default_settings("query", 0)
    with pytest.raises(ValueError, match="val_fraction"):
        DenseTrainSettings(val_fraction=1.0)


@pytest.mark.parametrize("module", ["retrieval", "benchmarks", "encoders.train", "rerankers.train"])
def test_each_module_cli_reports_known_errors_in_one_line(module, tmp_path):
    """Through ``python -m`` (the wiring a user runs): a missing dataset folder."""
    argv = {"retrieval": ["train"], "benchmarks": ["run", "--pipeline", "bm25"]}.get(module, [])
    out = subprocess.run([sys.executable, "-m", module, *argv, "--dataset", str(tmp_path / "nowhere"), "--split", "test",
                          "--output", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and lines[-1].startswith("error: ") and "nowhere" in lines[-1], out.stderr
    assert len(lines) == 1, out.stderr  # nothing before it: runpy warns when `python -m` runs a module already imported
