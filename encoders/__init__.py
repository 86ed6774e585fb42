"""Bi-encoders for the dense stage: ``BiEncoder`` (sentence-transformers + peft LoRA) and its training."""

from retrieval.lora.settings import LoraSettings

from .bi_encoder import BiEncoder
from .train import DenseTrainSettings, default_settings, train_dense

__all__ = ["BiEncoder", "LoraSettings", "DenseTrainSettings", "default_settings", "train_dense"]
