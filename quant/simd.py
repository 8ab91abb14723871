"""AVX2 and AVX-512 VNNI integer dot products for Numba, emitted as LLVM IR (`numba.extending.intrinsic`).

Each decode intrinsic computes one row's dot product with the 16-bit activations of activations.py,
loops over the blocks included: exact integer sums per block in 8 lanes, with x86 `pmaddubsw` (u8 x s8
-> pairwise i16) and `pmaddwd` (i16 x i16 -> pairwise i32), or AVX-512 VNNI's `vpdpbusd` / `vpdpwssd`
(the same sums, accumulated in 16 lanes and folded onto 8), accumulated in float32 vectors, summed once
per row. intdot.py's portable loops (the path for CPUs without AVX2, chosen once in kernels.py) do the
same operations in the same order, so every path agrees bit for bit. The prefill intrinsics, which
follow the same scheme for four rows and two tokens at a time, are in simd_prefill.py; the decode of the
types with blocks of 32 in simd32.py.
Only compile (call) these on a CPU with AVX2 (HAS_AVX2), the *512 ones with AVX-512 BW and VNNI
(HAS_AVX512).
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .activations import qp_chunk

_FEATURES = llvm.get_host_cpu_features()
HAS_AVX2 = bool(_FEATURES.get("avx2", False))
# The *_row512 kernels: 512-bit integer ops (avx512bw) and vpdpwssd (avx512vnni)
HAS_AVX512 = HAS_AVX2 and all(_FEATURES.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
V32I8, V16I8, V16I16, V8I32 = ir.VectorType(I8, 32), ir.VectorType(I8, 16), ir.VectorType(I16, 16), ir.VectorType(I32, 8)
BYTES = (types.Array(types.uint8, 1, "C", readonly=True), types.Array(types.uint8, 1, "C"),
         types.Array(types.int8, 1, "C", readonly=True), types.Array(types.int8, 1, "C"))


def _fn(builder, name, ret, args):
    mod = builder.module
    fn = mod.globals.get(name)
    return fn if fn is not None else ir.Function(mod, ir.FunctionType(ret, args), name)


class _Ops:
    """Small helpers over an IRBuilder: the x86 multiply-adds (AVX2, AVX-512 VNNI) and pshufb."""

    def __init__(self, context, builder):
        self.c, self.b = context, builder

    def maddubs(self, u8, s8):  # (32 x u8, 32 x s8) -> 16 x i16: u[2i]*s[2i] + u[2i+1]*s[2i+1]
        return self.b.call(_fn(self.b, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [V32I8, V32I8]), [u8, s8])

    def madd(self, a, b):  # (16 x i16, 16 x i16) -> 8 x i32: a[2i]*b[2i] + a[2i+1]*b[2i+1]
        return self.b.call(_fn(self.b, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16]), [a, b])

    def dpbusd(self, acc, u8, s8):  # AVX-512 VNNI: (16 x i32, 64 x u8, 64 x s8) -> acc[i] + sum_k<4 u8[4i+k]*s8[4i+k]
        v16i32, v64i8 = ir.VectorType(I32, 16), ir.VectorType(I8, 64)
        return self.b.call(_fn(self.b, "llvm.x86.avx512.vpdpbusd.512", v16i32, [v16i32, v64i8, v64i8]), [acc, u8, s8])

    def dpwssd(self, acc, a, b):  # AVX-512 VNNI: (16 x i32, 32 x i16, 32 x i16) -> acc[i] + a[2i]*b[2i] + a[2i+1]*b[2i+1]
        v16i32, v32i16 = ir.VectorType(I32, 16), ir.VectorType(I16, 32)
        return self.b.call(_fn(self.b, "llvm.x86.avx512.vpdpwssd.512", v16i32, [v16i32, v32i16, v32i16]), [acc, a, b])

    def pshufb(self, v, mask):  # 32 x i8, per 128-bit lane: v[mask[i]], or 0 where mask[i] < 0
        return self.b.call(_fn(self.b, "llvm.x86.avx2.pshuf.b", V32I8, [V32I8, V32I8]), [v, mask])


def _ok(*tys):
    return all(t in BYTES for t in tys)


# --- whole-row decode kernels: the float combination stays in vectors, one horizontal sum per row ---
#
# Lane L (of 8) of a block holds the exact integer sum over the elements 4L..4L+3 of every 32 (the
# lanes of pmaddubsw followed by pmaddwd). Per block, lanes are converted to float32 and accumulated
# as acc[L] += float32(lane[L]) * (xd * d) (a multiply then an add, never fused), and the row's value
# is sum_L acc[L] - sum_L accm[L] in float64, L in order. intdot.py's portable loops do exactly this.

V8F = ir.VectorType(ir.FloatType(), 8)
F32ARR = (types.Array(types.float32, 1, "C", readonly=True), types.Array(types.float32, 1, "C"))
I32ARR = (types.Array(types.int32, 1, "C", readonly=True), types.Array(types.int32, 1, "C"))
I16ARR = (types.Array(types.int16, 1, "C", readonly=True), types.Array(types.int16, 1, "C"))


# Software prefetch distance for rows streamed from memory. The hardware prefetcher alone kept two threads
# at 17-19 GB/s on a Q6_K tensor; asking for the line 4 KB ahead of each block reached 24-26 (Zen 3 VM).
# A prefetch never faults: past the end of a tensor it is dropped or warms a line nobody reads, so the
# pages a model touches (only the selected experts' slabs) are unchanged.
PREFETCH_AHEAD = 4096


def _i64(builder, v):  # an integer argument widened to i64
    return builder.sext(v, I64) if v.type.width < 64 else v


def _prefetch_ahead(builder, ptr, offset, nbytes):
    """Ask for the nbytes at ptr + offset + PREFETCH_AHEAD, one request per 64-byte line (read, keep in
    all levels)."""
    fn = _fn(builder, "llvm.prefetch.p0", ir.VoidType(), [I8.as_pointer(), I32, I32, I32])
    for j in range(0, nbytes, 64):
        at = builder.gep(ptr, [builder.add(offset, ir.Constant(I64, PREFETCH_AHEAD + j))])
        builder.call(fn, [builder.bitcast(at, I8.as_pointer()), ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


@intrinsic
def prefetch_block(typingctx, row, offset, nbytes):
    """Prefetch the nbytes (a constant for the caller's format) of row starting PREFETCH_AHEAD bytes after
    offset, one request per 64-byte line. Generic IR: any CPU (a no-op where there is no prefetch)."""
    if not (_ok(row) and isinstance(offset, types.Integer) and isinstance(nbytes, types.IntegerLiteral)):
        return None

    def codegen(context, builder, sig, args):
        rp = context.make_array(sig.args[0])(context, builder, args[0]).data
        _prefetch_ahead(builder, rp, _i64(builder, args[1]), sig.args[2].literal_value)
        return context.get_dummy_value()

    return types.none(row, offset, nbytes), codegen


def _loop(builder, n, inits, step):
    """for i in range(n): values = step(i, values), in IR; returns the final values (inits if n <= 0)."""
    pre = builder.block
    loop, done = builder.append_basic_block("loop"), builder.append_basic_block("loop_done")
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    builder.position_at_end(loop)
    i, phis = builder.phi(I64), [builder.phi(v.type) for v in inits]
    nxt = step(i, phis)
    i2 = builder.add(i, ir.Constant(I64, 1))
    end = builder.block
    builder.cbranch(builder.icmp_signed("<", i2, n), loop, done)
    for phi, first, later in ((i, ir.Constant(I64, 0), i2), *zip(phis, inits, nxt)):
        phi.add_incoming(first, pre)
        phi.add_incoming(later, end)
    builder.position_at_end(done)
    finals = [builder.phi(v.type) for v in inits]
    for final, first, later in zip(finals, inits, nxt):
        final.add_incoming(first, pre)
        final.add_incoming(later, end)
    return finals


def _splat(builder, f, n=8):  # float -> <n x float>
    vty = ir.VectorType(ir.FloatType(), n)
    return builder.shuffle_vector(builder.insert_element(ir.Constant(vty, None), f, ir.Constant(I32, 0)),
                                  ir.Constant(vty, None), ir.Constant(ir.VectorType(I32, n), [0] * n))


def _lane_sum(builder, v):  # <8 x float> -> double: lanes 0..7 added in order
    s = ir.Constant(ir.DoubleType(), 0.0)
    for i in range(8):
        s = builder.fadd(s, builder.fpext(builder.extract_element(v, ir.Constant(I32, i)), ir.DoubleType()))
    return s


def _row_loop(context, builder, sig, args, block_bytes, body):
    """Loop over the blocks of a row: body(op, data, b) -> (terms, mterms), lists of (lane <8 x float>,
    scale: a float or <8 x float>) with acc += lane * scale, accm += mlane * mscale, in list order; returns
    sum(acc) - sum(accm) as a double. The row (the first argument) streams from memory: each block
    prefetches PREFETCH_AHEAD."""
    op = _Ops(context, builder)
    data = [context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else a for t, a in zip(sig.args, args)]
    n = builder.udiv(data[0].nitems, ir.Constant(I64, block_bytes))

    def step(b, accs):
        acc, accm = accs
        _prefetch_ahead(builder, data[0].data, builder.mul(b, ir.Constant(I64, block_bytes)), block_bytes)
        def add(total, terms):
            for lane, scale in terms:
                total = builder.fadd(total, builder.fmul(lane, scale if scale.type == V8F else _splat(builder, scale)))
            return total

        terms, mterms = body(op, [getattr(d, "data", d) for d in data], b)
        return add(acc, terms), add(accm, mterms)

    zero = ir.Constant(V8F, [0.0] * 8)
    acc, accm = _loop(builder, n, [zero, zero], step)
    return builder.fsub(_lane_sum(builder, acc), _lane_sum(builder, accm))


def _load_at(builder, ptr, offset, ty):
    return builder.load(builder.bitcast(builder.gep(ptr, [offset]), ty.as_pointer()), align=1)


def _load_whole32(builder, ptr, offset):
    """32 bits at ptr + offset that an empty asm statement takes in a register (it emits nothing): LLVM can
    no longer narrow the load to the half of them that is used (see _half_pair)."""
    bits = _load_at(builder, ptr, offset, I32)
    builder.asm(ir.FunctionType(ir.VoidType(), [I32]), "", "r", [bits], True)
    return bits


def _half_pair(builder, ptr, offset, whole=False):
    """The two f16 at ptr + offset as floats, loaded as one 32-bit vector. One scalar f16 load becomes
    vpinsrw into whatever register LLVM picks, often an accumulator: that chains every block's scale onto
    the previous block's sum. Where only the first half is used LLVM narrows the load to it all the same:
    whole makes an empty asm statement take the 32 bits in a register (it emits nothing), so that vmovd
    moves them whole (Q4_0 in cache, 1 thread: 4.6 -> 15 GB/s)."""
    if whole:
        halves = builder.bitcast(_load_whole32(builder, ptr, offset), ir.VectorType(ir.HalfType(), 2))
    else:
        halves = _load_at(builder, ptr, offset, ir.VectorType(ir.HalfType(), 2))
    v = builder.fpext(halves, ir.VectorType(ir.FloatType(), 2))
    return builder.extract_element(v, ir.Constant(I32, 0)), builder.extract_element(v, ir.Constant(I32, 1))


def _fold16(builder, v16):  # <16 x i32 or float> -> <8 x ...>: v[i] + v[i+8]
    undef = ir.Constant(v16.type, None)
    add = builder.fadd if isinstance(v16.type.element, ir.FloatType) else builder.add
    return add(builder.shuffle_vector(v16, undef, ir.Constant(V8I32, list(range(8)))),
               builder.shuffle_vector(v16, undef, ir.Constant(V8I32, list(range(8, 16)))))


def _even_odd_sum(builder, v16):  # <16 x i32> -> <8 x i32>: v[2i] + v[2i+1]
    undef = ir.Constant(v16.type, None)
    pick = lambda start: builder.shuffle_vector(v16, undef, ir.Constant(V8I32, list(range(start, 16, 2))))  # noqa: E731
    return builder.add(pick(0), pick(1))


def _q6_k_quants(builder, rp, at, h):
    """The unsigned quants u (0..63) of half h of a Q6_K block as four <32 x i8>, elements 128 h + 32 c + l."""
    splat8 = lambda k: ir.Constant(V32I8, [k] * 32)  # noqa: E731
    m15, m48 = splat8(15), splat8(48)
    a, cc = _load_at(builder, rp, at(64 * h), V32I8), _load_at(builder, rp, at(64 * h + 32), V32I8)
    e = _load_at(builder, rp, at(128 + 32 * h), V32I8)
    return (builder.or_(builder.and_(a, m15), builder.and_(builder.shl(e, splat8(4)), m48)),
            builder.or_(builder.and_(cc, m15), builder.and_(builder.shl(e, splat8(2)), m48)),
            builder.or_(builder.lshr(a, splat8(4)), builder.and_(e, m48)),
            builder.or_(builder.lshr(cc, splat8(4)), builder.and_(builder.lshr(e, splat8(2)), m48)))


def _row_args_ok(row, xd, xh, xl, bsums):
    return _ok(row, xh, xl) and xd in F32ARR and bsums in I32ARR


def _k_weights_256(builder, row_, at, sc8, qh_at, qs_at):
    """AVX2: a Q4_K / Q5_K block's quants as int16 vectors q[s, parity] (the even or odd elements of
    sub-block s, as qp holds them) and each sub-block's scale in 8 int32 lanes."""
    splat16 = lambda k: ir.Constant(V16I16, [k] * 16)  # noqa: E731
    sc_all = builder.shuffle_vector(sc8, ir.Constant(sc8.type, None), ir.Constant(ir.VectorType(I32, 32), list(range(8)) * 4))
    qh = None if qh_at is None else _load_at(builder, row_, at(qh_at), V16I16)
    qs, scales = {}, {}
    for g in range(4):
        v = _load_at(builder, row_, at(qs_at + 32 * g), V16I16)
        for half in range(2):
            s = 2 * g + half
            for parity in range(2):   # even elements (low bytes), then odd (high bytes)
                shift = 4 * half + 8 * parity
                q = builder.lshr(v, splat16(shift)) if shift else v
                q = builder.and_(q, splat16(15)) if shift < 12 else q
                if qh is not None:   # q |= bit s of the qh byte, moved to bit 4
                    bit = s + 8 * parity
                    moved = builder.lshr(qh, splat16(bit - 4)) if bit > 4 else builder.shl(qh, splat16(4 - bit))
                    q = builder.or_(q, builder.and_(moved, splat16(16)))
                qs[s, parity] = q
            scales[s] = builder.bitcast(_Ops(None, builder).pshufb(sc_all, ir.Constant(V32I8, [s, -128, -128, -128] * 8)), V8I32)
    return qs, scales


