"""Cross-encoder rerankers: ``CrossEncoderReranker`` (transformers + peft LoRA, head in modules_to_save) and its
training."""

from .cross_encoder import CrossEncoderReranker, RerankerMismatch, RerankLoraSettings
from .train import RerankTrainSettings, train_reranker, training_examples

__all__ = ["CrossEncoderReranker", "RerankerMismatch", "RerankLoraSettings", "RerankTrainSettings", "train_reranker",
           "training_examples"]
