"""AVX2 integer dot products for Numba, emitted as LLVM IR (`numba.extending.intrinsic`).

Each intrinsic computes an exact integer sum over one super-block of weights against 16-bit
activations held in two int8 planes (q16 = 256 * hi + lo, see q8_k.py), with x86 `pmaddubsw`
(u8 x s8 -> pairwise i16) and `pmaddwd` (i16 x i16 -> pairwise i32, here against the sub-block
scales). Integer sums are exact, so these agree bit for bit with the portable loops in the format
modules (the path for CPUs without AVX2, chosen once in kernels.py).
Only compile (call) these on a CPU with AVX2: HAS_AVX2 says whether this one has it.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

HAS_AVX2 = bool(llvm.get_host_cpu_features().get("avx2", False))

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
V32I8, V16I8, V16I16, V8I32 = ir.VectorType(I8, 32), ir.VectorType(I8, 16), ir.VectorType(I16, 16), ir.VectorType(I32, 8)
BYTES = (types.Array(types.uint8, 1, "C", readonly=True), types.Array(types.uint8, 1, "C"),
         types.Array(types.int8, 1, "C", readonly=True), types.Array(types.int8, 1, "C"))


def _fn(builder, name, ret, args):
    mod = builder.module
    fn = mod.globals.get(name)
    return fn if fn is not None else ir.Function(mod, ir.FunctionType(ret, args), name)


class _Ops:
    """Small helpers over an IRBuilder: unaligned vector loads from arrays, the two x86 ops."""

    def __init__(self, context, builder):
        self.c, self.b = context, builder

    def load(self, arrty, arr, offset, vty):
        data = self.c.make_array(arrty)(self.c, self.b, arr).data
        ptr = self.b.bitcast(self.b.gep(data, [offset]), vty.as_pointer())
        return self.b.load(ptr, align=1, typ=vty)

    def maddubs(self, u8, s8):  # (32 x u8, 32 x s8) -> 16 x i16: u[2i]*s[2i] + u[2i+1]*s[2i+1]
        return self.b.call(_fn(self.b, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [V32I8, V32I8]), [u8, s8])

    def madd(self, a, b):  # (16 x i16, 16 x i16) -> 8 x i32: a[2i]*b[2i] + a[2i+1]*b[2i+1]
        return self.b.call(_fn(self.b, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16]), [a, b])

    def splat8(self, value):
        return ir.Constant(V32I8, [value] * 32)

    def splat16(self, scalar_i16):
        v = self.b.insert_element(ir.Constant(V16I16, None), scalar_i16, ir.Constant(I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(V16I16, None), ir.Constant(ir.VectorType(I32, 16), [0] * 16))

    def total(self, hi, lo, fits_i32=False):
        """256 * sum(hi lanes) + sum(lo lanes), as i64; fits_i32: 256 * hi + lo cannot overflow a lane,
        so one horizontal sum does."""
        red = lambda v: self.b.sext(self.b.call(_fn(self.b, "llvm.vector.reduce.add.v8i32", I32, [V8I32]), [v]), I64)  # noqa: E731
        if fits_i32:
            return red(self.b.add(self.b.shl(hi, ir.Constant(V8I32, [8] * 8)), lo))
        return self.b.add(self.b.mul(red(hi), ir.Constant(I64, 256)), red(lo))


def _ok(*tys):
    return all(t in BYTES for t in tys)


@intrinsic
def q4_k_isum(typingctx, row, o, sc, xh, xl, y):
    """sum over the 256 weights of Q4_K block row[o:o+144] of scale[s] * q[e] * q16[y + e] (int64).
    sc: the 8 sub-block scales packed in an integer, byte s = scale[s]; xh, xl: int8 activation planes."""
    if not (_ok(row, xh, xl) and all(isinstance(t, types.Integer) for t in (o, sc, y))):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, scty, xhty, xlty, _ = sig.args
        row_, o_, sc_, xh_, xl_, y_ = args
        op = _Ops(context, builder)
        o_, y_ = builder.sext(o_, I64) if o_.type.width < 64 else o_, builder.sext(y_, I64) if y_.type.width < 64 else y_
        acc_h = acc_l = ir.Constant(V8I32, None)
        scs = builder.bitcast(builder.zext(sc_, I64) if sc_.type.width < 64 else sc_, ir.VectorType(I8, 8))
        for g in range(4):
            v = op.load(rowty, row_, builder.add(o_, ir.Constant(I64, 16 + 32 * g)), V32I8)
            quants = (builder.and_(v, op.splat8(15)), builder.lshr(v, op.splat8(4)))
            for half, q in enumerate(quants):
                s = 2 * g + half
                scale = op.splat16(builder.zext(builder.extract_element(scs, ir.Constant(I32, s)), I16))
                off = builder.add(y_, ir.Constant(I64, 32 * s))
                ph = op.madd(op.maddubs(q, op.load(xhty, xh_, off, V32I8)), scale)
                pl = op.madd(op.maddubs(q, op.load(xlty, xl_, off, V32I8)), scale)
                first = g == 0 and half == 0
                acc_h = ph if first else builder.add(acc_h, ph)
                acc_l = pl if first else builder.add(acc_l, pl)
        # a lane of acc_h or acc_l: 8 sub-blocks x scale 63 x 2 x (15 * 128 * 2) < 3.9e6, 257 * that < 2**31
        return op.total(acc_h, acc_l, fits_i32=True)

    return types.int64(row, o, sc, xh, xl, y), codegen


@intrinsic
def q6_k_isum(typingctx, row, o, xh, xl, y):
    """sum over the 256 weights of Q6_K block row[o:o+210] of scale[j] * u[e] * q16[y + e] (int64),
    with u = q + 32 in 0..63 the unsigned quants (the caller subtracts 32 * scale * bsum)."""
    if not (_ok(row, xh, xl) and isinstance(o, types.Integer) and isinstance(y, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, xhty, xlty, _ = sig.args
        row_, o_, xh_, xl_, y_ = args
        op = _Ops(context, builder)
        o_, y_ = builder.sext(o_, I64) if o_.type.width < 64 else o_, builder.sext(y_, I64) if y_.type.width < 64 else y_
        at = lambda k: builder.add(o_, ir.Constant(I64, k))  # noqa: E731
        scales = builder.sext(op.load(rowty, row_, at(192), V16I8), V16I16)
        acc_h = acc_l = ir.Constant(V8I32, None)
        for h in range(2):
            a, c = op.load(rowty, row_, at(64 * h), V32I8), op.load(rowty, row_, at(64 * h + 32), V32I8)
            e = op.load(rowty, row_, at(128 + 32 * h), V32I8)
            m15, m48 = op.splat8(15), op.splat8(48)
            quants = (builder.or_(builder.and_(a, m15), builder.and_(builder.shl(e, op.splat8(4)), m48)),
                      builder.or_(builder.and_(c, m15), builder.and_(builder.shl(e, op.splat8(2)), m48)),
                      builder.or_(builder.lshr(a, op.splat8(4)), builder.and_(e, m48)),
                      builder.or_(builder.lshr(c, op.splat8(4)), builder.and_(builder.lshr(e, op.splat8(2)), m48)))
            for col, q in enumerate(quants):
                j = 8 * h + 2 * col  # scale of elements l < 16; j + 1 for l >= 16
                scale = builder.shuffle_vector(scales, ir.Constant(V16I16, None),
                                               ir.Constant(ir.VectorType(I32, 16), [j] * 8 + [j + 1] * 8))
                off = builder.add(y_, ir.Constant(I64, 128 * h + 32 * col))
                ph = op.madd(op.maddubs(q, op.load(xhty, xh_, off, V32I8)), scale)
                pl = op.madd(op.maddubs(q, op.load(xlty, xl_, off, V32I8)), scale)
                first = h == 0 and col == 0
                acc_h = ph if first else builder.add(acc_h, ph)
                acc_l = pl if first else builder.add(acc_l, pl)
        return op.total(acc_h, acc_l)

    return types.int64(row, o, xh, xl, y), codegen


@intrinsic
def q4_k_msum(typingctx, mn, bsums, i):
    """sum_s min[s] * (bsums[i + 2s] + bsums[i + 2s + 1]) for s < 8 (int64); mn packs the 8 mins
    (byte s = min[s]), bsums: int32 sums of 16 activations."""
    i32arr = (types.Array(types.int32, 1, "C", readonly=True), types.Array(types.int32, 1, "C"))
    if not (bsums in i32arr and isinstance(mn, types.Integer) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        mn_, bs_, i_ = args
        op = _Ops(context, builder)
        i_ = builder.sext(i_, I64) if i_.type.width < 64 else i_
        mins = builder.zext(builder.bitcast(builder.zext(mn_, I64) if mn_.type.width < 64 else mn_,
                                            ir.VectorType(I8, 8)), V8I32)
        v = op.load(sig.args[1], bs_, i_, ir.VectorType(I32, 16))
        undef = ir.Constant(ir.VectorType(I32, 16), None)
        even = builder.shuffle_vector(v, undef, ir.Constant(V8I32, list(range(0, 16, 2))))
        odd = builder.shuffle_vector(v, undef, ir.Constant(V8I32, list(range(1, 16, 2))))
        prod = builder.mul(mins, builder.add(even, odd))
        red = builder.call(_fn(builder, "llvm.vector.reduce.add.v8i32", I32, [V8I32]), [prod])
        return builder.sext(red, I64)

    return types.int64(mn, bsums, i), codegen


@intrinsic
def q6_k_offset(typingctx, row, o, bsums, i):
    """sum_j scale[j] * bsums[i + j] for the 16 int8 scales of the Q6_K block row[o:o+210] (int64)."""
    i32arr = (types.Array(types.int32, 1, "C", readonly=True), types.Array(types.int32, 1, "C"))
    if not (_ok(row) and bsums in i32arr and isinstance(o, types.Integer) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        row_, o_, bs_, i_ = args
        op = _Ops(context, builder)
        wide = lambda v: builder.sext(v, I64) if v.type.width < 64 else v  # noqa: E731
        v16 = ir.VectorType(I32, 16)
        scales = builder.sext(op.load(sig.args[0], row_, builder.add(wide(o_), ir.Constant(I64, 192)), V16I8), v16)
        prod = builder.mul(scales, op.load(sig.args[2], bs_, wide(i_), v16))
        red = builder.call(_fn(builder, "llvm.vector.reduce.add.v16i32", I32, [v16]), [prod])
        return builder.sext(red, I64)

    return types.int64(row, o, bsums, i), codegen


NT = 4  # tokens per call of the *_isum4 intrinsics (prefill)


def _store_totals(context, builder, op, outty, out, acc_h, acc_l):
    for t in range(NT):
        ptr = builder.gep(context.make_array(outty)(context, builder, out).data, [ir.Constant(I64, t)])
        builder.store(op.total(acc_h[t], acc_l[t]), ptr)


@intrinsic
def q4_k_isum4(typingctx, row, o, sc, xh, xl, y, stride, out):
    """q4_k_isum for NT tokens at once: out[t] = that sum against the activations at
    xh, xl[t * stride + y:]. Each weight vector and scale is unpacked once for all NT tokens."""
    if not (_ok(row, xh, xl) and all(isinstance(t, types.Integer) for t in (o, sc, y, stride))
            and out == types.Array(types.int64, 1, "C")):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, _, xhty, xlty, _, _, outty = sig.args
        row_, o_, sc_, xh_, xl_, y_, st_, out_ = args
        op = _Ops(context, builder)
        wide = lambda v: builder.sext(v, I64) if v.type.width < 64 else v  # noqa: E731
        o_, y_, st_ = wide(o_), wide(y_), wide(st_)
        scs = builder.bitcast(builder.zext(sc_, I64) if sc_.type.width < 64 else sc_, ir.VectorType(I8, 8))
        acc_h, acc_l = [None] * NT, [None] * NT
        for g in range(4):
            v = op.load(rowty, row_, builder.add(o_, ir.Constant(I64, 16 + 32 * g)), V32I8)
            quants = (builder.and_(v, op.splat8(15)), builder.lshr(v, op.splat8(4)))
            for half, q in enumerate(quants):
                s = 2 * g + half
                scale = op.splat16(builder.zext(builder.extract_element(scs, ir.Constant(I32, s)), I16))
                for t in range(NT):
                    off = builder.add(builder.add(y_, builder.mul(st_, ir.Constant(I64, t))), ir.Constant(I64, 32 * s))
                    ph = op.madd(op.maddubs(q, op.load(xhty, xh_, off, V32I8)), scale)
                    pl = op.madd(op.maddubs(q, op.load(xlty, xl_, off, V32I8)), scale)
                    acc_h[t] = ph if acc_h[t] is None else builder.add(acc_h[t], ph)
                    acc_l[t] = pl if acc_l[t] is None else builder.add(acc_l[t], pl)
        _store_totals(context, builder, op, outty, out_, acc_h, acc_l)
        return context.get_dummy_value()

    return types.none(row, o, sc, xh, xl, y, stride, out), codegen


@intrinsic
def q6_k_isum4(typingctx, row, o, xh, xl, y, stride, out):
    """q6_k_isum for NT tokens at once (see q4_k_isum4)."""
    if not (_ok(row, xh, xl) and all(isinstance(t, types.Integer) for t in (o, y, stride))
            and out == types.Array(types.int64, 1, "C")):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, xhty, xlty, _, _, outty = sig.args
        row_, o_, xh_, xl_, y_, st_, out_ = args
        op = _Ops(context, builder)
        wide = lambda v: builder.sext(v, I64) if v.type.width < 64 else v  # noqa: E731
        o_, y_, st_ = wide(o_), wide(y_), wide(st_)
        at = lambda k: builder.add(o_, ir.Constant(I64, k))  # noqa: E731
        scales = builder.sext(op.load(rowty, row_, at(192), V16I8), V16I16)
        acc_h, acc_l = [None] * NT, [None] * NT
        for h in range(2):
            a, c = op.load(rowty, row_, at(64 * h), V32I8), op.load(rowty, row_, at(64 * h + 32), V32I8)
            e = op.load(rowty, row_, at(128 + 32 * h), V32I8)
            m15, m48 = op.splat8(15), op.splat8(48)
            quants = (builder.or_(builder.and_(a, m15), builder.and_(builder.shl(e, op.splat8(4)), m48)),
                      builder.or_(builder.and_(c, m15), builder.and_(builder.shl(e, op.splat8(2)), m48)),
                      builder.or_(builder.lshr(a, op.splat8(4)), builder.and_(e, m48)),
                      builder.or_(builder.lshr(c, op.splat8(4)), builder.and_(builder.lshr(e, op.splat8(2)), m48)))
            for col, q in enumerate(quants):
                j = 8 * h + 2 * col
                scale = builder.shuffle_vector(scales, ir.Constant(V16I16, None),
                                               ir.Constant(ir.VectorType(I32, 16), [j] * 8 + [j + 1] * 8))
                for t in range(NT):
                    off = builder.add(builder.add(y_, builder.mul(st_, ir.Constant(I64, t))),
                                      ir.Constant(I64, 128 * h + 32 * col))
                    ph = op.madd(op.maddubs(q, op.load(xhty, xh_, off, V32I8)), scale)
                    pl = op.madd(op.maddubs(q, op.load(xlty, xl_, off, V32I8)), scale)
                    acc_h[t] = ph if acc_h[t] is None else builder.add(acc_h[t], ph)
                    acc_l[t] = pl if acc_l[t] is None else builder.add(acc_l[t], pl)
        _store_totals(context, builder, op, outty, out_, acc_h, acc_l)
        return context.get_dummy_value()

    return types.none(row, o, xh, xl, y, stride, out), codegen


NT16 = 8  # tokens per call of the *_isum_w16 intrinsics (prefill)


def _w16_dots(context, builder, op, x16ty, x16, y, stride, weights, out, outty, n_acc):
    """For each token t < NT16: sum_j pmaddwd(weights[j], x16[t * stride + y + 16 j:]) -> out[t] (int64).
    weights: 16 x <16 x i16> (a block's weights times their scales). Lanes are summed in n_acc
    separate i32 accumulators (so they cannot overflow), then in i64."""
    v16i16 = V16I16
    per = len(weights) // n_acc
    accs = [[None] * n_acc for _ in range(NT16)]
    for j, w in enumerate(weights):
        for t in range(NT16):
            off = builder.add(builder.add(y, builder.mul(stride, ir.Constant(I64, t))), ir.Constant(I64, 16 * j))
            p = op.madd(w, op.load(x16ty, x16, off, v16i16))
            a = accs[t][j // per]
            accs[t][j // per] = p if a is None else builder.add(a, p)
    red = lambda v: builder.sext(builder.call(_fn(builder, "llvm.vector.reduce.add.v8i32", I32, [V8I32]), [v]), I64)  # noqa: E731
    data = context.make_array(outty)(context, builder, out).data
    for t in range(NT16):
        total = red(accs[t][0])
        for a in accs[t][1:]:
            total = builder.add(total, red(a))
        builder.store(total, builder.gep(data, [ir.Constant(I64, t)]))


def _halves(builder, v32):  # <32 x i16> -> two <16 x i16>
    undef = ir.Constant(v32.type, None)
    return [builder.shuffle_vector(v32, undef, ir.Constant(ir.VectorType(I32, 16), list(range(16 * h, 16 * h + 16))))
            for h in range(2)]


I16ARR = (types.Array(types.int16, 1, "C", readonly=True), types.Array(types.int16, 1, "C"))


@intrinsic
def q4_k_isum_w16(typingctx, row, o, sc, x16, y, stride, out):
    """q4_k_isum for NT16 tokens at once against 16-bit activations: out[t] = sum over the block of
    scale[s] * q[e] * x16[t * stride + y + e]. The weights times their scales (<= 945) are built
    once as int16 and meet each token with one pmaddwd per 16 weights."""
    if not (_ok(row) and x16 in I16ARR and all(isinstance(t, types.Integer) for t in (o, sc, y, stride))
            and out == types.Array(types.int64, 1, "C")):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, _, x16ty, _, _, outty = sig.args
        row_, o_, sc_, x16_, y_, st_, out_ = args
        op = _Ops(context, builder)
        wide = lambda v: builder.sext(v, I64) if v.type.width < 64 else v  # noqa: E731
        o_, y_, st_ = wide(o_), wide(y_), wide(st_)
        scs = builder.bitcast(builder.zext(sc_, I64) if sc_.type.width < 64 else sc_, ir.VectorType(I8, 8))
        v32i16 = ir.VectorType(I16, 32)
        weights = []
        for g in range(4):
            v = op.load(rowty, row_, builder.add(o_, ir.Constant(I64, 16 + 32 * g)), V32I8)
            for half, q in enumerate((builder.and_(v, op.splat8(15)), builder.lshr(v, op.splat8(4)))):
                s = 2 * g + half
                scale = builder.zext(builder.extract_element(scs, ir.Constant(I32, s)), I16)
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(v32i16, None), scale, ir.Constant(I32, 0)),
                                               ir.Constant(v32i16, None), ir.Constant(ir.VectorType(I32, 32), [0] * 32))
                weights += _halves(builder, builder.mul(builder.zext(q, v32i16), splat))
        _w16_dots(context, builder, op, x16ty, x16_, y_, st_, weights, out_, outty, 1)
        return context.get_dummy_value()

    return types.none(row, o, sc, x16, y, stride, out), codegen


@intrinsic
def q6_k_isum_w16(typingctx, row, o, x16, y, stride, out):
    """For NT16 tokens: out[t] = sum over the Q6_K block of scale[j] * (u[e] - 32) * x16[t * stride + y + e]
    (the signed quants: no offset term). Weights times scales (|.| <= 4096) built once as int16."""
    if not (_ok(row) and x16 in I16ARR and all(isinstance(t, types.Integer) for t in (o, y, stride))
            and out == types.Array(types.int64, 1, "C")):
        return None

    def codegen(context, builder, sig, args):
        rowty, _, x16ty, _, _, outty = sig.args
        row_, o_, x16_, y_, st_, out_ = args
        op = _Ops(context, builder)
        wide = lambda v: builder.sext(v, I64) if v.type.width < 64 else v  # noqa: E731
        o_, y_, st_ = wide(o_), wide(y_), wide(st_)
        at = lambda k: builder.add(o_, ir.Constant(I64, k))  # noqa: E731
        scales = builder.sext(op.load(rowty, row_, at(192), V16I8), V16I16)
        v32i16 = ir.VectorType(I16, 32)
        weights = []
        for h in range(2):
            a, c = op.load(rowty, row_, at(64 * h), V32I8), op.load(rowty, row_, at(64 * h + 32), V32I8)
            e = op.load(rowty, row_, at(128 + 32 * h), V32I8)
            m15, m48 = op.splat8(15), op.splat8(48)
            quants = (builder.or_(builder.and_(a, m15), builder.and_(builder.shl(e, op.splat8(4)), m48)),
                      builder.or_(builder.and_(c, m15), builder.and_(builder.shl(e, op.splat8(2)), m48)),
                      builder.or_(builder.lshr(a, op.splat8(4)), builder.and_(e, m48)),
                      builder.or_(builder.lshr(c, op.splat8(4)), builder.and_(builder.lshr(e, op.splat8(2)), m48)))
            for col, q in enumerate(quants):
                j = 8 * h + 2 * col
                scale = builder.shuffle_vector(scales, ir.Constant(V16I16, None),
                                               ir.Constant(ir.VectorType(I32, 32), [j] * 16 + [j + 1] * 16))
                signed = builder.sub(builder.zext(q, v32i16), ir.Constant(v32i16, [32] * 32))
                weights += _halves(builder, builder.mul(signed, scale))
        _w16_dots(context, builder, op, x16ty, x16_, y_, st_, weights, out_, outty, 2)
        return context.get_dummy_value()

    return types.none(row, o, x16, y, stride, out), codegen
