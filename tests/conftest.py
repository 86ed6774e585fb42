"""Shared fixtures. Real data is read from ../shared/datasets (or $RETRIEVAL_DATASETS) at run time.

Slow end-to-end tests carry the ``slow`` marker and run with ``--slow`` (the README's test command and
CI pass it); the default run stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = Path(os.environ.get("RETRIEVAL_DATASETS", REPO.parent / "shared" / "datasets"))
    if not (root / "adi" / "corpus.jsonl").is_file():
        message = f"shared datasets not found at {root} (set RETRIEVAL_DATASETS)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has ../shared: a missing folder is an error, never a skip
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def adi(datasets_root):
    from benchmarks.datasets import load_dataset

    return load_dataset(datasets_root / "adi", "test")


@pytest.fixture(scope="session")
def adi_lucene(adi, tmp_path_factory):
    """A Lucene index of ADI (82 documents), built once per session."""
    from retrieval.stages.bm25 import BM25

    return BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "adi-lucene", k=50)


@pytest.fixture(scope="session")
def adi_rank(adi, tmp_path_factory):
    from retrieval.stages.bm25 import BM25

    return BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "adi-rank", backend="rank_bm25", k=50)
