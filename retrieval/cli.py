"""Flag groups shared by the project's command lines (Pyserini's habit: each group defined once).

Every CLI that reads a dataset, writes an artefact, caches indexes, picks a device or trains a LoRA adapter
adds the same flags with the same names, defaults and help through these functions. The pipeline's own
settings have theirs in ``retrieval.pipeline.settings.add_pipeline_args``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .lora.settings import LoraSettings


def add_dataset_args(p: argparse.ArgumentParser, split: str | None = "train", split_help: str | None = None) -> None:
    """``--dataset DIR`` (BEIR or MS MARCO folder) and ``--split``."""
    p.add_argument("--dataset", type=Path, required=True, help="BEIR or MS MARCO folder")
    p.add_argument("--split", default=split, required=split is None,
                   help=split_help or f"split whose judgements are used (default: {split})")


def add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--output DIR`` and ``--overwrite``."""
    p.add_argument("--output", type=Path, required=True, help=f"the folder to write: {what}")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """``--cache-dir`` (also ``--index-dir``): where indexes and trained adapters are cached."""
    p.add_argument("--cache-dir", "--index-dir", dest="cache_dir", type=Path, default=None,
                   help="where indexes and trained adapters are cached (default: $RETRIEVAL_CACHE or ~/.cache/retrieval)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device: cuda, cpu, ... (default: a GPU when present)")


def add_lora_args(p: argparse.ArgumentParser, defaults: LoraSettings) -> None:
    """``--rank``, ``--alpha``, ``--dropout``, ``--targets``: the adapter's LoRA settings."""
    p.add_argument("--rank", type=int, default=defaults.r, help=f"LoRA rank r (default: {defaults.r})")
    p.add_argument("--alpha", type=int, default=defaults.alpha, help=f"LoRA alpha (default: {defaults.alpha})")
    p.add_argument("--dropout", type=float, default=defaults.dropout, help=f"LoRA dropout (default: {defaults.dropout})")
    p.add_argument("--targets", nargs="+", default=list(defaults.target_modules),
                   help=f"module names LoRA adapts (default: {' '.join(defaults.target_modules)})")


def lora_from_args(args: argparse.Namespace, cls: type[LoraSettings] = LoraSettings, **fields) -> LoraSettings:
    """The LoRA settings that ``add_lora_args``'s flags give (``fields`` adds those the flags do not set)."""
    return cls(r=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=tuple(args.targets), **fields)
