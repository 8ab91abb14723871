"""Prefill intrinsics: unpack a row to int16 weights times their sub-block scales, then the dot products of
four such rows with two tokens' 16-bit activations at a time (AVX2 pmaddwd, AVX-512 VNNI vpdpwssd). The
lanes-then-float32 scheme of simd.py's decode kernels; intdot.py has the portable twins.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .simd import (F32ARR, I8, I16, I16ARR, I32, I64, V8F, V16I8, V16I16, V32I8, _fold16, _i64, _lane_sum, _load_at,
                   _loop, _ok, _Ops, _q6_k_quants, _splat)


# --- prefill: unpack a block to int16 weights times scales (generic vector IR, any CPU) ---

def _store_at(builder, ptr, offset, value):
    builder.store(value, builder.bitcast(builder.gep(ptr, [offset]), value.type.as_pointer()), align=1)


I16ARR_W = types.Array(types.int16, 1, "C")


@intrinsic
def q4_k_unpack16(typingctx, row, o, sc, w16, y):
    """w16[y + 32 s + l] = scale[s] * q (int16) for the 256 weights of the Q4_K block row[o:o+144]; sc packs
    the 8 scales (byte s = scale[s])."""
    if not (_ok(row) and w16 == I16ARR_W and all(isinstance(t, types.Integer) for t in (o, sc, y))):
        return None

    def codegen(context, builder, sig, args):
        row_, o_, sc_, w_, y_ = args
        rp = context.make_array(sig.args[0])(context, builder, row_).data
        wp = context.make_array(sig.args[3])(context, builder, w_).data
        o_, y_ = _i64(builder, o_), _i64(builder, y_)
        v32i16 = ir.VectorType(I16, 32)
        scales = builder.zext(builder.bitcast(builder.zext(sc_, I64) if sc_.type.width < 64 else sc_, ir.VectorType(I8, 8)),
                              ir.VectorType(I16, 8))
        for g in range(4):
            v = _load_at(builder, rp, builder.add(o_, ir.Constant(I64, 16 + 32 * g)), V32I8)
            for half, q in enumerate((builder.and_(v, ir.Constant(V32I8, [15] * 32)), builder.lshr(v, ir.Constant(V32I8, [4] * 32)))):
                s = 2 * g + half
                scale = builder.shuffle_vector(scales, ir.Constant(scales.type, None), ir.Constant(ir.VectorType(I32, 32), [s] * 32))
                _store_at(builder, wp, builder.add(y_, ir.Constant(I64, 32 * s)), builder.mul(builder.zext(q, v32i16), scale))
        return context.get_dummy_value()

    return types.none(row, o, sc, w16, y), codegen


@intrinsic
def q6_k_unpack16(typingctx, row, o, w16, y):
    """w16[y + e] = scale[e // 16] * (u - 32) (int16) for the 256 weights of the Q6_K block row[o:o+210]."""
    if not (_ok(row) and w16 == I16ARR_W and isinstance(o, types.Integer) and isinstance(y, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        row_, o_, w_, y_ = args
        rp = context.make_array(sig.args[0])(context, builder, row_).data
        wp = context.make_array(sig.args[2])(context, builder, w_).data
        o_, y_ = _i64(builder, o_), _i64(builder, y_)
        at = lambda k: builder.add(o_, ir.Constant(I64, k))  # noqa: E731
        v32i16 = ir.VectorType(I16, 32)
        scales = builder.sext(_load_at(builder, rp, at(192), V16I8), V16I16)
        for h in range(2):
            for col, q in enumerate(_q6_k_quants(builder, rp, at, h)):
                j = 8 * h + 2 * col
                scale = builder.shuffle_vector(scales, ir.Constant(V16I16, None),
                                               ir.Constant(ir.VectorType(I32, 32), [j] * 16 + [j + 1] * 16))
                signed = builder.sub(builder.zext(q, v32i16), ir.Constant(v32i16, [32] * 32))
                _store_at(builder, wp, builder.add(y_, ir.Constant(I64, 128 * h + 32 * col)), builder.mul(signed, scale))
        return context.get_dummy_value()

    return types.none(row, o, w16, y), codegen


def _w16_4x2(wide, mins):
    @intrinsic
    def w16_4x2(typingctx, w16, dsc, msc, x16, xd, px, xo, bo, out):
        """Prefill, register-blocked: sum_L acc[L] (the integer dot in 8 lanes, then float32) for four rows and
        two tokens. w16 (4K,) holds the rows unpacked (row r at r K), dsc (4 K/256,) their block scales; the
        tokens' activations are x16[xo:xo+K], xd[bo:bo+K/256] and the next token's right after. out (8,) f64:
        out[2 r + t] for row r, token t. Each x16 load serves several rows and each w16 load both tokens
        (L2 bandwidth, where the tokens are, bound a one-pair loop at about one pmaddwd per cycle): AVX2 takes
        the rows two at a time (16 vector registers), AVX-512 all four at once (32), 2 x16 loads per 8 vpdpwssd.
        Per block, lane i of each half (128 weights) sums pmaddwd lane i over 8 chunks of 16 (exact in int32:
        |w16| <= 4064, |q16| <= 32512); acc[i] += (f32(half 0) + f32(half 1)) * (xd * d), as intdot.w16_acc_loop.
        mins (Q4_K): accm += msc[8 b:8 b + 8] * px[8 b:8 b + 8] per block, row r's msc at 8 r K/256, token t's
        px at 8 (bo + t K/256); out = sum_L acc[L] - sum_L accm[L]."""
        if not (w16 in I16ARR and dsc in F32ARR and msc in F32ARR and x16 in I16ARR and xd in F32ARR and px in F32ARR
                and isinstance(xo, types.Integer) and isinstance(bo, types.Integer) and out == types.Array(types.float64, 1, "C")):
            return None

        def codegen(context, builder, sig, args):
            arrs = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args) if isinstance(t, types.Array)]
            w_, dsc_, msc_, x_, xd_, px_, out_ = (a.data for a in arrs)
            xo_, bo_ = _i64(builder, args[6]), _i64(builder, args[7])
            k = builder.udiv(arrs[0].nitems, ir.Constant(I64, 4))
            nb = builder.udiv(k, ir.Constant(I64, 256))
            toks = (xo_, builder.add(xo_, k))
            op = _Ops(context, builder)
            width = 32 if wide else 16   # weights per multiply-add
            vty, zero16 = ir.VectorType(I16, width), ir.Constant(ir.VectorType(I32, 16), [0] * 16)
            for group in ((0, 1, 2, 3),) if wide else ((0, 1), (2, 3)):
                pairs = [(wi, xi) for wi in group for xi in range(2)]

                def step(b, accs):
                    y = builder.mul(b, ir.Constant(I64, 256))
                    halves = [[] for _ in pairs]
                    for h in range(2):
                        ints = [None] * len(pairs)
                        for c in range(128 // width):
                            e = builder.add(y, ir.Constant(I64, 128 * h + width * c))
                            ws = {wi: _load_at(builder, w_, builder.add(builder.mul(k, ir.Constant(I64, wi)), e), vty) for wi in group}
                            xs = [_load_at(builder, x_, builder.add(t, e), vty) for t in toks]
                            for p, (wi, xi) in enumerate(pairs):
                                if wide:
                                    ints[p] = op.dpwssd(zero16 if ints[p] is None else ints[p], ws[wi], xs[xi])
                                else:
                                    m = op.madd(ws[wi], xs[xi])
                                    ints[p] = m if ints[p] is None else builder.add(ints[p], m)
                        for p in range(len(pairs)):   # AVX-512: lanes 8..15 hold chunks 2c + 1, folded onto 0..7
                            halves[p].append(builder.sitofp(_fold16(builder, ints[p]) if wide else ints[p], V8F))
                    xdb = [_load_at(builder, xd_, builder.add(bo_, builder.add(b, step_)), ir.FloatType()) for step_ in (ir.Constant(I64, 0), nb)]
                    dsb = {wi: _load_at(builder, dsc_, builder.add(b, builder.mul(nb, ir.Constant(I64, wi))), ir.FloatType()) for wi in group}
                    return [builder.fadd(accs[p], builder.fmul(builder.fadd(*halves[p]), _splat(builder, builder.fmul(xdb[xi], dsb[wi]))))
                            for p, (wi, xi) in enumerate(pairs)]

                def step_mins(b, accms):   # a loop of its own: in the one above, 8 more accumulators spilled
                    eight = lambda v: builder.mul(v, ir.Constant(I64, 8))  # noqa: E731
                    ms = {wi: _load_at(builder, msc_, eight(builder.add(b, builder.mul(nb, ir.Constant(I64, wi)))), V8F) for wi in group}
                    ps = [_load_at(builder, px_, eight(builder.add(builder.add(bo_, b), step_)), V8F) for step_ in (ir.Constant(I64, 0), nb)]
                    return [builder.fadd(accms[p], builder.fmul(ms[wi], ps[xi])) for p, (wi, xi) in enumerate(pairs)]

                zero = ir.Constant(V8F, [0.0] * 8)
                finals = _loop(builder, nb, [zero] * len(pairs), step)
                finals_m = _loop(builder, nb, [zero] * len(pairs), step_mins) if mins else None
                for p, (wi, xi) in enumerate(pairs):
                    total = _lane_sum(builder, finals[p])
                    if mins:
                        total = builder.fsub(total, _lane_sum(builder, finals_m[p]))
                    builder.store(total, builder.gep(out_, [ir.Constant(I64, 2 * wi + xi)]))
            return context.get_dummy_value()

        return types.none(w16, dsc, msc, x16, xd, px, xo, bo, out), codegen
    return w16_4x2


w16_4x2, w16_4x2_nomins = _w16_4x2(False, True), _w16_4x2(False, False)
# the same lanes, 32 weights per vpdpwssd (AVX-512 VNNI)
w16_4x2_512, w16_4x2_nomins_512 = _w16_4x2(True, True), _w16_4x2(True, False)
