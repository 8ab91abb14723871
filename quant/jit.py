"""Numba flags, kernel signatures and scalar helpers shared by every format module.

Each format module compiles row kernels with the signatures below (`DOT_SIG`, `DEQUANT_SIG`, and
`QUANT_SIG` for quantize.py); kernels.py passes their addresses (kernel_address) to a few parallel
drivers, so each driver is compiled once and every kernel lands in Numba's on-disk cache (cache=True).
Numba does not track dependencies across files: after editing this module (or a helper another
format imports: q4_k.scale_min, q4_k.fit_row, q5_0.quants, anything in fit.py), delete
quant/__pycache__/*.nbi so the kernels that inline it are rebuilt. A fresh install has fresh file
times, so users are not affected.
"""
import os
from functools import cache, partial

# GNU OpenMP (Numba's default threading layer on Linux): after a parallel region its workers spin
# GOMP_SPINCOUNT times, then sleep. Spinning without end (OMP_WAIT_POLICY=active) fought OpenBLAS's
# threads when matmul alternated a parallel dequantize with a threaded sgemm (20 ms became 130-340 ms
# on 2 cores); no spinning at all made every kernel call wake its workers, 30-50 us each in a VM. A short
# spin keeps them for the next kernel of a token: Mistral decode 110 -> 100 ms per token, SmolLM2 43 ->
# 72 tok/s (Zen 5, 2 threads), and BLAS now runs single-threaded beside them (kernels._blas_matmul).
# Read once, when libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

# Exact IEEE float32 arithmetic (no reassociation, no fused multiply-add): dequantization must be
# bit-identical to the numpy references.
njit = partial(numba.njit, cache=True, nogil=True, error_model="numpy")
# Dot products may reorder sums and fuse multiply-adds so LLVM can vectorize the reductions; the
# order is still fixed at compile time, so results do not depend on the thread count.
FASTMATH = {"reassoc", "contract"}
njit_fast = partial(njit, fastmath=FASTMATH)
# Drivers: one row per prange iteration, so each row is computed by a single thread.
njit_parallel = partial(njit, parallel=True)

ROW = types.Array(types.uint8, 1, "C", readonly=True)  # one quantized row: n_blocks * BYTES
ROWS = types.Array(types.uint8, 2, "C", readonly=True)  # (N, n_blocks * BYTES)
VEC = types.Array(types.float32, 1, "C", readonly=True)  # activations (K,)
OUT = types.Array(types.float32, 1, "C")
OUT2 = types.Array(types.float32, 2, "C")
IDS = types.Array(types.int64, 1, "C", readonly=True)
DOT_SIG = types.float64(ROW, VEC)  # dot(row, x) -> sum_k w[k] * x[k]
DEQUANT_SIG = types.void(ROW, OUT)  # dequantize(row, out (K,))
# Integer decode kernels (intdot.py): dot(row, xd (K/256,) f32, q16 (K,) i16, qp (K,) i16, hi (K,) i8,
# lo (K,) i8, bsums (K/16,) i32) -> sum_k w[k] * x[k], x given quantized by activations.py
DOT16_SIG = types.float64(ROW, VEC, *(types.Array(types.int16, 1, "C", readonly=True),) * 2,
                          types.Array(types.int8, 1, "C", readonly=True), types.Array(types.int8, 1, "C", readonly=True),
                          types.Array(types.int32, 1, "C", readonly=True))
