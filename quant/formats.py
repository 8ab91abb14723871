"""The table of supported GGML types: type -> format module (TYPE, BLOCK, BYTES, kernels)."""
from types import ModuleType

from gguf import GGMLQuantizationType

from . import bf16, f16, f32, q4_0, q4_1, q5_0, q5_1, q6_k, q8_0, q4_k, q5_k

FORMATS: dict[GGMLQuantizationType, ModuleType] = {
    m.TYPE: m for m in (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k)
}
SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = tuple(FORMATS)


class UnsupportedTypeError(ValueError):
    """A tensor's GGML type has no kernels here; the message names the type and the tensor."""


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"unknown type {int(ggml_type)}"


def format_of(ggml_type: int, tensor_name: str) -> ModuleType:
    fmt = FORMATS.get(ggml_type)
    if fmt is None:
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise UnsupportedTypeError(
            f"tensor {tensor_name!r} has type {type_name(ggml_type)}, which is not supported "
            f"(supported: {supported})")
    return fmt
