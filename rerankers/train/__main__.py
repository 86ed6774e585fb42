"""``python -m rerankers.train``: the command line of the training in ``rerankers.train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.cli import (add_cache_args, add_dataset_args, add_debug_arg, add_device_args, add_lora_args, add_output_args,
                           check_output, count, lora_from_args, positive_float, positive_int, run_cli)
from retrieval.data import load_dataset
from retrieval.lora.examples import PSEUDO_KINDS
from retrieval.lora.training import DROPOUTS, dropout_switches, save_trained
from retrieval.stages.bm25 import BM25

from ..cross_encoder import POOLER_INITS, PRECISIONS, CrossEncoderReranker, RerankLoraSettings
from ..passages import PASSAGES
from . import (LOSSES, MODES, PACKAGED_KEEP_LAYERS, RerankTrainSettings, default_keep_layers, train_reranker,
               training_examples)


def main(argv: list[str] | None = None) -> int:
    """``python -m rerankers.train --dataset DIR --mode supervised|corpus --output DIR``."""
    defaults = RerankTrainSettings()
    p = argparse.ArgumentParser(prog="python -m rerankers.train", description=main.__doc__)
    add_dataset_args(p, split_help="split with judgements (supervised); any split for corpus (default: train)")
    p.add_argument("--mode", choices=MODES, default=defaults.mode)
    p.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    add_output_args(p, "the reranker (peft files + retrieval_config.json)")
    p.add_argument("--model", default=None, help="backbone or cross-encoder: HF id or folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--teacher", default=None, help="a cross-encoder (HF id or folder, or a saved reranker) to distil from")
    p.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    p.add_argument("--lr", type=positive_float, default=defaults.lr)
    p.add_argument("--head-lr", type=positive_float, default=defaults.head_lr)
    p.add_argument("--max-grad-norm", type=positive_float, default=defaults.max_grad_norm,
                   help="clip the gradients' global norm to this before each step (default: no clipping)")
    p.add_argument("--plateau-retries", type=count, default=defaults.plateau_retries,
                   help="times a training whose last epoch ended on the listwise plateau (it did not learn) trains "
                        f"again from a fresh adapter, another init and order (default {defaults.plateau_retries}; 0: never)")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    p.add_argument("--negatives", type=positive_int, default=defaults.negatives)
    p.add_argument("--max-length", type=positive_int, default=defaults.max_length)
    p.add_argument("--passage", choices=PASSAGES, default=defaults.passage,
                   help="what it reads of a document longer than --max-length: first (its opening; default) or focused "
                        "(its first sentence, then the sentences sharing most query terms)")
    p.add_argument("--keep-layers", type=positive_int, default=None,
                   help=f"the backbone's bottom layers the reranker keeps (default: {PACKAGED_KEEP_LAYERS} of the packaged "
                        f"MiniLM's 6, half a pair's cost; all of another --model)")
    p.add_argument("--max-items", type=positive_int, default=defaults.max_items)
    p.add_argument("--pseudo-items", type=count, default=defaults.pseudo_items,
                   help="supervised mode: pseudo-queries from the corpus added to the judged training items (default 0)")
    p.add_argument("--pseudo-kind", choices=PSEUDO_KINDS, default=defaults.pseudo_kind,
                   help="which pseudo-queries: title (a document's title -> its text; default) or sentence (one "
                        "sentence of its text -> the title and the rest)")
    p.add_argument("--train-dropout", choices=DROPOUTS, default="none",
                   help="dropout while training: none (default; 2.2x faster steps on a CPU), all (the backbone's, the "
                        "attention probabilities', LoRA's) or no-attention (all but the attention probabilities')")
    add_lora_args(p, defaults.lora)
    p.add_argument("--new-head-pooler", choices=POOLER_INITS, default=defaults.lora.new_head_pooler,
                   help="a new head's pooler: the checkpoint's, with LoRA (default), or its own, starting as the identity")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    add_device_args(p)
    p.add_argument("--seed", type=int, default=defaults.seed)
    add_cache_args(p)
    add_debug_arg(p)
    args = p.parse_args(argv)
    check_output(args)

    ds = load_dataset(args.dataset, args.split)
    keep = args.keep_layers if args.keep_layers is not None else default_keep_layers(args.model)
    settings = RerankTrainSettings(mode=args.mode, loss=args.loss, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
                                   batch_size=args.batch_size, negatives=args.negatives, max_length=args.max_length,
                                   max_items=args.max_items, pseudo_items=args.pseudo_items,
                                   pseudo_kind=args.pseudo_kind, passage=args.passage, keep_layers=keep,
                                   seed=args.seed, max_grad_norm=args.max_grad_norm,
                                   plateau_retries=args.plateau_retries,
                                   **dropout_switches(args.train_dropout, "reranker training"),
                                   lora=lora_from_args(args, RerankLoraSettings,
                                                       new_head_pooler=args.new_head_pooler))
    reranker = CrossEncoderReranker(args.model, max_length=args.max_length, device=args.device, precision=args.precision,
                                    passage=args.passage, keep_layers=keep)
    settings.lora.check_layers(int(reranker.model.config.num_hidden_layers), name="--layers")
    teacher = None  # loaded before any work, so a wrong path is reported at once
    if args.teacher:
        teacher = (CrossEncoderReranker.load(args.teacher, device=args.device)
                   if (Path(args.teacher) / "retrieval_config.json").is_file()
                   else CrossEncoderReranker(args.teacher, device=args.device))
    bm25, _ = BM25.from_corpus(ds.corpus, cache_dir=args.cache_dir / "bm25" if args.cache_dir else None)
    examples = training_examples(args.mode, ds.corpus, ds.queries, ds.qrels, args.seed)
    result = train_reranker(reranker, ds.corpus, examples, [bm25], settings, teacher=teacher)
    return save_trained(reranker, result, args.output, args.dataset, args.split, args.overwrite, "reranker")


if __name__ == "__main__":
    sys.exit(run_cli(main))
