"""``python -m encoders.train``: the command line of the training in ``encoders.train``."""

from __future__ import annotations

import argparse
import sys

from retrieval.cli import (add_cache_args, add_dataset_args, add_debug_arg, add_device_args, add_lora_args, add_output_args,
                           check_output, fraction, lora_from_args, positive_float, positive_int, run_cli)
from retrieval.data import load_dataset
from retrieval.lora.settings import LoraSettings
from retrieval.lora.training import DROPOUTS, save_trained
from retrieval.stages.bm25 import BM25
from retrieval.stages.dense import document_index

from ..bi_encoder import BiEncoder
from . import MODES, default_settings, train_dense


def main(argv: list[str] | None = None) -> int:
    """``python -m encoders.train --dataset DIR --mode query|supervised|corpus|corpus-query --output DIR``."""
    p = argparse.ArgumentParser(prog="python -m encoders.train", description=main.__doc__)
    add_dataset_args(p, split_help="split with judgements (query, supervised); any split for corpus modes (default: train)")
    p.add_argument("--mode", choices=MODES, default="query")
    add_output_args(p, "the adapter (peft files + retrieval_config.json)")
    p.add_argument("--model", default=None, help="base model: HF id or folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: query 8, corpus-query 4, supervised 4, corpus 2")
    p.add_argument("--lr", type=positive_float, default=None, help="default: 3e-4 query-side, 2e-4 both sides")
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_lora_args(p, LoraSettings())
    p.add_argument("--val-fraction", type=fraction, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-dropout", choices=DROPOUTS, default=None,
                   help="dropout while training: all (the backbone's, the attention probabilities', LoRA's), "
                        "no-attention, or none (on a CPU drawing the masks is ~40%% of a step); default: none for "
                        "--mode query, all for the others")
    add_device_args(p)
    add_cache_args(p)
    add_debug_arg(p)
    args = p.parse_args(argv)
    check_output(args)

    ds = load_dataset(args.dataset, args.split)
    settings = default_settings(args.mode, args.epochs, dropout=args.train_dropout)
    settings.lr = args.lr or settings.lr
    settings.batch_size, settings.val_fraction, settings.seed = args.batch_size, args.val_fraction, args.seed
    settings.lora = lora_from_args(args, side="both" if args.mode in ("supervised", "corpus") else "query")
    encoder = BiEncoder(args.model, device=args.device)
    index = first = None
    cache = args.cache_dir
    if args.mode in ("query", "corpus-query"):
        index, _, _ = document_index(encoder, ds.corpus, "Flat", cache_dir=cache / "dense" if cache else None)
    else:
        first, _ = BM25.from_corpus(ds.corpus, cache_dir=cache / "bm25" if cache else None)
    encoder, result = train_dense(args.mode, ds.corpus, ds.queries, ds.qrels, settings, encoder, index, first)
    return save_trained(encoder, result, args.output, args.dataset, args.split, args.overwrite, "adapter")


if __name__ == "__main__":
    sys.exit(run_cli(main))
