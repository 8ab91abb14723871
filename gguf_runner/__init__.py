"""gguf-runner: run quantized GGUF language models (Mistral, Mixtral, Llama 2) on a CPU."""
from .args import ModelArgs, ModelError, MoeArgs
from .gguf_file import GGUFError, GGUFFile
from .runtime import Model, load

__all__ = ["load", "Model", "ModelArgs", "MoeArgs", "ModelError", "GGUFFile", "GGUFError"]
