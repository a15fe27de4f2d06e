"""The request-level engine on OpenVINO GenAI's continuous-batching pipeline."""

from .engine import MAPPED_FIELDS, OpenVINOEngine, generation_config

__all__ = ["MAPPED_FIELDS", "OpenVINOEngine", "generation_config"]
