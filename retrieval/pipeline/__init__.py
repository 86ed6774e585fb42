"""The full pipeline: settings, training (``build_pipeline``), the saved folder, stage kinds, shared models."""

from .build import BuiltPipeline, build_pipeline
from .folder import DamagedPipeline, load_pipeline, pipeline_config, save_pipeline
from .registry import LoadContext, PipelineMismatch, StageKind, WriteRefused, kind_of, register
from .settings import PipelineSettings, add_pipeline_args, settings_from_args
from .shared import SharedModels

__all__ = ["BuiltPipeline", "build_pipeline", "DamagedPipeline", "load_pipeline", "pipeline_config", "save_pipeline",
           "LoadContext", "PipelineMismatch", "StageKind", "WriteRefused", "kind_of", "register", "PipelineSettings",
           "add_pipeline_args", "settings_from_args", "SharedModels"]