def _k_dot_256(op, xp_, y, weights):
    """AVX2: the exact sum_s scale[s] * sum q x of a Q4_K / Q5_K block (_k_weights_256) against the qp at
    xp_ + y, in 8 int32 lanes (lane L: elements 4L..4L+3 of each 32)."""
    builder, (qs, scales), acc = op.b, weights, None
    for s in range(8):
        ints = None
        for parity in range(2):
            p = op.madd(qs[s, parity], _load_at(builder, xp_, builder.add(y, ir.Constant(I64, qp_chunk(s, parity))), V16I16))
            ints = p if ints is None else builder.add(ints, p)
        p = builder.mul(ints, scales[s])
        acc = p if acc is None else builder.add(acc, p)
    return acc


def _k_weights_512(builder, row_, at, sc8, qh_at, qs_at, scaled=False):
    """AVX-512 VNNI: a 64-byte load holds the quants of groups 2P (low 256 bits) and 2P + 1, so each vector
    q[P, half, parity] holds sub-blocks s and s + 2 (s = 4 P + half); scales[P, half] those two scales, in
    the low and high 8 int32 lanes. scaled: q times its scale in int16 (vpmullw, q * scale <= 31 * 63)
    and no scales, for a block that meets several tokens (_k_dot_512 then multiplies nothing)."""
    v32 = ir.VectorType(I16, 32)
    splat = lambda k: ir.Constant(v32, [k] * 32)  # noqa: E731
    sc32, sc16 = builder.zext(sc8, V8I32), builder.zext(sc8, ir.VectorType(I16, 8))
    qh = None
    if qh_at is not None:   # the 16 qh words in both halves
        qh = _load_at(builder, row_, at(qh_at), V16I16)
        qh = builder.shuffle_vector(qh, qh, ir.Constant(ir.VectorType(I32, 32), list(range(16)) * 2))
    qs, scales = {}, {}
    for pg in range(2):
        v = _load_at(builder, row_, at(qs_at + 64 * pg), v32)
        for half in range(2):
            s = (4 * pg + half, 4 * pg + 2 + half)   # the sub-blocks of the low and high 256 bits
            scales[pg, half] = builder.shuffle_vector(sc32, ir.Constant(sc32.type, None),
                                                      ir.Constant(ir.VectorType(I32, 16), [s[0]] * 8 + [s[1]] * 8))
            for parity in range(2):
                shift = 4 * half + 8 * parity
                q = builder.lshr(v, splat(shift)) if shift else v
                q = builder.and_(q, splat(15)) if shift < 12 else q
                if qh is not None:   # q |= bit s + 8 parity of the qh word, moved to bit 4
                    bits = builder.lshr(qh, ir.Constant(v32, [s[0] + 8 * parity] * 16 + [s[1] + 8 * parity] * 16))
                    q = builder.or_(q, builder.and_(builder.shl(bits, splat(4)), splat(16)))
                assert qp_chunk(s[1], parity) == qp_chunk(s[0], parity) + 16   # one 64-byte load
                qs[pg, half, parity] = q
            if scaled:
                scale16 = builder.shuffle_vector(sc16, ir.Constant(sc16.type, None), ir.Constant(ir.VectorType(I32, 32), [s[0]] * 16 + [s[1]] * 16))
                for parity in range(2):
                    qs[pg, half, parity] = builder.mul(qs[pg, half, parity], scale16)
    return qs, ({} if scaled else scales)


