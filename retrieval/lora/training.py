"""The training loop every LoRA adapter of the project shares (bi-encoder and cross-encoder).

AdamW with a linear warm-up and decay, items shuffled each epoch with a seeded generator, validation
before training (unless the starting model is known to score at random) and after every epoch, the best
epoch's adapter weights kept (peft state dict), a progress bar, wall time and peak memory.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..card import start_text


@dataclass
class TrainResult:
    best_epoch: int
    best_val: float
    start_val: float | None           # None: not validated before training (a new, randomly initialised head)
    history: list[dict]
    trainable_share: float
    seconds: float
    peak_memory_mb: float
    train_queries: int
    val_queries: int
    settings: dict
    abandoned: list[list[dict]] = field(default_factory=list)  # histories of trainings begun again (a plateau)

    def to_dict(self) -> dict:
        return asdict(self)


def check_numbers(settings, positive_ints: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                  fractions: tuple[str, ...] = (), unit: tuple[str, ...] = (),
                  non_negative_ints: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                  positive_or_none: tuple[str, ...] = ()) -> None:
    """Refuse training settings that would train something else than asked for (``epochs=0`` is not "the
    default"): ``positive_ints`` >= 1, ``non_negative_ints`` >= 0, ``positive`` finite numbers > 0 (``positive_or_none``:
    or None, "not set"), ``non_negative`` finite numbers >= 0, ``fractions`` strictly between 0 and 1, ``unit`` in
    [0, 1]."""
    name = type(settings).__name__
    for fields, least, what in ((positive_ints, 1, "a positive integer"), (non_negative_ints, 0, "an integer >= 0")):
        for key in fields:
            v = getattr(settings, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ValueError(f"{name}.{key} must be {what}, got {v!r}")
    for key in (*positive, *positive_or_none):
        v = getattr(settings, key)
        optional = key in positive_or_none
        if (v is not None or not optional) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                or not 0 < v < float("inf")):
            raise ValueError(f"{name}.{key} must be a positive number{' or None' if optional else ''}, got {v!r}")
    for key in non_negative:
        v = getattr(settings, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise ValueError(f"{name}.{key} must be a finite number >= 0, got {v!r}")
    for key in fractions:
        v = getattr(settings, key)
        if not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"{name}.{key} must be between 0 and 1 (exclusive), got {v!r}")
    for key in unit:
        v = getattr(settings, key)
        if not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name}.{key} must be between 0 and 1, got {v!r}")


def split_queries(qids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of training query ids into (train, validation)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    ids = sorted(qids)
    random.Random(seed).shuffle(ids)
    n_val = max(1, int(round(len(ids) * fraction)))
    if n_val >= len(ids):
        raise ValueError(f"{len(ids)} training queries are too few to hold out {fraction:.0%} for validation")
    return ids[n_val:], ids[:n_val]


def peak_memory_mb() -> float:
    """Peak GPU memory when training on CUDA, else the process's peak resident set size."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def attention_dropouts(module) -> list:
    """The dropout layers on attention probabilities: those an attention module owns itself (transformers'
    ``BertSelfAttention.dropout``, DistilBERT's ``MultiHeadSelfAttention.dropout``, ...). The attention module hands
    their ``p`` to its attention kernel whenever *it* is training, so putting the layer in eval mode does not
    switch them off; and while it is above 0 PyTorch's CPU attention runs its unfused path."""
    import torch

    return [child for m in module.modules() if "Attention" in type(m).__name__
            for child in m.children() if isinstance(child, torch.nn.Dropout)]


# dropout while an adapter trains: every layer's (the backbone's, the attention probabilities', LoRA's), all but the
# attention probabilities' (a fused attention kernel), or none (on a CPU drawing the masks is ~40% of a step)
DROPOUTS = ("all", "no-attention", "none")


def dropout_switches(name: str, what: str = "training") -> dict:
    """``dropout`` and ``attention_dropout`` (``fit_adapter``'s switches) for one of ``DROPOUTS``."""
    if name not in DROPOUTS:
        raise ValueError(f"{what} dropout must be one of {DROPOUTS}, got {name!r}")
    return {"dropout": name != "none", "attention_dropout": name == "all"}


def recorded_dropout(d: dict, always: tuple[str, ...] = ()) -> dict:
    """A training settings dict with its ``dropout`` / ``attention_dropout`` switches recorded only where one is off
    (those in ``always`` in any case), so the cache keys of adapters trained with every dropout on before a switch
    existed still match."""
    if d.get("dropout", True) and d.get("attention_dropout", True):
        return {k: v for k, v in d.items() if k in always or k not in ("dropout", "attention_dropout")}
    return {**d, "attention_dropout": False}


@contextlib.contextmanager
def dropouts_off(module, dropout: bool = True, attention_dropout: bool = True):
    """Within the block, the dropout layers of ``module`` that the switches turn off drop nothing (``p`` = 0; put
    back after): ``dropout=False`` every ``torch.nn.Dropout`` (the backbone's, LoRA's, the attention
    probabilities'), ``attention_dropout=False`` those of ``attention_dropouts``."""
    import torch

    layers = ([m for m in module.modules() if isinstance(m, torch.nn.Dropout)] if not dropout
              else [] if attention_dropout else attention_dropouts(module))
    saved = [m.p for m in layers]
    try:
        for m in layers:
            m.p = 0.0
        yield layers
    finally:
        for m, p in zip(layers, saved):
            m.p = p


