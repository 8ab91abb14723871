"""Intel AMX (Advanced Matrix Extensions) for the K-quants' prefill, emitted as LLVM IR like simd.py.

A TMUL instruction (tdpb*d) adds the int8 product of a 16 x 64 tile A and a 64 x 16 tile B into a 16 x 16
int32 tile C: 16384 multiply-adds, where AVX-512 VNNI's vpdpwssd does 32. Our activations are 16-bit
(activations.py: int8 would cost ~7e-3 relative error a dot product) and the K-quant weights times their
sub-block scales (w = sc q) up to 13 bits, so each side is split into two bytes and a product takes four
TMULs, exactly: x = 256 xh + xl (xh, xl signed), w = 256 wh + wl (wh signed, wl in 0..255), and
w x = 65536 wh xh + 256 (wh xl + wl xh) + wl xl: four int32 tiles.
A is the weights, 16 rows by 64 of K as the unpack lays them out (row-major); B the tokens, 16 of them by 64
of K in the "VNNI" layout TMUL wants (row i: each token's elements 4i .. 4i + 3; prefill_amx.quantize_amx).
Per block of 256 the tiles go to memory and AVX-512 folds them into float32 accumulators (the block's
weight d and tokens' d differ); prefill_amx.py has the driver and the portable twin of these operations.

Linux gives a process the tile registers only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM); HAS_AMX asks
once, here. Each thread loads the tile configuration (tile_config) before its first TMUL.
"""
import ctypes
import platform
import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import _FEATURES, HAS_AVX512, I8, I32, I64, _fn, _i64, _load_at, _loop, _splat
from .simd_prefill import _fma_fn

V16F, V16I32 = ir.VectorType(ir.FloatType(), 16), ir.VectorType(I32, 16)
P8 = I8.as_pointer()


def _amx_permitted() -> bool:
    """Ask Linux for the tile data state (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): True if granted."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0   # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    except (OSError, AttributeError):
        return False


HAS_AMX = HAS_AVX512 and all(_FEATURES.get(f, False) for f in ("amx-tile", "amx-int8")) and _amx_permitted()

# The configuration every AMX kernel here uses (palette 1): the eight tiles of 16 rows by 64 bytes. 0, 1: the
# weights' wh and wl (A); 2, 3: the tokens' xh and xl (B); 4-7: the int32 sums of wh xh, wh xl, wl xh and wl xl,
# one TMUL each per 64 of K.
TILE_CONFIG = bytes([1, 0] + [0] * 14 + [64, 0] * 8 + [0, 0] * 8 + [16] * 8 + [0] * 8)


def _byte_ptr(context, builder, arrty, arr, offset):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), P8)


@intrinsic
def tile_config(typingctx, cfg):
    """ldtilecfg from the 64 bytes of cfg (TILE_CONFIG): this thread's tile shapes, until tile_release."""
    if cfg != types.Array(types.uint8, 1, "C", readonly=True):
        return None

    def codegen(context, builder, sig, args):
        builder.call(_fn(builder, "llvm.x86.ldtilecfg", ir.VoidType(), [P8]),
                     [_byte_ptr(context, builder, sig.args[0], args[0], ir.Constant(I64, 0))])
        return context.get_dummy_value()

    return types.none(cfg), codegen


@intrinsic
def tile_release(typingctx):
    """tilerelease: the tiles back to their initial state (a thread that is done with them saves nothing)."""
    def codegen(context, builder, sig, args):
        builder.call(_fn(builder, "llvm.x86.tilerelease", ir.VoidType(), []), [])
        return context.get_dummy_value()

    return types.none(), codegen


def _tile(builder, op, *operands):
    """An AMX instruction on tiles (immediate numbers) and, for loads and stores, (pointer, stride)."""
    tys = [I8 if isinstance(v, int) else v.type for v in operands]
    vals = [ir.Constant(I8, v) if isinstance(v, int) else v for v in operands]
    builder.call(_fn(builder, "llvm.x86." + op, ir.VoidType(), tys), vals)


I8ARR = (types.Array(types.int8, 1, "C", readonly=True), types.Array(types.int8, 1, "C"))
F32ARR = (types.Array(types.float32, 1, "C", readonly=True), types.Array(types.float32, 1, "C"))


