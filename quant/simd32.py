"""AVX2 and AVX-512 VNNI decode of the types with blocks of 32 (Q4_0, Q4_1, Q8_0) against activations
quantized per 32 (activations.quantize32), as LLVM IR: the scheme of simd.py, two blocks per step. The
portable twin is intdot.b32_row_loop.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .simd import (F32ARR, I16, I16ARR, I32, I32ARR, I64, V8F, V8I32, V16I8, V16I16, _half_pair, _lane_sum, _load_at, _load_whole32, _loop, _ok, _Ops,
                   _prefetch_ahead, _splat)


def _b32_quants(builder, row_, at, kind, blocks):
    """The quants of `blocks` (1 or 2) blocks of 32, block k's bytes at at(k, offset), as two int16 vectors:
    elements 0..15 of each block, then elements 16..31 (the two nibbles of Q4 byte i are elements i and
    16 + i); the second block's in the upper half of each."""
    n = 16 * blocks
    vi16 = ir.VectorType(I16, n)
    cat = lambda vs, lanes: vs[0] if len(vs) == 1 else builder.shuffle_vector(vs[0], vs[1], ir.Constant(ir.VectorType(I32, lanes), list(range(lanes))))  # noqa: E731
    if kind == 2:   # Q8_0: int8 at 2 .. 34
        halves = [cat([_load_at(builder, row_, at(k, 2 + 16 * c), V16I8) for k in range(blocks)], n) for c in range(2)]
        return [builder.sext(h, vi16) for h in halves]
    v = builder.zext(cat([_load_at(builder, row_, at(k, 2 + 2 * kind), V16I8) for k in range(blocks)], n), vi16)
    qs = [builder.and_(v, ir.Constant(vi16, [15] * n)), builder.lshr(v, ir.Constant(vi16, [4] * n))]
    return [builder.sub(q, ir.Constant(vi16, [8] * n)) for q in qs] if kind == 0 else qs


def _b32_row(kind, block_bytes, wide=False):
    """The row intrinsic of Q4_0 (kind 0), Q4_1 (1) or Q8_0 (2) against activations quantized per 32
    (activations.quantize32): per block, the quants widened to int16 (the two nibbles of Q4 bytes i are
    elements i and 16 + i) meet q16 in two pmaddwd; lane i sums elements 2i, 2i + 1, 16 + 2i, 17 + 2i.
    The even blocks accumulate in one float32 vector, the odd ones in another, added at the end (two chains
    of additions; as intdot.b32_row_loop). wide (AVX-512 VNNI): a pair of blocks per step in 16 lanes, the
    odd block's in the upper 8, two vpdpwssd and one float32 operation each for both."""
    @intrinsic
    def row32(typingctx, row, xd, x16, s32):
        if not (_ok(row) and xd in F32ARR and x16 in I16ARR and s32 in I32ARR):
            return None

        def block_terms(op, ptrs, b):   # one block in 8 lanes: (ints, scale), (mins lane vector, scale) or None
            builder = op.b
            row_, xd_, x_, s_ = ptrs
            o, y = builder.mul(b, ir.Constant(I64, block_bytes)), builder.mul(b, ir.Constant(I64, 32))
            d, m = _half_pair(builder, row_, o, whole=kind == 0)   # Q4_0, Q8_0: m is quant bytes, unused
            qs = _b32_quants(builder, row_, lambda k, off: builder.add(o, ir.Constant(I64, off)), kind, 1)
            xs = [_load_at(builder, x_, builder.add(y, ir.Constant(I64, 16 * c)), V16I16) for c in range(2)]
            lanes = builder.add(op.madd(qs[0], xs[0]), op.madd(qs[1], xs[1]))
            xdb = _load_at(builder, xd_, b, ir.FloatType())
            mins = None
            if kind == 1:   # accm[0] += f32(s32) * -(xd * m)
                sv = builder.sitofp(_load_at(builder, s_, b, I32), ir.FloatType())
                mins = (builder.insert_element(ir.Constant(V8F, [0.0] * 8), sv, ir.Constant(I32, 0)), builder.fneg(builder.fmul(xdb, m)))
            return (builder.sitofp(lanes, V8F), builder.fmul(xdb, d)), mins

        def pair_terms(op, ptrs, b):   # blocks b, b + 1 in 16 lanes
            builder = op.b
            row_, xd_, x_, s_ = ptrs
            v16f = ir.VectorType(ir.FloatType(), 16)
            o = builder.mul(b, ir.Constant(I64, block_bytes))
            at = lambda k, off: builder.add(o, ir.Constant(I64, block_bytes * k + off))  # noqa: E731
            # (d, m) of both blocks as one <4 x half> (two 32-bit loads; m is quant bytes for Q4_0 and Q8_0)
            bits = [_load_whole32(builder, row_, at(k, 0)) if kind == 0 else _load_at(builder, row_, at(k, 0), I32)
                    for k in range(2)]   # Q4_0 uses d only: kept whole as in _half_pair
            pair = builder.insert_element(builder.insert_element(ir.Constant(ir.VectorType(I32, 2), None), bits[0], ir.Constant(I32, 0)),
                                          bits[1], ir.Constant(I32, 1))
            dm = builder.fpext(builder.bitcast(pair, ir.VectorType(ir.HalfType(), 4)), ir.VectorType(ir.FloatType(), 4))
            pick = lambda v, idx: builder.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(ir.VectorType(I32, len(idx)), idx))  # noqa: E731
            qs = _b32_quants(builder, row_, at, kind, 2)
            y = builder.mul(b, ir.Constant(I64, 32))
            x = [_load_at(builder, x_, builder.add(y, ir.Constant(I64, 32 * k)), ir.VectorType(I16, 32)) for k in range(2)]
            # elements 0..15 of both blocks, then 16..31
            xs = [builder.shuffle_vector(x[0], x[1], ir.Constant(ir.VectorType(I32, 32), list(range(16 * c, 16 * c + 16)) + list(range(32 + 16 * c, 48 + 16 * c))))
                  for c in range(2)]
            zero = ir.Constant(ir.VectorType(I32, 16), [0] * 16)
            lanes = op.dpwssd(op.dpwssd(zero, qs[0], xs[0]), qs[1], xs[1])
            xd2 = _load_at(builder, xd_, b, ir.VectorType(ir.FloatType(), 2))
            halves = [0] * 8 + [1] * 8
            scale = pick(builder.fmul(xd2, pick(dm, [0, 2])), halves)   # xd * d of each block, lane by lane as block_terms
            mins = None
            if kind == 1:
                sv = builder.sitofp(_load_at(builder, s_, b, ir.VectorType(I32, 2)), ir.VectorType(ir.FloatType(), 2))
                mv = builder.shuffle_vector(sv, ir.Constant(sv.type, [0.0, 0.0]), ir.Constant(ir.VectorType(I32, 16), [0] + [2] * 7 + [1] + [2] * 7))
                mins = (mv, pick(builder.fneg(builder.fmul(xd2, pick(dm, [1, 3]))), halves))
            return (builder.sitofp(lanes, v16f), scale), mins

        def codegen(context, builder, sig, args):
            return _row_loop_pairs(context, builder, sig, args, block_bytes, block_terms, pair_terms if wide else None)

        return types.float64(row, xd, x16, s32), codegen
    return row32


