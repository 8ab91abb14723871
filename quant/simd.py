"""AVX2 integer dot products for Numba, emitted as LLVM IR (`numba.extending.intrinsic`).

Each intrinsic computes an exact integer sum over one super-block of weights against 16-bit
activations held in two int8 planes (q16 = 256 * hi + lo, see activations.py), with x86 `pmaddubsw`
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


# --- whole-row decode kernels: the float combination stays in vectors, one horizontal sum per row ---
#
# Lane L (of 8) of a block holds the exact integer sum over the elements 4L..4L+3 of every 32 (the
# lanes of pmaddubsw followed by pmaddwd). Per block, lanes are converted to float32 and accumulated
# as acc[L] += float32(lane[L]) * (xd * d) (a multiply then an add, never fused), and the row's value
# is sum_L acc[L] - sum_L accm[L] in float64, L in order. intdot.py's portable loops do exactly this.

V8F = ir.VectorType(ir.FloatType(), 8)
F32ARR = (types.Array(types.float32, 1, "C", readonly=True), types.Array(types.float32, 1, "C"))
I32ARR = (types.Array(types.int32, 1, "C", readonly=True), types.Array(types.int32, 1, "C"))


def _row_loop(context, builder, sig, args, block_bytes, body):
    """Loop over the blocks of a row: body(op, data, b) -> (lane <8 x float>, scale, mlane <8 x float>, mscale)
    with acc += lane * scale, accm += mlane * mscale; returns sum(acc) - sum(accm) as a double."""
    op = _Ops(context, builder)
    data = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args)]
    n = builder.udiv(data[0].nitems, ir.Constant(I64, block_bytes))
    zero = ir.Constant(V8F, [0.0] * 8)
    pre = builder.block
    loop, done = builder.append_basic_block("row_loop"), builder.append_basic_block("row_done")
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    builder.position_at_end(loop)
    b, acc, accm = builder.phi(I64), builder.phi(V8F), builder.phi(V8F)
    lane, scale, mlane, mscale = body(op, [d.data for d in data], b)
    splat = lambda f: builder.shuffle_vector(  # noqa: E731
        builder.insert_element(ir.Constant(V8F, None), f, ir.Constant(I32, 0)), ir.Constant(V8F, None), ir.Constant(V8I32, [0] * 8))
    acc2 = builder.fadd(acc, builder.fmul(lane, splat(scale)))
    accm2 = builder.fadd(accm, builder.fmul(mlane, splat(mscale)))
    b2 = builder.add(b, ir.Constant(I64, 1))
    end = builder.block
    builder.cbranch(builder.icmp_signed("<", b2, n), loop, done)
    for phi, first, nxt in ((b, ir.Constant(I64, 0), b2), (acc, zero, acc2), (accm, zero, accm2)):
        phi.add_incoming(first, pre)
        phi.add_incoming(nxt, end)
    builder.position_at_end(done)
    finals = [builder.phi(V8F) for _ in range(2)]
    sums = []
    for final, v2 in zip(finals, (acc2, accm2)):
        final.add_incoming(zero, pre)
        final.add_incoming(v2, end)
        s = ir.Constant(ir.DoubleType(), 0.0)
        for lane_i in range(8):
            s = builder.fadd(s, builder.fpext(builder.extract_element(final, ir.Constant(I32, lane_i)), ir.DoubleType()))
        sums.append(s)
    return builder.fsub(*sums)


def _load_at(builder, ptr, offset, ty):
    return builder.load(builder.bitcast(builder.gep(ptr, [offset]), ty.as_pointer()), align=1)


def _half(builder, ptr, offset):
    return builder.fpext(builder.bitcast(_load_at(builder, ptr, offset, I16), ir.HalfType()), ir.FloatType())


def _even_odd_sum(builder, v16):  # <16 x i32> -> <8 x i32>: v[2i] + v[2i+1]
    undef = ir.Constant(v16.type, None)
    pick = lambda start: builder.shuffle_vector(v16, undef, ir.Constant(V8I32, list(range(start, 16, 2))))  # noqa: E731
    return builder.add(pick(0), pick(1))


def _row_args_ok(row, xd, xh, xl, bsums):
    return _ok(row, xh, xl) and xd in F32ARR and bsums in I32ARR


@intrinsic
def q4_k_row(typingctx, row, xd, xh, xl, bsums):
    """sum_e w[e] * x[e] over a Q4_K row, x given as activations.py's (xd, hi, lo, bsums)."""
    if not _row_args_ok(row, xd, xh, xl, bsums):
        return None

    def body(op, ptrs, b):
        builder = op.b
        row_, xd_, xh_, xl_, bs_ = ptrs
        o = builder.mul(b, ir.Constant(I64, 144))
        at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731
        d, dmin = _half(builder, row_, o), _half(builder, row_, at(2))
        w0, w1, w2 = (_load_at(builder, row_, at(4 + 4 * i), I32) for i in range(3))
        c = lambda v: ir.Constant(I32, v)  # noqa: E731
        six = lambda w: builder.and_(builder.lshr(w, c(6)), c(0x03030303))  # noqa: E731
        sc = (builder.and_(w0, c(0x3F3F3F3F)), builder.or_(builder.and_(w2, c(0x0F0F0F0F)), builder.shl(six(w0), c(4))))
        mn = (builder.and_(w1, c(0x3F3F3F3F)),
              builder.or_(builder.and_(builder.lshr(w2, c(4)), c(0x0F0F0F0F)), builder.shl(six(w1), c(4))))
        pair = lambda lo, hi: builder.bitcast(  # noqa: E731
            builder.insert_element(builder.insert_element(ir.Constant(ir.VectorType(I32, 2), None), lo, c(0)), hi, c(1)),
            ir.VectorType(I8, 8))
        scales = builder.zext(pair(*sc), ir.VectorType(I16, 8))
        y = builder.mul(b, ir.Constant(I64, 256))
        acc_h = acc_l = None
        for g in range(4):
            v = _load_at(builder, row_, at(16 + 32 * g), V32I8)
            for half, q in enumerate((builder.and_(v, op.splat8(15)), builder.lshr(v, op.splat8(4)))):
                s = 2 * g + half
                scale = builder.shuffle_vector(scales, ir.Constant(scales.type, None), ir.Constant(ir.VectorType(I32, 16), [s] * 16))
                off = builder.add(y, ir.Constant(I64, 32 * s))
                ph = op.madd(op.maddubs(q, _load_at(builder, xh_, off, V32I8)), scale)
                pl = op.madd(op.maddubs(q, _load_at(builder, xl_, off, V32I8)), scale)
                acc_h = ph if acc_h is None else builder.add(acc_h, ph)
                acc_l = pl if acc_l is None else builder.add(acc_l, pl)
        # a lane: 8 sub-blocks x scale 63 x 4 x 15 x 128 < 3.9e6 per plane; 257 x that < 2**31
        lane = builder.add(builder.shl(acc_h, ir.Constant(V8I32, [8] * 8)), acc_l)
        pairs = _even_odd_sum(builder, _load_at(builder, bs_, builder.mul(b, ir.Constant(I64, 16)), ir.VectorType(I32, 16)))
        m = builder.mul(builder.zext(pair(*mn), V8I32), pairs)  # min[s] * bsums of sub-block s: < 63 * 1.05e6
        xdb = _load_at(builder, xd_, b, ir.FloatType())
        return (builder.sitofp(lane, V8F), builder.fmul(xdb, d), builder.sitofp(m, V8F), builder.fmul(xdb, dmin))

    def codegen(context, builder, sig, args):
        return _row_loop(context, builder, sig, args, 144, body)

    return types.float64(row, xd, xh, xl, bsums), codegen