@intrinsic
def k_tiles(typingctx, w, wo, ws, n_rt, xh, xl, xo, xts, n_tt, xd, xdo, xds, dsc, dso, dss, nb, accf, acc, ao, accs):
    """n_rt tiles of 16 weight rows against n_tt tiles of 16 tokens over nb blocks of 256 (a segment of K):
    acc[ao + r accs + 16 tt + t] += float64(the segment's float32 sum for row r, token t of tile tt), where per
    block b the exact int32 tiles hh, hl, lh, ll (module docstring) give v = 256 hh + hl + lh (exact), f = f32(v) * 256 +
    f32(ll) (f32(v) rounded, f once more) and a = a + f * (xd[xdo + b xds + 16 tt + t] * dsc[dso + r dss + b]) from
    a = 0, each product and sum rounded (prefill_amx.amx_reference does the same).
    w: the rows' bytes, row r at wo + r ws, block b at + 512 b: its 256 high bytes, then its 256 low bytes (the split
    unpackers, simd_prefill._write_group); xh, xl: token tile tt at xo + tt xts,
    the 64 of K from 64 j at + 1024 j (prefill_amx.quantize_amx); accf: the float32 sums between blocks, 256 n_rt n_tt.
    Blocks outermost, then token tiles, then row tiles: a block's weights (8 KB a row tile) stay in L1 across the
    token tiles, and each token tile's block (8 KB) across the row tiles (block innermost: 6.7 -> 8.5 ns a TMUL)."""
    ints = (wo, ws, n_rt, xo, xts, n_tt, xdo, xds, dso, dss, nb, ao, accs)
    if not (all(a in I8ARR for a in (w, xh, xl)) and xd in F32ARR and dsc in F32ARR
            and accf == types.Array(types.float32, 1, "C") and acc == types.Array(types.float64, 1, "C")
            and all(isinstance(v, types.Integer) for v in ints)):
        return None

    def codegen(context, builder, sig, args):
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        (wo_, ws_, nrt_, xo_, xts_, ntt_, xdo_, xds_, dso_, dss_, nb_, ao_, accs_) = (
            _i64(builder, args[k]) for k in (1, 2, 3, 6, 7, 8, 10, 11, 13, 14, 15, 18, 19))
        wp, xhp, xlp = (context.make_array(sig.args[k])(context, builder, args[k]).data for k in (0, 4, 5))
        xdp, dp, fp, ap = (context.make_array(sig.args[k])(context, builder, args[k]).data for k in (9, 12, 16, 17))
        scratch = cgutils.alloca_once(builder, ir.ArrayType(I32, 2 * 4 * 256))   # two steps' tiles, alternately
        scratch.align = 64
        sp = builder.bitcast(scratch, I32.as_pointer())
        zero, fma = ir.Constant(V16F, [0.0] * 16), _fma_fn(builder, 16)
        f16 = lambda v: _splat(builder, ir.Constant(ir.FloatType(), v), 16)  # noqa: E731

        def advance(at):   # (row tile, token tile, block) of the next step
            rt, tt, b = at
            rt1 = builder.add(rt, c(1))
            wrap = builder.icmp_unsigned("==", rt1, nrt_)
            tt1 = builder.select(wrap, builder.add(tt, c(1)), tt)
            wrap2 = builder.icmp_unsigned("==", tt1, ntt_)
            return [builder.select(wrap, c(0), rt1), builder.select(wrap2, c(0), tt1), builder.select(wrap2, builder.add(b, c(1)), b)]

        def tiles(i, at):   # step i's TMULs (at: its row tile, token tile, block), their int32 tiles to scratch[i % 2]
            rt, tt, b = at
            wr = builder.add(builder.add(wo_, builder.mul(builder.mul(rt, c(16)), ws_)), builder.mul(b, c(512)))
            xt = builder.add(builder.add(xo_, builder.mul(tt, xts_)), builder.mul(b, c(4096)))
            for t in (4, 5, 6, 7):
                _tile(builder, "tilezero", t)
            for j in range(4):   # the block's four 64s of K
                wk, xk = builder.add(wr, c(64 * j)), builder.add(xt, c(1024 * j))
                _tile(builder, "tileloadd64", 0, builder.bitcast(builder.gep(wp, [wk]), P8), ws_)
                _tile(builder, "tileloadd64", 1, builder.bitcast(builder.gep(wp, [builder.add(wk, c(256))]), P8), ws_)
                _tile(builder, "tileloadd64", 2, builder.bitcast(builder.gep(xhp, [xk]), P8), c(64))
                _tile(builder, "tileloadd64", 3, builder.bitcast(builder.gep(xlp, [xk]), P8), c(64))
                _tile(builder, "tdpbssd", 4, 0, 2)   # wh xh
                _tile(builder, "tdpbssd", 5, 0, 3)   # wh xl
                _tile(builder, "tdpbusd", 6, 1, 2)   # wl (unsigned) xh
                _tile(builder, "tdpbusd", 7, 1, 3)   # wl xl
            half = builder.mul(builder.and_(i, c(1)), c(1024))
            for k, t in enumerate((4, 5, 6, 7)):
                _tile(builder, "tilestored64", t, builder.bitcast(builder.gep(sp, [builder.add(half, c(256 * k))]), P8), c(64))

        def fold(i, at):   # step i's tiles (scratch[i % 2]) into its float32 sums (accf), after its last block into acc
            rt, tt, b = at
            half = builder.mul(builder.and_(i, c(1)), c(1024))
            first, last = builder.icmp_unsigned("==", b, c(0)), builder.icmp_unsigned("==", b, builder.sub(nb_, c(1)))
            fa = builder.mul(builder.add(builder.mul(rt, ntt_), tt), c(256))
            xdv = _load_at(builder, xdp, builder.add(builder.add(xdo_, builder.mul(b, xds_)), builder.mul(tt, c(16))), V16F)
            sums = []
            for r in range(16):
                hh, hl, lh, ll = (_load_at(builder, sp, builder.add(half, c(256 * k + 16 * r)), V16I32) for k in range(4))
                v = builder.add(builder.shl(hh, ir.Constant(V16I32, [8] * 16)), builder.add(hl, lh))   # < 2^31
                f = builder.call(fma, [builder.sitofp(v, V16F), f16(256.0), builder.sitofp(ll, V16F)])   # one rounding
                row = builder.add(builder.mul(rt, c(16)), c(r))
                d = _load_at(builder, dp, builder.add(builder.add(dso_, builder.mul(row, dss_)), b), ir.FloatType())
                a = builder.select(first, zero, _load_at(builder, fp, builder.add(fa, c(16 * r)), V16F))
                sums.append((row, builder.fadd(a, builder.fmul(f, builder.fmul(xdv, _splat(builder, d, 16))))))
            with builder.if_else(last) as (done, more):
                with done:
                    v16d = ir.VectorType(ir.DoubleType(), 16)
                    for row, v in sums:
                        at = builder.add(builder.add(ao_, builder.mul(row, accs_)), builder.mul(tt, c(16)))
                        ptr = builder.bitcast(builder.gep(ap, [at]), v16d.as_pointer())
                        builder.store(builder.fadd(builder.load(ptr, align=8), builder.fpext(v, v16d)), ptr, align=8)
                with more:
                    for r, (_, v) in enumerate(sums):
                        builder.store(v, builder.bitcast(builder.gep(fp, [builder.add(fa, c(16 * r))]), V16F.as_pointer()), align=64)

        # software-pipelined: step i's TMULs are issued before step i - 1's tiles (stored a step earlier) are folded:
        # 11.7 -> 11.1 ns a TMUL. The tile unit and the AVX-512 work still take turns on this host (TMULs with their
        # loads 6.7 ns a TMUL, the fold alone 2.4, both 10.6; in 256-bit vectors the same)
        n = builder.mul(builder.mul(nrt_, ntt_), nb_)
        tiles(c(0), [c(0)] * 3)

        def step(i, at):
            nxt = advance(at)
            tiles(builder.add(i, c(1)), nxt)
            fold(i, at)
            return nxt

        last = _loop(builder, builder.sub(n, c(1)), [c(0)] * 3, step)
        fold(builder.sub(n, c(1)), last)
        return context.get_dummy_value()

    return types.none(w, wo, ws, n_rt, xh, xl, xo, xts, n_tt, xd, xdo, xds, dsc, dso, dss, nb, accf, acc, ao, accs), codegen