def _row_loop_pairs(context, builder, sig, args, block_bytes, block_terms, pair_terms):
    """simd._row_loop with the even blocks' terms in one pair of accumulators (acc, accm) and the odd blocks' in
    another, added lane by lane at the end: sum(acc_even + acc_odd) - sum(accm_even + accm_odd). Blocks go
    two per step; pair_terms (AVX-512) gives both in 16 lanes, the odd block's upper; else block_terms twice.
    An odd last block goes to the even accumulators after the loop. Terms: (lanes, scale), mins (lanes,
    scale) or None, acc += lanes * scale."""
    op = _Ops(context, builder)
    data = [context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else a for t, a in zip(sig.args, args)]
    ptrs = [getattr(d, "data", d) for d in data]
    n = builder.udiv(data[0].nitems, ir.Constant(I64, block_bytes))
    lanes = 16 if pair_terms else 8
    zero = ir.Constant(ir.VectorType(ir.FloatType(), lanes), [0.0] * lanes)

    def add(total, term):
        if term is None:
            return total
        lane, scale = term
        return builder.fadd(total, builder.fmul(lane, scale if isinstance(scale.type, ir.VectorType) else _splat(builder, scale)))

    def step(p, accs):
        b = builder.add(p, p)
        _prefetch_ahead(builder, data[0].data, builder.mul(b, ir.Constant(I64, block_bytes)), 2 * block_bytes)
        if pair_terms:
            terms, mins = pair_terms(op, ptrs, b)
            return [add(accs[0], terms), add(accs[1], mins)]
        (t0, m0), (t1, m1) = block_terms(op, ptrs, b), block_terms(op, ptrs, builder.add(b, ir.Constant(I64, 1)))
        return [add(accs[0], t0), add(accs[1], m0), add(accs[2], t1), add(accs[3], m1)]

    accs = _loop(builder, builder.udiv(n, ir.Constant(I64, 2)), [zero] * (2 if pair_terms else 4), step)
    if pair_terms:   # halves: even blocks, odd blocks
        low = lambda v: builder.shuffle_vector(v, v, ir.Constant(V8I32, list(range(8))))  # noqa: E731
        high = lambda v: builder.shuffle_vector(v, v, ir.Constant(V8I32, list(range(8, 16))))  # noqa: E731
        accs = [low(accs[0]), low(accs[1]), high(accs[0]), high(accs[1])]

    def tail(_, evens):   # the last block of an odd count
        terms, mins = block_terms(op, ptrs, builder.sub(n, ir.Constant(I64, 1)))
        return [add(evens[0], terms), add(evens[1], mins)]
    evens = _loop(builder, builder.urem(n, ir.Constant(I64, 2)), accs[:2], tail)
    acc, accm = builder.fadd(evens[0], accs[2]), builder.fadd(evens[1], accs[3])
    return builder.fsub(_lane_sum(builder, acc), _lane_sum(builder, accm))


q4_0_row32, q4_1_row32, q8_0_row32 = _b32_row(0, 18), _b32_row(1, 20), _b32_row(2, 34)
q4_0_row32_512, q4_1_row32_512, q8_0_row32_512 = _b32_row(0, 18, True), _b32_row(1, 20, True), _b32_row(2, 34, True)
