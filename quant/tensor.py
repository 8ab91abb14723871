"""QuantizedTensor: a weight tensor's GGML type, logical shape and raw bytes (usually an mmap view)."""
import operator

import numpy as np
from gguf import GGMLQuantizationType

from .formats import format_of


class QuantizedTensor:
    """shape is the logical numpy shape, outermost first, the last axis the row length K: (K,),
    (N, K) or experts (E, N, K). data is uint8 of shape (*shape[:-1], K // BLOCK * BYTES); it is
    only validated here, never read (it is usually a zero-copy np.memmap view)."""

    __slots__ = ("name", "ggml_type", "type_name", "shape", "data")

    def __init__(self, name: str, ggml_type: int, shape: tuple[int, ...], data: np.ndarray):
        fmt = format_of(ggml_type, name)
        self.name = name
        self.ggml_type = GGMLQuantizationType(ggml_type)
        self.type_name = self.ggml_type.name
        self.shape = tuple(operator.index(n) for n in shape)
        if not self.shape or min(self.shape) < 1 or self.shape[-1] % fmt.BLOCK:
            raise ValueError(f"tensor {name!r} ({self.type_name}): shape {self.shape} needs positive "
                             f"sizes and a last axis that is a multiple of the block size {fmt.BLOCK}")
        row_bytes = self.shape[-1] // fmt.BLOCK * fmt.BYTES
        expected = (*self.shape[:-1], row_bytes)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
            got = (getattr(data, "dtype", type(data).__name__), getattr(data, "shape", None))
            raise ValueError(f"tensor {name!r} ({self.type_name}, shape {self.shape}): data must be "
                             f"uint8 of shape {expected}, got {got[0]} of shape {got[1]}")
        if not data.flags.c_contiguous:
            raise ValueError(f"tensor {name!r}: data must be C-contiguous")
        self.data = data

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: int) -> "QuantizedTensor":
        """t[e]: the sub-tensor at index e of the outer axis (an expert of an (E, N, K) tensor).
        Zero copy: a view of that slab only."""
        if len(self.shape) < 2:
            raise IndexError(f"tensor {self.name!r} of shape {self.shape} has no outer axis to index")
        e = operator.index(index)
        if not -self.shape[0] <= e < self.shape[0]:
            raise IndexError(f"index {e} out of range for tensor {self.name!r} of shape {self.shape}")
        e %= self.shape[0]
        return QuantizedTensor(f"{self.name}[{e}]", self.ggml_type, self.shape[1:], self.data[e])

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.name!r}, {self.type_name}, shape={self.shape})"
