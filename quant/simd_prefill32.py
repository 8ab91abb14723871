"""Prefill intrinsics of the types with blocks of 32 (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1): unpack sixteen blocks at a time
into the interleaved layout (activations.slot32) and the four-by-two kernel whose int32 lane i sums block i alone.
simd_prefill.py has the K-quants' twins of both and the helpers they share; intdot_prefill.py the portable twins.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .simd import I16, I32, I64, V16I8, V32I8, _load_at, _loop
from .simd_prefill import _four_rows, _store_at, _unpack_intrinsic, _w4x2_ok


def _w32_4x2(wide, mins):
    @intrinsic
    def w32_4x2(typingctx, w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
        """As simd_prefill.w16_4x2 (the same frame, _four_rows) for rows of 32-blocks, laid out by
        activations.slot32: each 512 weights hold 16 blocks, int32 pair i of every 32 from block i, so lane i of a
        vpdpwssd (pmaddwd: two halves of 8) sums block i alone and 16 of them give 16 blocks' exact integer sums,
        which float32 then scales lane by lane: acc[i] += f32(lane i) * (xd * d) per group, and for Q4_1 (mins)
        acc[i] += m * sx, m the block's offset, sx = xd times the sum of its q16. A last group of n < 16 blocks
        is 32 n long (n chunks of 32, lane i holding part of block i mod n). dsc, msc (4 Q x 16 per group): d and
        m by lane; xd, px (16 per group of xs per token, from bo): the tokens' xd and sx by lane."""
        if not _w4x2_ok(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
            return None

        def codegen(context, builder, sig, args):
            c = lambda v: ir.Constant(I64, v)  # noqa: E731
            groups = lambda v: builder.udiv(builder.add(v, c(511)), c(512))  # noqa: E731

            def strides(k, xs_):   # 16 scales a group, the last group counted whole
                return builder.mul(groups(k), c(16)), builder.mul(groups(xs_), c(16))

            def group_loop(f, keys, chunk):
                # whole groups, then a last one of 32 n weights (n < 16: tail chunks)
                ng, tail = builder.udiv(f.k, c(512)), builder.udiv(builder.urem(f.k, c(512)), c(32))
                zeros = [ir.Constant(ir.VectorType(I32, f.lanes), [0] * f.lanes)] * len(keys)

                def step(g, accs):
                    ints = zeros
                    for jj in range(16):
                        ints = chunk(builder.add(builder.mul(g, c(512)), c(32 * jj)), ints)
                    return scale(g, ints, accs)

                def tail_step(_, accs):   # the last group's tail chunks, in a loop
                    y = builder.mul(ng, c(512))
                    return scale(ng, _loop(builder, tail, zeros, lambda jj, ints: chunk(builder.add(y, builder.mul(jj, c(32))), ints)), accs)

                def scale(g, ints, accs):
                    at = lambda base, h: builder.add(base, builder.add(builder.mul(g, c(16)), c(8 * h)))  # noqa: E731
                    row = lambda wi, h: at(builder.mul(f.nsc, c(wi)), h)  # noqa: E731
                    new = []
                    for p, (wi, xi, h) in enumerate(keys):
                        d, xd = _load_at(builder, f.d, row(wi, h), f.vf), _load_at(builder, f.xd, at(f.scs[xi], h), f.vf)
                        acc = builder.fadd(accs[p], builder.fmul(builder.sitofp(ints[p], f.vf), builder.fmul(xd, d)))
                        if mins:
                            m, sx = _load_at(builder, f.m, row(wi, h), f.vf), _load_at(builder, f.px, at(f.scs[xi], h), f.vf)
                            acc = builder.fadd(acc, builder.fmul(m, sx))
                        new.append(acc)
                    return new

                accs = _loop(builder, ng, [ir.Constant(f.vf, [0.0] * f.lanes)] * len(keys), step)
                return _loop(builder, builder.zext(builder.icmp_unsigned("!=", tail, c(0)), I64), accs, tail_step)

            _four_rows(context, builder, sig, args, wide, False, strides, group_loop)
            return context.get_dummy_value()

        return types.none(w16, dsc, msc, x16, xd, px, xo, bo, xs, out), codegen
    return w32_4x2


w32_4x2, w32_4x2_nomins = _w32_4x2(False, True), _w32_4x2(False, False)
w32_4x2_512, w32_4x2_nomins_512 = _w32_4x2(True, True), _w32_4x2(True, False)


B32_BYTES = (18, 20, 34, 22, 24)   # Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 (kinds 0..4)


def _b32_unpack16(kind):
    """Sixteen blocks of Q4_0 (kind 0: q - 8), Q4_1 (1: q), Q8_0 (2: q), Q5_0 (3: q - 16) or Q5_1 (4: q) from
    row[o:], interleaved into 512 int16 at w16[y:]: int32 pair j (elements 2 j, 2 j + 1) of block i at pair
    16 j + i (activations.interleave32). Each block's 16 pairs are one <16 x i32>; the 16 x 16 transpose is
    four rounds of two-input shuffles. Their d to dsc[j:j + 16], their m (Q4_1, Q5_1; else 0) to msc[j:j + 16]."""
    nbytes = B32_BYTES[kind]
    qs_at, qh_at = (2, 4, 2, 6, 8)[kind], (None, None, None, 2, 4)[kind]

    def body(builder, rp, wp, dp, mp, o_, y_, j_):
        v16i32, v32i16 = ir.VectorType(I32, 16), ir.VectorType(I16, 32)
        # the blocks' d (and m) as one vector: 16 f16 -> float32 in one conversion
        v16i16, v16f = ir.VectorType(I16, 16), ir.VectorType(ir.FloatType(), 16)
        for ptr, at in ((dp, 0), (mp, 2 if kind in (1, 4) else None)):
            f = ir.Constant(v16f, [0.0] * 16)
            if at is not None:
                h = ir.Constant(v16i16, [0] * 16)
                for i in range(16):
                    h = builder.insert_element(h, _load_at(builder, rp, builder.add(o_, ir.Constant(I64, nbytes * i + at)), I16), ir.Constant(I32, i))
                f = builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), 16)), v16f)
            _store_at(builder, ptr, j_, f)
        rows = []
        v32i32 = ir.VectorType(I32, 32)
        for i in range(16):
            at = lambda k: builder.add(o_, ir.Constant(I64, nbytes * i + k))  # noqa: E731
            if kind == 2:
                q = builder.sext(_load_at(builder, rp, at(qs_at), V32I8), v32i16)
            else:   # element l < 16: low nibble of byte l; 16 + l: its high nibble
                v = _load_at(builder, rp, at(qs_at), V16I8)
                both = builder.shuffle_vector(builder.and_(v, ir.Constant(V16I8, [15] * 16)), builder.lshr(v, ir.Constant(V16I8, [4] * 16)),
                                              ir.Constant(v32i32, list(range(32))))
                q = builder.zext(both, v32i16)
                if qh_at is not None:   # bit e of the u32 qh is bit 4 of element e
                    qh = builder.shuffle_vector(builder.insert_element(ir.Constant(ir.VectorType(I32, 1), None), _load_at(builder, rp, at(qh_at), I32),
                                                                       ir.Constant(I32, 0)),
                                                ir.Constant(ir.VectorType(I32, 1), None), ir.Constant(v32i32, [0] * 32))
                    bits = builder.and_(builder.lshr(qh, ir.Constant(v32i32, list(range(32)))), ir.Constant(v32i32, [1] * 32))
                    q = builder.or_(q, builder.shl(builder.trunc(bits, v32i16), ir.Constant(v32i16, [4] * 32)))
                if kind in (0, 3):
                    q = builder.sub(q, ir.Constant(v32i16, [8 if kind == 0 else 16] * 32))
            rows.append(builder.bitcast(q, v16i32))
        s = 8
        while s:   # swap the off-diagonal s x s blocks of every 2s x 2s block
            new = list(rows)
            for i in range(16):
                if i & s:
                    continue
                lo = [j if not j & s else 16 + j - s for j in range(16)]
                hi = [j + s if not j & s else 16 + j for j in range(16)]
                new[i] = builder.shuffle_vector(rows[i], rows[i + s], ir.Constant(ir.VectorType(I32, 16), lo))
                new[i + s] = builder.shuffle_vector(rows[i], rows[i + s], ir.Constant(ir.VectorType(I32, 16), hi))
            rows, s = new, s // 2
        for j in range(16):
            _store_at(builder, wp, builder.add(y_, ir.Constant(I64, 32 * j)), rows[j])
    return _unpack_intrinsic(body)


q4_0_unpack16, q4_1_unpack16, q8_0_unpack16, q5_0_unpack16, q5_1_unpack16 = (_b32_unpack16(kind) for kind in range(5))