# The same for T tokens at once (intdot.dots_*): dots(row, the activations stacked (T, ...), out (T, N) f32, r),
# out[t, r] = token t's dot product
DOT16T_SIG = types.void(ROW, *(types.Array(a.dtype, 2, "C", readonly=True) for a in DOT16_SIG.args[1:]), OUT2, types.int64)
# Integer decode of rows with blocks of 32 (intdot.dot32_*): dot(row, xd (K/32,) f32, q16 (K,) i16,
# s32 (K/32,) i32) -> sum_k w[k] * x[k], x given by activations.quantize32
DOT32_SIG = types.float64(ROW, VEC, types.Array(types.int16, 1, "C", readonly=True), types.Array(types.int32, 1, "C", readonly=True))
# Prefill (intdot_prefill.py): unpack(rows, r0, nr, n_out, u0, su, w16 i16, dsc f32, msc f32) (units u0 .. u0 + su
# of the layout, n_out rows from r0, the last of nr repeated), then for fours of rows (w16 (4QK,), their scales
# dsc and msc) and tokens t < out.shape[0] (q16 at xo + t xs, their scales in xd and px from bo):
# dot4x2(w16, dsc, msc, q16, xd, px, xo, bo, xs, out (T, 4 Q) f64), out[t, r] += row r . token t
UNPACK16_SIG = types.void(ROWS, *(types.int64,) * 5, types.Array(types.int16, 1, "C"), OUT, OUT)
W4X2_SIG = types.void(types.Array(types.int16, 1, "C"), OUT, OUT, types.Array(types.int16, 1, "C", readonly=True), VEC, VEC,
                      types.int64, types.int64, types.int64, types.Array(types.float64, 2, "C"))


# the K-quants' mins in prefill (intdot_prefill.mins_*): msc, the tokens' sums (tokens along), first sub-block, row stride, accm
MINS_SIG = types.void(OUT, VEC, types.int64, types.int64, types.Array(types.float64, 2, "C"))
KERNEL = types.intp  # a row kernel's address (kernel_address), as the drivers take it


def kernel_address(dispatcher, sig) -> int:
    """The address of a compiled row kernel (its C-callable wrapper) for the drivers' call_<sig>
    intrinsics. Compiling loads from the on-disk cache when it can; the dispatcher (a module global)
    keeps the code alive.
    Why addresses and not Numba's first-class functions: unboxing a function argument calls back into
    Python on every call (it unpickles the signature), and a Ctrl-C landing there made the call fail
    with a TypeError instead of raising KeyboardInterrupt. An integer unboxes in C."""
    cres = dispatcher.get_compile_result(sig)
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)


def pointer_call(sig):
    """An intrinsic call(address, (args...)) that calls the kernel at address (kernel_address) with
    signature sig, as Numba calls a first-class function."""
    proto = types.FunctionPrototype(sig.return_type, sig.args)

    @intrinsic
    def call(typingctx, address, args):
        if not (isinstance(address, types.Integer) and isinstance(args, types.BaseTuple) and len(args) == len(sig.args)
                and all(typingctx.can_convert(a, b) for a, b in zip(args, sig.args))):
            return None

        def codegen(context, builder, call_sig, llargs):
            fn = builder.inttoptr(llargs[0], context.get_value_type(proto))
            vals = [context.cast(builder, builder.extract_value(llargs[1], i), a, b)
                    for i, (a, b) in enumerate(zip(call_sig.args[1], sig.args))]
            return builder.call(fn, vals)

        return sig.return_type(address, args), codegen
    return call


def set_num_threads(n: int) -> None:
    """Threads used by the parallel kernels (at most numba.config.NUMBA_NUM_THREADS)."""
    numba.set_num_threads(n)


@cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def blas_threads(n: int):
    """A context in which numpy's BLAS uses n threads, restored after. OpenBLAS's workers spin for a while
    after each call and take the cores from the Numba kernels that come next, so the runtime keeps BLAS on
    one thread during a forward pass (attention's small matmuls; Mistral pp64 went from 13.4 to 20.5 tok/s
    on 2 cores), and kernels.matmul's dequantize + sgemm path runs one single-threaded sgemm per thread."""
    return _blas_controller().limit(limits=n, user_api="blas")