def fit_adapter(host, adapter_name: str, items: list, loss_fn: Callable, validate: Callable[[], float], *,
                epochs: int, lr: float, batch_size: int, weight_decay: float = 0.01, warmup: float = 0.1,
                seed: int = 0, desc: str = "LoRA", progress: bool = True, param_groups: list[dict] | None = None,
                train_module=None, on_epoch: Callable[[int, dict], None] | None = None, dropout: bool = True,
                attention_dropout: bool = True, validate_start: bool = True, max_grad_norm: float | None = None) -> dict:
    """Train the adapter ``adapter_name`` of ``host`` (an ``AdapterHost``) on ``items`` with ``loss_fn(batch, rng) -> loss``.

    ``validate()`` returns the figure to maximise (nDCG@10 on held-out queries); the best epoch's adapter
    weights are put back at the end (epoch 0 = untrained, if nothing beats it; ``validate_start=False`` skips that
    validation, ``start_val`` None, when the untrained model scores at random: a new scoring head, where epoch 0
    could only win if training failed, and the validation would cost a pass). ``param_groups`` overrides
    the default single group of every trainable parameter (e.g. a higher rate for a new head);
    ``train_module`` is what ``.train()``/``.eval()`` is called on (default ``host.module``); ``on_epoch(epoch,
    adapter_state)`` sees each epoch's weights. ``dropout=False`` trains with every dropout layer (the backbone's,
    on the attention probabilities too, and LoRA's) switched off; ``attention_dropout=False`` only the dropout on
    the attention probabilities (see ``dropouts_off``). ``max_grad_norm`` clips the gradients' global norm before each
    step (``torch.nn.utils.clip_grad_norm_``, as transformers' Trainer does by default); each epoch's history then
    counts the steps it clipped and gives the largest norm seen before clipping (a blow-up shows there). Returns
    ``{best_epoch, best_val, start_val, history, seconds}``; parameters are frozen and the module left in eval mode.
    """
    import torch

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not items:
        raise ValueError("no training items")
    module = train_module if train_module is not None else host.module
    groups = param_groups or [{"params": [p for p in module.parameters() if p.requires_grad]}]
    trained = [p for g in groups for p in g["params"]]
    optim = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(items) / batch_size)
    warm = max(1, int(steps * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        optim, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))

    rng = random.Random(seed)
    items = list(items)
    t0 = time.perf_counter()
    module.eval()
    start_val = validate() if validate_start else None
    best_val, best_epoch, best_state = start_val, 0, host.adapter_state(adapter_name) if validate_start else None
    history = [{"epoch": 0, "loss": None, "val_nDCG@10": start_val, "seconds": 0.0}]
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)
    try:
        for epoch in range(1, epochs + 1):
            module.train()
            rng.shuffle(items)
            losses, norms = [], []
            with dropouts_off(module, dropout, attention_dropout):
                for i in range(0, len(items), batch_size):
                    loss = loss_fn(items[i : i + batch_size], rng)
                    optim.zero_grad()
                    loss.backward()
                    if max_grad_norm is not None:  # the norm before clipping
                        norms.append(float(torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)))
                    optim.step()
                    sched.step()
                    losses.append(loss.item())
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}")
            module.eval()
            val = validate()
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_nDCG@10": val,
                            "seconds": time.perf_counter() - t0,
                            **({"clipped_steps": sum(n > max_grad_norm for n in norms),
                                "max_grad_norm_seen": max(norms)} if norms else {})})
            if progress:
                bar.write(f"{desc}: epoch {epoch}: loss {np.mean(losses):.4f}, validation nDCG@10 "
                          f"{start_text(start_val)} (start) -> {val:.4f}")
            current = host.adapter_state(adapter_name)
            if on_epoch is not None:
                on_epoch(epoch, current)
            if best_val is None or val > best_val:
                best_val, best_epoch, best_state = val, epoch, current
    finally:
        bar.close()
    host.set_adapter_state(best_state, adapter_name)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return {"best_epoch": best_epoch, "best_val": best_val, "start_val": start_val, "history": history,
            "seconds": time.perf_counter() - t0}


def save_trained(model, result: TrainResult, output, dataset, split: str, overwrite: bool, what: str) -> int:
    """The training CLIs' last step: save the model, write ``train_result.json`` beside it, say what happened."""
    model.save(output, overwrite=overwrite,
               extra_json={"train_result.json": {"dataset": str(dataset), "split": split, **result.to_dict()}})
    print(f"best epoch {result.best_epoch}: validation nDCG@10 {start_text(result.start_val)} -> {result.best_val:.4f}; "
          f"trainable {result.trainable_share:.2%}; {result.seconds:.0f} s; {what} in {output}")
    return 0
