"""What the project's command lines share: flag groups (Pyserini's habit: each group defined once), argument
types that refuse nonsense at once, and how a command reports a known error.

Every CLI that reads a dataset, writes an artefact, caches indexes, picks a device or trains a LoRA adapter
adds the same flags with the same names, defaults and help through these functions. The pipeline's own
settings have theirs in ``retrieval.pipeline.settings.add_pipeline_args``. ``run_cli`` runs a command's
``main``: a known kind of error (bad data, a missing file, a damaged artefact, settings that do not fit)
prints one ``error: ...`` line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .data import available_splits, is_irds, resolve_irds
from .java import JavaUnavailable
from .lora.settings import LoraSettings
from .types import DataFormatError

# Errors a user can fix from the message alone (ValueError covers DataFormatError, the mismatch and damage errors
# and bad settings); anything else is a bug and keeps its traceback.
USER_ERRORS = (DataFormatError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, JavaUnavailable, ImportError, ConnectionError)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``: a known error is one line on stderr and status 2 (``--debug``: the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if "--debug" in args:
            raise
        message = "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")


def _number(kind: type, low, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1, "a positive integer")
count = _number(int, 0, "0 or more")
positive_float = _number(float, 1e-300, "a positive number")


def fraction(text: str) -> float:
    value = _number(float, 0.0, "between 0 and 1")(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def check_split(path: Path, split: str, what: str = "split") -> None:
    """Refuse a split a dataset folder does not have, naming the ones it has (before any work); for ``irds:<id>``,
    an id (or ``<id>/<split>``) the ir_datasets catalogue does not have, or one without judgements."""
    if is_irds(path):
        resolve_irds(path, split)
        return
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: dataset folder not found")
    splits = available_splits(path)
    if split not in splits:
        raise DataFormatError(f"{path}: unknown {what} {split!r}; available splits: {', '.join(splits) or 'none'}")


def add_dataset_args(p: argparse.ArgumentParser, split: str | None = "train", split_help: str | None = None) -> None:
    """``--dataset DIR`` (BEIR or MS MARCO folder) and ``--split``."""
    p.add_argument("--dataset", type=Path, required=True,
                   help="BEIR or MS MARCO folder, or irds:<id> from the ir_datasets catalogue (irds:beir/scifact/test)")
    p.add_argument("--split", default=split, required=split is None,
                   help=split_help or f"split whose judgements are used (default: {split})")


def add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--output DIR`` and ``--overwrite``."""
    p.add_argument("--output", type=Path, required=True, help=f"the folder to write: {what}")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def check_output(args: argparse.Namespace) -> None:
    """Refuse an existing ``--output`` unless ``--overwrite`` was given (before any work starts)."""
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """``--cache-dir`` (also ``--index-dir``): where indexes and trained adapters are cached."""
    p.add_argument("--cache-dir", "--index-dir", dest="cache_dir", type=Path, default=None,
                   help="where indexes and trained adapters are cached (default: $RETRIEVAL_CACHE or ~/.cache/retrieval)")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray-address`` and ``--ray-workers``: run the command's encoding, index building, shards and batch
    search on a Ray cluster (``retrieval.distributed``; ``pip install 'retrieval[ray]'``)."""
    g = p.add_argument_group("Ray cluster (optional: pip install 'retrieval[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="run encoding, index shards and batch search on a Ray cluster: 'local' (start one in this "
                        "process), 'auto' (the one `ray start --head` started here), 'host:port' or 'ray://host:port' "
                        "(default: no Ray, everything in this process)")
    g.add_argument("--ray-workers", type=positive_int, default=None,
                   help="encoder (or pipeline) actors on the cluster (default: one per CPU of the cluster)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device: cuda, cpu, ... (default: a GPU when present)")


def add_lora_args(p: argparse.ArgumentParser, defaults: LoraSettings) -> None:
    """``--rank``, ``--alpha``, ``--dropout``, ``--targets``: the adapter's LoRA settings."""
    p.add_argument("--rank", type=positive_int, default=defaults.r, help=f"LoRA rank r (default: {defaults.r})")
    p.add_argument("--alpha", type=positive_int, default=defaults.alpha, help=f"LoRA alpha (default: {defaults.alpha})")
    p.add_argument("--dropout", type=float, default=defaults.dropout, help=f"LoRA dropout (default: {defaults.dropout})")
    p.add_argument("--targets", nargs="+", default=list(defaults.target_modules),
                   help=f"module names LoRA adapts (default: {' '.join(defaults.target_modules)})")
    p.add_argument("--layers", nargs="+", type=int, default=list(defaults.layers),
                   help="transformer layers LoRA adapts, from 0 (negative: from the top, -1 -2 the top two; default: all)")


def lora_from_args(args: argparse.Namespace, cls: type[LoraSettings] = LoraSettings, **fields) -> LoraSettings:
    """The LoRA settings that ``add_lora_args``'s flags give (``fields`` adds those the flags do not set)."""
    return cls(r=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=tuple(args.targets),
               layers=tuple(args.layers), **fields)