@intrinsic
def u32_as_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (no conversion)."""
    def codegen(context, builder, sig, args):
        i32 = cgutils.ir.IntType(32)
        if bits.bitwidth > 32:
            value = builder.trunc(args[0], i32)
        elif bits.bitwidth < 32:
            value = builder.zext(args[0], i32)
        else:
            value = args[0]
        return builder.bitcast(value, cgutils.ir.FloatType())

    if isinstance(bits, types.Integer):
        return types.float32(bits), codegen
    return None


@intrinsic
def f32_bits(typingctx, value):
    """The bits of a float32 as a uint32 (no conversion)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], cgutils.ir.IntType(32))

    if value == types.float32:
        return types.uint32(value), codegen
    return None


@njit(inline="always")
def f16_to_f32(h):
    """IEEE half bits (0..65535) -> float32, exact for subnormals, inf and nan (payload kept).
    Branch-free (selects), so loops over f16 values vectorize."""
    em = numba.uint32(h) & 0x7FFF  # exponent and mantissa
    subnormal = f32_bits(numba.float32(em) * numba.float32(2.0**-24))  # exact for em < 0x400
    bits = (em << 13) + 0x38000000  # normal: move into place, rebias the exponent 15 -> 127
    bits = subnormal if em < 0x400 else bits
    bits = (em << 13) | 0x7F800000 if em >= 0x7C00 else bits  # inf / nan
    return u32_as_f32(bits | (numba.uint32(h) & 0x8000) << 16)


@intrinsic
def half_to_f32(typingctx, bits):
    """IEEE half bits -> float32 with the CPU's conversion (F16C vcvtph2ps on x86, vectorizable).
    Exact, except that signalling nans come out quiet: use it in dot products, f16_to_f32 in
    dequantization."""
    def codegen(context, builder, sig, args):
        i16 = builder.trunc(args[0], cgutils.ir.IntType(16)) if bits.bitwidth > 16 else args[0]
        return builder.fpext(builder.bitcast(i16, cgutils.ir.HalfType()), cgutils.ir.FloatType())

    if isinstance(bits, types.Integer) and bits.bitwidth >= 16:
        return types.float32(bits), codegen
    return None


@njit(inline="always")
def f16_at(buf, i):
    """The little-endian float16 at buf[i:i+2] as float32."""
    return f16_to_f32(numba.uint32(buf[i]) | (numba.uint32(buf[i + 1]) << 8))


@njit(inline="always")
def span(n, out, start):
    """min(n, out.size - start), which is n for every full block. Dequantization loops use it as
    their trip count: with a constant one LLVM unrolls the loop and then cannot vectorize it
    (stores to out might alias the row); with this one it vectorizes behind a runtime alias check."""
    return min(n, out.size - start)


@njit(inline="always")
def flush(lanes):
    """Sum and zero per-position partial sums (dot products of small-block formats keep one f32
    partial sum per position in a block for up to LANE_BLOCKS blocks, then add them in f64)."""
    total = np.float64(lanes.sum())
    lanes[:] = 0
    return total


LANE_BLOCKS = 8
QUANT_SIG = types.void(VEC, types.Array(types.uint8, 1, "C"))  # quantize(row (K,), out (K // BLOCK * BYTES,))


@njit(inline="always", fastmath=FASTMATH)
def exp_le0(x):
    """e^x for x <= 0 in float32, 0 below -87: x = n ln2 + f with |f| <= ln2 / 2 (ln2 in two parts, so f is
    exact), e^f by its Taylor polynomial of degree 7, times 2^n made from its bits. Within 3e-7 relative;
    unlike np.exp (a libm call per element), LLVM vectorizes a loop of it."""
    xc = max(x, np.float32(-87.0))
    n = np.float32(np.rint(xc * np.float32(1.4426950408889634)))
    f = xc - n * np.float32(0.693145751953125) - n * np.float32(1.4286068203094173e-06)
    p = np.float32(1 / 5040)
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):
        p = p * f + np.float32(c)
    e = p * u32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))
    return e if x >= np.float32(-87.0) else np.float32(0)