def _k_dot_512(op, xp_, y, weights):
    """AVX-512 VNNI, the lanes of _k_dot_256: per (P, half) the two parities accumulate with vpdpwssd, then
    one vpmulld by the scales of s and s + 2 (eight vpmullw on the weights before: the multiplier was the
    bottleneck, 11% faster in cache). The high 8 lanes (groups 2P + 1) are added to the low ones at the end:
    the same integers as _k_dot_256 (each lane < 2**31 before and after)."""
    builder, (qs, scales) = op.b, weights
    v32 = ir.VectorType(I16, 32)
    if not scales:   # weights scaled already: two chains
        chains = []
        for pg in range(2):
            acc = ir.Constant(ir.VectorType(I32, 16), [0] * 16)
            for half in range(2):
                for parity in range(2):
                    x = _load_at(builder, xp_, builder.add(y, ir.Constant(I64, qp_chunk(4 * pg + half, parity))), v32)
                    acc = op.dpwssd(acc, qs[pg, half, parity], x)
            chains.append(acc)
        return _fold16(builder, builder.add(*chains))
    accs = []   # four chains: vpdpwssd's latency, not its throughput, bound one
    for pg in range(2):
        for half in range(2):
            acc = ir.Constant(ir.VectorType(I32, 16), [0] * 16)
            for parity in range(2):
                s0 = 4 * pg + half
                x = _load_at(builder, xp_, builder.add(y, ir.Constant(I64, qp_chunk(s0, parity))), v32)
                acc = op.dpwssd(acc, qs[pg, half, parity], x)
            accs.append(builder.mul(acc, scales[pg, half]))
    return _fold16(builder, builder.add(builder.add(accs[0], accs[1]), builder.add(accs[2], accs[3])))