@intrinsic
def q6_k_row(typingctx, row, xd, xh, xl, bsums):
    """sum_e w[e] * x[e] over a Q6_K row. The unsigned quants u = q + 32 meet the hi and lo planes;
    a lane is float32(hi lane) * 256 + float32(lo lane) (it can exceed int32), and the offset
    32 * scale[j] * bsums[j] goes to accm as lanes j + j+8, times xd * d * 32."""
    if not _row_args_ok(row, xd, xh, xl, bsums):
        return None

    def body(op, ptrs, b):
        builder = op.b
        row_, xd_, xh_, xl_, bs_ = ptrs
        o = builder.mul(b, ir.Constant(I64, 210))
        at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731
        d = _half(builder, row_, at(208))
        scales8 = _load_at(builder, row_, at(192), V16I8)
        scales = builder.sext(scales8, V16I16)
        y = builder.mul(b, ir.Constant(I64, 256))
        acc_h = acc_l = None
        m15, m48 = op.splat8(15), op.splat8(48)
        for h in range(2):
            a, cc = _load_at(builder, row_, at(64 * h), V32I8), _load_at(builder, row_, at(64 * h + 32), V32I8)
            e = _load_at(builder, row_, at(128 + 32 * h), V32I8)
            quants = (builder.or_(builder.and_(a, m15), builder.and_(builder.shl(e, op.splat8(4)), m48)),
                      builder.or_(builder.and_(cc, m15), builder.and_(builder.shl(e, op.splat8(2)), m48)),
                      builder.or_(builder.lshr(a, op.splat8(4)), builder.and_(e, m48)),
                      builder.or_(builder.lshr(cc, op.splat8(4)), builder.and_(builder.lshr(e, op.splat8(2)), m48)))
            for col, q in enumerate(quants):
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
        undef = ir.Constant(v16, None)
        m = builder.add(builder.shuffle_vector(offs, undef, ir.Constant(V8I32, list(range(8)))),
                        builder.shuffle_vector(offs, undef, ir.Constant(V8I32, list(range(8, 16)))))
        dd = builder.fmul(_load_at(builder, xd_, b, ir.FloatType()), d)
        return lane, dd, builder.sitofp(m, V8F), builder.fmul(dd, ir.Constant(ir.FloatType(), 32.0))

    def codegen(context, builder, sig, args):
        return _row_loop(context, builder, sig, args, 210, body)

    return types.float64(row, xd, xh, xl, bsums), codegen


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
