"""The embedded llama.cpp engine: continuous batching over llama-cpp-python's low-level API."""

from kimiserve.engines.llamacpp.config import LlamaCppConfig, default_model_path
from kimiserve.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppConfig", "LlamaCppEngine", "default_model_path"]