def _k_scales_mins(builder, row_, o):
    """The 8 six-bit scales and 8 mins of the Q4_K / Q5_K block at row_ + o (12 bytes at o + 4, b[0..11]) as
    two <8 x i8>, in vector code (16 scalar ops a block before): for s < 4 scale = b[s] & 63, min = b[s + 4] & 63;
    for s >= 4 scale = (b[s + 4] & 15) | (b[s - 4] >> 6) << 4, min = (b[s + 4] >> 4) | (b[s] >> 6) << 4."""
    v = _load_at(builder, row_, o, V16I8)   # d, dmin, then b at v[4..15]
    shuffle = lambda a, bb, idx: builder.shuffle_vector(a, bb, ir.Constant(ir.VectorType(I32, len(idx)), idx))  # noqa: E731
    words = lambda x: builder.bitcast(x, ir.VectorType(I16, 8))  # noqa: E731
    as_bytes = lambda x: builder.bitcast(x, V16I8)  # noqa: E731
    zero = ir.Constant(V16I8, [0] * 16)
    # lanes 0..7 the scales, 8..15 the mins: low bits from a (lanes 12..15 the high nibbles: a word shift by 4)
    a = shuffle(v, v, [4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15])
    a4 = as_bytes(builder.lshr(words(a), ir.Constant(ir.VectorType(I16, 8), [4] * 8)))
    low = builder.and_(shuffle(a, a4, list(range(12)) + [28, 29, 30, 31]), ir.Constant(V16I8, ([63] * 4 + [15] * 4) * 2))
    # bits 4, 5 of lanes 4..7 and 12..15: bits 6, 7 of b[s - 4] (scales) and b[s] (mins); (x >> 6) << 4 = (x >> 2) & 0x30
    top = shuffle(v, zero, [16] * 4 + [4, 5, 6, 7] + [16] * 4 + [8, 9, 10, 11])
    top = builder.and_(as_bytes(builder.lshr(words(top), ir.Constant(ir.VectorType(I16, 8), [2] * 8))), ir.Constant(V16I8, [0x30] * 16))
    both = builder.or_(low, top)
    return shuffle(both, both, list(range(8))), shuffle(both, both, list(range(8, 16)))


