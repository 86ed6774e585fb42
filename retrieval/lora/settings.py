"""LoRA settings: peft's ``LoraConfig`` as a dataclass, checked when it is made and saved as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SIDES = ("both", "query")


@dataclass
class LoraSettings:
    """LoRA settings (peft ``LoraConfig``) plus, for bi-encoders, the side the adapter applies to: ``"both"``
    adapts queries and documents, ``"query"`` queries only (documents keep the base model's vectors)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    side: str = "both"

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

    def _peft_kwargs(self) -> dict:
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": list(self.target_modules), "bias": "none"}

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(**self._peft_kwargs())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d
