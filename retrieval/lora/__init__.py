"""The LoRA plumbing both encoders share: settings, one adapter host, the training loop, examples, negatives."""

from .base import PACKAGED_ID, default_device, resolve_model
from .examples import TrainExample, pseudo_examples, pseudo_queries, supervised_examples
from .host import AdapterHost, AdapterMismatch
from .mining import SkipTop, mine_negatives, mine_pool
from .settings import LoraSettings
from .training import TrainResult, fit_adapter, save_trained, split_queries

__all__ = ["PACKAGED_ID", "default_device", "resolve_model", "TrainExample", "pseudo_examples", "pseudo_queries",
           "supervised_examples", "AdapterHost", "AdapterMismatch", "SkipTop", "mine_negatives", "mine_pool", "LoraSettings",
           "TrainResult", "fit_adapter", "save_trained", "split_queries"]