def _k_terms(op, dot, weights, b, d, dmin, mn32, xd_, xp_, bs_):
    """Block b's terms for _row_loop: its weights (_k_weights_*) against one token's xd, qp and bsums, by dot
    (_k_dot_256 or _k_dot_512)."""
    builder = op.b
    # lane L: elements 4L..4L+3 of each of 8 sub-blocks, 8 x 4 x 31 x 32512 x 63 < 2**31 (Q5_K)
    acc = dot(op, xp_, builder.mul(b, ir.Constant(I64, 256)), weights)
    xdb = _load_at(builder, xd_, b, ir.FloatType())
    return ([(builder.sitofp(acc, V8F), builder.fmul(xdb, d))],
            [(builder.sitofp(_k_mins(builder, mn32, bs_, b), V8F), builder.fmul(xdb, dmin))])


def _k_mins(builder, mn32, bs_, b):   # min[s] * the sum of block b's q16 over sub-block s: < 63 * 1.05e6
    pairs = _even_odd_sum(builder, _load_at(builder, bs_, builder.mul(b, ir.Constant(I64, 16)), ir.VectorType(I32, 16)))
    return builder.mul(mn32, pairs)


def _k_terms16(op, weights, b, dd16, mn32, xd_, xp_, bs_):
    """_k_terms in one 16-lane float32 vector (AVX-512): lanes 0..7 the sums' term, 8..15 the mins' term;
    dd16 = (d x 8, dmin x 8). Lane by lane the same float32 operations, so the same values."""
    builder = op.b
    acc = _k_dot_512(op, xp_, builder.mul(b, ir.Constant(I64, 256)), weights)
    both = builder.shuffle_vector(acc, _k_mins(builder, mn32, bs_, b), ir.Constant(ir.VectorType(I32, 16), list(range(16))))
    scale = builder.fmul(_splat(builder, _load_at(builder, xd_, b, ir.FloatType()), 16), dd16)
    return builder.fmul(builder.sitofp(both, ir.VectorType(ir.FloatType(), 16)), scale)


