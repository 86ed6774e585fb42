"""LoRA settings: peft's ``LoraConfig`` as a dataclass, checked when it is made and saved as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SIDES = ("both", "query")


@dataclass
class LoraSettings:
    """LoRA settings (peft ``LoraConfig``) plus, for bi-encoders, the side the adapter applies to: ``"both"``
    adapts queries and documents, ``"query"`` queries only (documents keep the base model's vectors).

    ``layers``: the transformer layers whose ``target_modules`` LoRA adapts, counted from 0 (negative from the
    top: ``(-2, -1)`` the top two); empty (the default) adapts every layer. Modules outside the numbered layers
    (a pooler) are adapted as before. Adapting only top layers makes training cheaper: the backward pass stops
    at the lowest adapted layer. Given to peft as the full names of the modules it chose, so the saved adapter
    loads anywhere peft does."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    side: str = "both"
    layers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"LoRA side must be one of {SIDES}, got {self.side!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module, e.g. ('query', 'value')")
        self.layers = tuple(self.layers or ())
        if any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers) or len(set(self.layers)) < len(self.layers):
            raise ValueError(f"LoRA layers must be distinct integers (0 = the lowest, -1 = the top), got {self.layers!r}")

    def _peft_kwargs(self) -> dict:
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": list(self.target_modules), "bias": "none"}

    def peft_config(self, module=None):
        """peft's ``LoraConfig``; with ``layers``, ``module`` (the model it will wrap) names the modules."""
        from peft import LoraConfig

        kwargs = self._peft_kwargs()
        if self.layers:
            if module is None:
                raise ValueError("LoRA on chosen layers needs the model to pick the modules from: peft_config(module)")
            kwargs["target_modules"] = self.modules_in_layers(module)
        return LoraConfig(**kwargs)

    def modules_in_layers(self, module) -> list[str]:
        """Full names of ``module``'s linear ``target_modules`` in ``layers`` (and of those in no numbered layer)."""
        import torch

        base = module.get_base_model() if hasattr(module, "get_base_model") else module  # names peft matches
        found = [(n, _layer_index(n)) for n, m in base.named_modules()  # a linear layer, or one LoRA wraps already
                 if isinstance(getattr(m, "base_layer", m), torch.nn.Linear) and n.rsplit(".", 1)[-1] in self.target_modules]
        count = 1 + max((i for _, i in found if i is not None), default=-1)
        if not count:
            raise ValueError(f"LoRA layers={self.layers}: the model has no numbered layers holding {self.target_modules}")
        self.check_layers(count)
        wanted = {i % count for i in self.layers}
        return [n for n, i in found if i is None or i in wanted]

    def check_layers(self, count: int, name: str = "LoRA layers") -> None:
        """Refuse ``layers`` that a model of ``count`` transformer layers does not have (before any work, given the
        count from the model's config)."""
        for i in self.layers:
            if not -count <= i < count:
                raise ValueError(f"{name}={self.layers}: the model has {count} layers (0..{count - 1}, or "
                                 f"-{count}..-1 from the top)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        if self.layers:  # written only when set: what every layer's adapter records (and its cache key) stays as it was
            d["layers"] = list(self.layers)
        else:
            del d["layers"]
        return d


def _layer_index(name: str) -> int | None:
    """The layer a module sits in: the first number in its dotted name (``encoder.layer.3.attention...`` -> 3)."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)