def _q4_5_k_row(block_bytes, qh_at, qs_at, wide=False):
    """The row intrinsic of Q4_K (qh_at None) or Q5_K (a fifth bit per weight in 32 bytes at qh_at: bit s of
    byte l belongs to element l of sub-block s). Scales and mins are packed alike in both.
    Word k of the 32 quant bytes of sub-blocks 2g, 2g + 1 holds element 2k of both in its low byte (a nibble
    each) and element 2k + 1 in its high byte: shifts and masks make four int16 vectors of them that meet qp
    (evens, then odds of each 32) in pmaddwd. Per 32 weights 2 pmaddwd and a pmulld by the scale, where
    pmaddubsw on the hi and lo planes took 4 multiplies: 8% faster in cache."""
    @intrinsic
    def k_row(typingctx, row, xd, xp, bsums):
        if not (_ok(row) and xd in F32ARR and xp in I16ARR and bsums in I32ARR):
            return None

        def body(op, ptrs, b):
            builder = op.b
            row_, xd_, xp_, bs_ = ptrs
            o = builder.mul(b, ir.Constant(I64, block_bytes))
            at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731
            d, dmin = _half_pair(builder, row_, o)
            sc8, mn8 = _k_scales_mins(builder, row_, o)
            weights = (_k_weights_512 if wide else _k_weights_256)(builder, row_, at, sc8, qh_at, qs_at)
            return _k_terms(op, _k_dot_512 if wide else _k_dot_256, weights, b, d, dmin, builder.zext(mn8, V8I32), xd_, xp_, bs_)

        def codegen(context, builder, sig, args):
            return _row_loop(context, builder, sig, args, block_bytes, body)

        return types.float64(row, xd, xp, bsums), codegen
    return k_row


TOKENS_GROUP = 4   # _q4_5_k_tokens: tokens per pass over a row (2 x 4 float32 accumulators in registers)


def _q4_5_k_tokens(block_bytes, qh_at, qs_at, wide):
    """The row intrinsic of _q4_5_k_row for T tokens at once: each block's scales and quants are unpacked once
    and meet every token's activations (stacked: xd (T, K/256), xp (T, K), bsums (T, K/16)); out[t, r] is
    token t's sum, the same operations in the same order as the one-token kernel, so the same bits. For the
    few tokens of a small chunk or of a MoE expert, where unpacking dominated the token-by-token loop."""
    arr2 = lambda dt, ro: types.Array(dt, 2, "C", readonly=ro)  # noqa: E731

    @intrinsic
    def k_tokens(typingctx, row, xd, xp, bsums, out, r):
        if not (_ok(row) and xd in (arr2(types.float32, True), arr2(types.float32, False))
                and xp in (arr2(types.int16, True), arr2(types.int16, False))
                and bsums in (arr2(types.int32, True), arr2(types.int32, False))
                and out == arr2(types.float32, False) and isinstance(r, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            op = _Ops(context, builder)
            row_a, xd_a, xp_a, bs_a, out_a = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:5], args[:5]))
            row_, r_ = row_a.data, _i64(builder, args[5])
            n_t, n_out = cgutils.unpack_tuple(builder, out_a.shape)
            strides = [cgutils.unpack_tuple(builder, a.shape)[1] for a in (xd_a, xp_a, bs_a)]
            n_blocks = builder.udiv(row_a.nitems, ir.Constant(I64, block_bytes))
            zero = ir.Constant(V8F, [0.0] * 8)

            def add(total, terms):   # as _row_loop
                (lane, scale), = terms
                return builder.fadd(total, builder.fmul(lane, _splat(builder, scale)))

            def tokens(t0, n):   # tokens t0 .. t0 + n - 1 (n a constant), their sums in registers
                ptrs = [[builder.gep(a.data, [builder.mul(builder.add(t0, ir.Constant(I64, g)), st)])
                         for a, st in zip((xd_a, xp_a, bs_a), strides)] for g in range(n)]

                def block(b, accs):
                    o = builder.mul(b, ir.Constant(I64, block_bytes))
                    _prefetch_ahead(builder, row_, o, block_bytes)
                    at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731
                    d, dmin = _half_pair(builder, row_, o)
                    sc8, mn8 = _k_scales_mins(builder, row_, o)
                    mn32 = builder.zext(mn8, V8I32)
                    if wide:   # acc and accm as one 16-lane vector per token
                        weights = _k_weights_512(builder, row_, at, sc8, qh_at, qs_at, scaled=True)
                        dd16 = builder.shuffle_vector(_splat(builder, d), _splat(builder, dmin), ir.Constant(ir.VectorType(I32, 16), list(range(16))))
                        return [builder.fadd(accs[g], _k_terms16(op, weights, b, dd16, mn32, *ptrs[g])) for g in range(n)]
                    weights, new = _k_weights_256(builder, row_, at, sc8, qh_at, qs_at), []
                    for g in range(n):
                        terms, mterms = _k_terms(op, _k_dot_256, weights, b, d, dmin, mn32, *ptrs[g])
                        new += [add(accs[2 * g], terms), add(accs[2 * g + 1], mterms)]
                    return new

                if wide:
                    acc16 = _loop(builder, n_blocks, [ir.Constant(ir.VectorType(ir.FloatType(), 16), [0.0] * 16)] * n, block)
                    accs = [builder.shuffle_vector(a, a, ir.Constant(V8I32, list(range(h, h + 8)))) for a in acc16 for h in (0, 8)]
                else:
                    accs = _loop(builder, n_blocks, [zero] * (2 * n), block)
                for g in range(n):
                    total = builder.fsub(_lane_sum(builder, accs[2 * g]), _lane_sum(builder, accs[2 * g + 1]))
                    at = builder.add(builder.mul(builder.add(t0, ir.Constant(I64, g)), n_out), r_)
                    builder.store(builder.fptrunc(total, ir.FloatType()), builder.gep(out_a.data, [at]))

            def group(i, _):   # up to GROUP tokens per pass over the row
                t0 = builder.mul(i, ir.Constant(I64, TOKENS_GROUP))
                left = builder.sub(n_t, t0)

                def pick(n):   # the variant for min(left, n) tokens
                    if n == 1:
                        return tokens(t0, 1)
                    with builder.if_else(builder.icmp_signed(">=", left, ir.Constant(I64, n))) as (then, otherwise):
                        with then:
                            tokens(t0, n)
                        with otherwise:
                            pick(n - 1)
                pick(TOKENS_GROUP)
                return []
            _loop(builder, builder.udiv(builder.add(n_t, ir.Constant(I64, TOKENS_GROUP - 1)), ir.Constant(I64, TOKENS_GROUP)), [], group)
            return context.get_dummy_value()

        return types.none(row, xd, xp, bsums, out, r), codegen
    return k_tokens


q4_k_row = _q4_5_k_row(144, None, 16)   # sum_e w[e] * x[e] over a Q4_K row, x as activations.py's (xd, qp, bsums)
q5_k_row = _q4_5_k_row(176, 16, 48)     # ... over a Q5_K row
q4_k_row512 = _q4_5_k_row(144, None, 16, wide=True)   # the same, AVX-512 VNNI
q5_k_row512 = _q4_5_k_row(176, 16, 48, wide=True)
# ... for several tokens at once (out[t, r])
q4_k_tokens, q5_k_tokens = _q4_5_k_tokens(144, None, 16, False), _q4_5_k_tokens(176, 16, 48, False)
q4_k_tokens512, q5_k_tokens512 = _q4_5_k_tokens(144, None, 16, True), _q4_5_k_tokens(176, 16, 48, True)


@intrinsic
def q8_0_row(typingctx, row, xd, x16):
    """sum_e w[e] * x[e] over a Q8_0 row (blocks of 32: f16 d, 32 int8) against the 16-bit activations
    directly: sign-extended weights meet q16 in pmaddwd (exact int32 lanes), then per block
    acc += f32(lanes) * (d * xd[b // 8]). No mins. The row is a whole number of 256-element groups (8
    blocks, one xd): the 8 scales are widened as one vector, which keeps them off the accumulator's chain
    (one scalar f16 load per block was 17 cycles per block, LLVM merging it into the accumulator's register)."""
    if not (_ok(row) and xd in F32ARR and x16 in I16ARR):
        return None

    def body(op, ptrs, g):
        builder = op.b
        row_, xd_, x_ = ptrs
        o = builder.mul(g, ir.Constant(I64, 8 * 34))
        y = builder.mul(g, ir.Constant(I64, 256))
        d16 = ir.Constant(ir.VectorType(I16, 8), [0] * 8)
        for j in range(8):
            d16 = builder.insert_element(d16, _load_at(builder, row_, builder.add(o, ir.Constant(I64, 34 * j)), I16), ir.Constant(I32, j))
        d = builder.fpext(builder.bitcast(d16, ir.VectorType(ir.HalfType(), 8)), V8F)
        scales = builder.fmul(d, _splat(builder, _load_at(builder, xd_, g, ir.FloatType())))
        terms = []
        for j in range(8):
            lanes = None
            for c in range(2):
                q = builder.sext(_load_at(builder, row_, builder.add(o, ir.Constant(I64, 34 * j + 2 + 16 * c)), V16I8), V16I16)
                p = op.madd(q, _load_at(builder, x_, builder.add(y, ir.Constant(I64, 32 * j + 16 * c)), V16I16))
                lanes = p if lanes is None else builder.add(lanes, p)
            scale = builder.shuffle_vector(scales, ir.Constant(V8F, None), ir.Constant(V8I32, [j] * 8))
            terms.append((builder.sitofp(lanes, V8F), scale))
        return terms, []

    def codegen(context, builder, sig, args):
        return _row_loop(context, builder, sig, args, 8 * 34, body)

    return types.float64(row, xd, x16), codegen


def _q6_k_row(wide):
    @intrinsic
    def q6_k_row(typingctx, row, xd, xh, xl, bsums):
        """sum_e w[e] * x[e] over a Q6_K row. The unsigned quants u = q + 32 meet the hi and lo planes;
        a lane is float32(hi lane) * 256 + float32(lo lane) (it can exceed int32), and the offset
        32 * scale[j] * bsums[j] goes to accm as lanes j + j+8, times xd * d * 32.
        AVX2: pmaddubsw then pmaddwd by the scales. AVX-512 VNNI (wide): two columns' quants as one 64-byte
        vector, vpdpbusd (the same sums of 4 products per int32 lane) then vpmulld by the scales; its upper 8
        lanes (the second column) fold onto the lower 8 at the end: the same integers."""
        if not _row_args_ok(row, xd, xh, xl, bsums):
            return None

        def body(op, ptrs, b):
            builder = op.b
            row_, xd_, xh_, xl_, bs_ = ptrs
            o = builder.mul(b, ir.Constant(I64, 210))
            at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731
            d = _half_pair(builder, row_, at(206))[1]   # bytes 206-207 are the last scale
            scales8 = _load_at(builder, row_, at(192), V16I8)
            y = builder.mul(b, ir.Constant(I64, 256))
            acc_h = acc_l = None
            if wide:
                v16i32, v64i8 = ir.VectorType(I32, 16), ir.VectorType(I8, 64)
                scales = builder.sext(scales8, v16i32)
                for h in range(2):
                    q = _q6_k_quants(builder, row_, at, h)
                    for col in (0, 2):   # columns col, col + 1: elements 128 h + 32 col .. + 64
                        q64 = builder.shuffle_vector(q[col], q[col + 1], ir.Constant(ir.VectorType(I32, 64), list(range(64))))
                        j = 8 * h + 2 * col   # lanes 4i..4i+3 take scale j + i
                        scale = builder.shuffle_vector(scales, ir.Constant(v16i32, None),
                                                       ir.Constant(v16i32, [j + i // 4 for i in range(16)]))
                        off = builder.add(y, ir.Constant(I64, 128 * h + 32 * col))
                        zero = ir.Constant(v16i32, [0] * 16)
                        ph = builder.mul(op.dpbusd(zero, q64, _load_at(builder, xh_, off, v64i8)), scale)
                        pl = builder.mul(op.dpbusd(zero, q64, _load_at(builder, xl_, off, v64i8)), scale)
                        acc_h = ph if acc_h is None else builder.add(acc_h, ph)
                        acc_l = pl if acc_l is None else builder.add(acc_l, pl)
                acc_h, acc_l = _fold16(builder, acc_h), _fold16(builder, acc_l)
            else:
                scales = builder.sext(scales8, V16I16)
                for h in range(2):
                    for col, q in enumerate(_q6_k_quants(builder, row_, at, h)):
                        j = 8 * h + 2 * col  # scale of elements l < 16; j + 1 for l >= 16
                        scale = builder.shuffle_vector(scales, ir.Constant(V16I16, None),
                                                       ir.Constant(ir.VectorType(I32, 16), [j] * 8 + [j + 1] * 8))
                        off = builder.add(y, ir.Constant(I64, 128 * h + 32 * col))
                        ph = op.madd(op.maddubs(q, _load_at(builder, xh_, off, V32I8)), scale)
                        pl = op.madd(op.maddubs(q, _load_at(builder, xl_, off, V32I8)), scale)
                        acc_h = ph if acc_h is None else builder.add(acc_h, ph)
                        acc_l = pl if acc_l is None else builder.add(acc_l, pl)
            lane = builder.fadd(builder.fmul(builder.sitofp(acc_h, V8F), ir.Constant(V8F, [256.0] * 8)), builder.sitofp(acc_l, V8F))
            v16 = ir.VectorType(I32, 16)
            offs = builder.mul(builder.sext(scales8, v16), _load_at(builder, bs_, builder.mul(b, ir.Constant(I64, 16)), v16))
            m = _fold16(builder, offs)
            dd = builder.fmul(_load_at(builder, xd_, b, ir.FloatType()), d)
            return [(lane, dd)], [(builder.sitofp(m, V8F), builder.fmul(dd, ir.Constant(ir.FloatType(), 32.0)))]

        def codegen(context, builder, sig, args):
            return _row_loop(context, builder, sig, args, 210, body)

        return types.float64(row, xd, xh, xl, bsums), codegen
    return q6_k_row


q6_k_row = _q6_k_row(False)
q6_k_row512 = _q6_k_row(True)   # the same lanes, AVX-512 VNNI
