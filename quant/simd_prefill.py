"""Prefill intrinsics of the K-quants: unpack rows to int16 weights times their sub-block scales, g blocks
interleaved (activations.interleave_k), then the dot products of four such rows with two or four tokens' 16-bit
activations at a time (AVX2 pmaddwd, AVX-512 VNNI vpdpwssd), and Q4_K's and Q5_K's mins apart (mins_rows).
The lanes-then-float32 scheme of simd.py's decode kernels; simd_prefill32.py has the 32-block types',
intdot_prefill.py the portable twins.
"""
from types import SimpleNamespace

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import (F32ARR, I8, I16, I16ARR, I32, I64, V8F, V16I8, V16I16, V32I8, _fn, _fold16, _half_pair, _i64, _k_scales_mins, _load_at,
                   _loop, _ok, _Ops, _q6_k_quants, _splat)


# --- prefill: unpack a block to int16 weights times scales (generic vector IR, any CPU) ---

def _store_at(builder, ptr, offset, value):
    builder.store(value, builder.bitcast(builder.gep(ptr, [offset]), value.type.as_pointer()), align=1)


I16ARR_W, F32ARR_W = types.Array(types.int16, 1, "C"), types.Array(types.float32, 1, "C")


def _unpack_ok(row, o, w16, y, dsc, msc, j):   # the argument types of the unpack intrinsics below
    return (_ok(row) and w16 == I16ARR_W and dsc == F32ARR_W and msc == F32ARR_W
            and all(isinstance(t, types.Integer) for t in (o, y, j)))


def _unpack_intrinsic(body):
    """An unpack intrinsic (row, o, w16, y, dsc, msc, j) whose IR is body(builder, row, w16, dsc, msc data
    pointers, o, y, j as i64)."""
    @intrinsic
    def unpack(typingctx, row, o, w16, y, dsc, msc, j):
        if not _unpack_ok(row, o, w16, y, dsc, msc, j):
            return None

        def codegen(context, builder, sig, args):
            ptrs = [context.make_array(sig.args[k])(context, builder, args[k]).data for k in (0, 2, 4, 5)]
            body(builder, *ptrs, *(_i64(builder, args[k]) for k in (1, 3, 6)))
            return context.get_dummy_value()

        return types.none(row, o, w16, y, dsc, msc, j), codegen
    return unpack


def _rows_of(builder, vs):
    """Sub-block s of the g blocks of a group (vs: g <32 x i16>) -> the group's g rows of 32 int16 for it
    (activations.interleave_k: row k holds pairs 16/g k .. of each block, in block order): a g x g transpose of
    pieces of 64/g bytes, in one (g = 2) or two (g = 4) rounds of two-input 128-bit lane shuffles."""
    v8 = ir.VectorType(ir.IntType(64), 8)
    q = [builder.bitcast(v, v8) for v in vs]
    pick = lambda a, b, idx: builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 8), idx))  # noqa: E731
    lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    if len(vs) == 2:
        rows = [pick(q[0], q[1], lo), pick(q[0], q[1], hi)]
    else:   # pieces 0, 1 then 2, 3 of blocks 0, 1 (and 2, 3), then rows of four
        a, b = pick(q[0], q[1], [0, 1, 8, 9, 2, 3, 10, 11]), pick(q[0], q[1], [4, 5, 12, 13, 6, 7, 14, 15])
        c, d = pick(q[2], q[3], [0, 1, 8, 9, 2, 3, 10, 11]), pick(q[2], q[3], [4, 5, 12, 13, 6, 7, 14, 15])
        rows = [pick(a, c, lo), pick(a, c, hi), pick(b, d, lo), pick(b, d, hi)]
    return [builder.bitcast(r, vs[0].type) for r in rows]


def _write_group(builder, wp, dp, y_, j_, ds, sub_block, split=False):
    """Prefill's layout for a group of g = len(ds) blocks (activations.interleave_k) from w16[y_]: sub_block(b, s) gives
    sub-block s (< 8) of block b as <32 x i16>; their d (ds) to dsc[j_:] (g > 1: on each of their 16/g lanes,
    from dsc[16/g j_]). split (g = 1, for AMX: simd_amx.k_tiles): the block's 256 high bytes (w >> 8), then its 256
    low bytes (w & 255), in the 512 bytes of w16[y_:y_ + 256]."""
    g, c = len(ds), (lambda v: ir.Constant(I64, v))
    for b, d in enumerate(ds):
        jb = builder.add(j_, c(b))
        if g == 1:
            builder.store(d, builder.gep(dp, [jb]))
        else:
            _store_at(builder, dp, builder.mul(jb, c(16 // g)), _splat(builder, d, 16 // g))
    if split:
        bp, v32i8 = builder.bitcast(wp, I8.as_pointer()), ir.VectorType(I8, 32)
        for s in range(8):
            w = sub_block(0, s)
            hi = builder.trunc(builder.ashr(w, ir.Constant(w.type, [8] * 32)), v32i8)
            _store_at(builder, bp, builder.add(builder.add(y_, y_), c(32 * s)), hi)
            _store_at(builder, bp, builder.add(builder.add(y_, y_), c(256 + 32 * s)), builder.trunc(w, v32i8))
        return
    for s in range(8):
        rows = [sub_block(0, s)] if g == 1 else _rows_of(builder, [sub_block(b, s) for b in range(g)])
        for k, r in enumerate(rows):
            _store_at(builder, wp, builder.add(y_, c(32 * (g * s + k))), r)


def _k_unpack16(qh_at, qs_at, nbytes, g, split=False):
    def body(builder, rp, wp, dp, mp, o_, y_, j_):
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        v32i16 = ir.VectorType(I16, 32)
        splat = lambda k: ir.Constant(V32I8, [k] * 32)  # noqa: E731
        blocks, ds = [], []
        for b in range(g):   # each block's d, mins, scales and fifth bits
            ob = builder.add(o_, c(nbytes * b))
            d, dmin = _half_pair(builder, rp, ob)
            sc8, mn8 = _k_scales_mins(builder, rp, ob)
            _store_at(builder, mp, builder.mul(builder.add(j_, c(b)), c(8)), builder.fmul(_splat(builder, dmin), builder.uitofp(mn8, V8F)))
            qh = None if qh_at is None else _load_at(builder, rp, builder.add(ob, c(qh_at)), V32I8)
            blocks.append((ob, builder.zext(sc8, ir.VectorType(I16, 8)), qh))
            ds.append(d)

        def sub_block(b, s):   # scale[s] * q for the 32 weights of sub-block s of block b
            ob, scales, qh = blocks[b]
            v = _load_at(builder, rp, builder.add(ob, c(qs_at + 32 * (s // 2))), V32I8)
            q = builder.and_(v, splat(15)) if s % 2 == 0 else builder.lshr(v, splat(4))
            if qh is not None:   # bit s of qh byte l is bit 4 of element l
                q = builder.or_(q, builder.shl(builder.and_(builder.lshr(qh, splat(s)), splat(1)), splat(4)))
            scale = builder.shuffle_vector(scales, ir.Constant(scales.type, None), ir.Constant(ir.VectorType(I32, 32), [s] * 32))
            return builder.mul(builder.zext(q, v32i16), scale)

        _write_group(builder, wp, dp, y_, j_, ds, sub_block, split)
    return _unpack_intrinsic(body)


# scale[s] * q (int16) for the 256 weights of each of g Q4_K blocks from row[o:] (144 bytes each; Q5_K: 176, q with
# its fifth bit) into a group of prefill's layout at w16[y] (activations.interleave_k: g = 1; 4: Q4_K; 2: Q5_K), their
# d to dsc (_write_group), msc[8 (j + b) + s] = dmin * min[s] (the scales and mins as simd._k_scales_mins)
q4_k_unpack16, q5_k_unpack16 = _k_unpack16(None, 16, 144, 1), _k_unpack16(16, 48, 176, 1)
q4_k_unpack16_g4, q5_k_unpack16_g2 = _k_unpack16(None, 16, 144, 4), _k_unpack16(16, 48, 176, 2)
q4_k_unpack_split, q5_k_unpack_split = _k_unpack16(None, 16, 144, 1, True), _k_unpack16(16, 48, 176, 1, True)   # AMX


def _q6_k_unpack16(g, split=False):
    """scale[e // 16] * (u - 32) (int16) for the 256 weights of each of g Q6_K blocks from row[o:] (210 bytes each)
    into a group of prefill's layout at w16[y], their d to dsc (_write_group); msc untouched (no mins)."""
    def body(builder, rp, wp, dp, mp, o_, y_, j_):
        v32i16 = ir.VectorType(I16, 32)
        ats = [lambda k, b=b: builder.add(o_, ir.Constant(I64, 210 * b + k)) for b in range(g)]
        ds = [_half_pair(builder, rp, at(206))[1] for at in ats]   # d: bytes 208-209
        scales = [builder.sext(_load_at(builder, rp, at(192), V16I8), V16I16) for at in ats]
        quants = [[_q6_k_quants(builder, rp, at, h) for h in range(2)] for at in ats]   # [block][half][column]

        def sub_block(b, s):   # elements 32 s .. 32 s + 31: half s // 4, column s % 4; scales 2 s, 2 s + 1
            scale = builder.shuffle_vector(scales[b], ir.Constant(V16I16, None),
                                           ir.Constant(ir.VectorType(I32, 32), [2 * s] * 16 + [2 * s + 1] * 16))
            return builder.mul(builder.sub(builder.zext(quants[b][s // 4][s % 4], v32i16), ir.Constant(v32i16, [32] * 32)), scale)

        _write_group(builder, wp, dp, y_, j_, ds, sub_block, split)
    return _unpack_intrinsic(body)


# g = 4: with 14-bit activations (activations.quantize_prefill's qmax), where 64 products of |w16| <= 4096 fit int32
q6_k_unpack16, q6_k_unpack16_g4, q6_k_unpack_split = _q6_k_unpack16(1), _q6_k_unpack16(4), _q6_k_unpack16(1, True)


def _w4x2_ok(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):   # the argument types of the four-by-two kernels
    return (w16 in I16ARR and dsc in F32ARR and msc in F32ARR and x16 in I16ARR and xd in F32ARR and px in F32ARR
            and all(isinstance(a, types.Integer) for a in (xo, bo, xs)) and out == types.Array(types.float64, 2, "C"))


def _w4x2_args(context, builder, sig, args):
    """The four-by-two kernels' arguments in IR: the arrays' data pointers, (xo, bo, xs) as i64, (fours of rows,
    pairs of tokens, out's row stride) from out's shape (T, 4 Q), w16's length."""
    arrs = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args, args) if isinstance(t, types.Array)]
    n_tok, stride = cgutils.unpack_tuple(builder, arrs[6].shape)
    two = ir.Constant(I64, 2)
    return ([a.data for a in arrs], [_i64(builder, a) for a in args[6:9]],
            (builder.udiv(stride, builder.add(two, two)), builder.udiv(n_tok, two), stride), arrs[0].nitems)


def _four_rows(context, builder, sig, args, wide, four, strides, group_loop):
    """The frame both prefill kernels (w16_4x2 here, simd_prefill32.w32_4x2) share: for each four of rows and
    the tokens two at a time (AVX-512 with four: four at a time, then a last pair), the int32 lanes of each
    (row, token) (AVX2: two halves of 8 lanes, two rows at a time) go through group_loop, then
    tree8(acc[i] + acc[i + 8]) of each is added to out[t, r] in float64 (_sum8x8, _add_sums).
    strides(k, xs) -> (scales a row, scales a token) in dsc/msc and xd/px. group_loop(f, keys, chunk) -> the
    float32 accumulator of each key (row, token, half) over the rows' K, chunk(e, ints) adding the products of
    the 32 weights from e (AVX2: the key's half of them) to the int32 lanes ints; f holds the frame's values
    (k, nsc, lanes, vf, the rows' w, d, m pointers, xd_, px_ and the tokens' scale offsets scs)."""
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    (w0, dsc0, msc0, x_, xd_, px_, out0), (xo0, bo0, xs_), (n_quads, n_pairs, stride), n_w = _w4x2_args(context, builder, sig, args)
    k = builder.udiv(n_w, builder.mul(n_quads, c(4)))
    nsc, xsb = strides(k, xs_)
    op, lanes = _Ops(context, builder), 16 if wide else 8
    vw = ir.VectorType(I16, 2 * lanes)
    # AVX-512: all four rows, 32 weights a chunk; AVX2: two rows at a time, each 32 as two halves of 16
    passes = [((0, 1, 2, 3), (0,))] if wide else [((0, 1), (0, 1)), ((2, 3), (0, 1))]
    f = SimpleNamespace(k=k, nsc=nsc, lanes=lanes, vf=ir.VectorType(ir.FloatType(), lanes), xd=xd_, px=px_)

    def quad(q, _):   # rows 4 q .. 4 q + 3: their w16, scales, mins and out columns
        f.w = builder.gep(w0, [builder.mul(q, builder.mul(k, c(4)))])
        f.d, f.m = (builder.gep(p, [builder.mul(q, builder.mul(nsc, c(4)))]) for p in (dsc0, msc0))
        f.out = builder.gep(out0, [builder.mul(q, c(4))])
        if wide and four:   # 16 vpdpwssd chains
            _loop(builder, builder.udiv(n_pairs, c(2)), [], lambda j, _: tokens(builder.mul(j, c(2)), 4))
            _loop(builder, builder.urem(n_pairs, c(2)), [], lambda j, _: tokens(builder.sub(n_pairs, c(1)), 2))
        else:
            _loop(builder, n_pairs, [], lambda j, _: tokens(j, 2))
        return []

    def tokens(j, n_tok):   # token pairs j .. j + n_tok/2 - 1
        xo_ = builder.add(xo0, builder.mul(j, builder.add(xs_, xs_)))
        bo_ = builder.add(bo0, builder.mul(j, builder.add(xsb, xsb)))
        toks = [builder.add(xo_, builder.mul(xs_, c(t))) for t in range(n_tok)]
        f.scs = [builder.add(bo_, builder.mul(xsb, c(t))) for t in range(n_tok)]
        finals = {}
        for group, halves in passes:
            keys = [(wi, xi, h) for wi in group for xi in range(n_tok) for h in halves]

            def chunk(e, ints):
                ws = {(wi, h): _load_at(builder, f.w, builder.add(builder.mul(k, c(wi)), builder.add(e, c(16 * h))), vw)
                      for wi in group for h in halves}
                xv = {(xi, h): _load_at(builder, x_, builder.add(t, builder.add(e, c(16 * h))), vw) for xi, t in enumerate(toks) for h in halves}
                return [op.dpwssd(ints[p], ws[wi, h], xv[xi, h]) if wide else builder.add(ints[p], op.madd(ws[wi, h], xv[xi, h]))
                        for p, (wi, xi, h) in enumerate(keys)]

            for (wi, xi, h), acc in zip(keys, group_loop(f, keys, chunk)):
                finals.setdefault((wi, xi), []).append(acc)
        # acc[i] + acc[i + 8]: AVX-512 folds its 16 lanes, AVX2 adds its two halves
        for tp in range(n_tok // 2):
            sums = [_fold16(builder, finals[wi, 2 * tp + t][0]) if wide else builder.fadd(*finals[wi, 2 * tp + t])
                    for wi in range(4) for t in range(2)]
            _add_sums(builder, f.out, stride, builder.add(j, c(tp)), _sum8x8(builder, sums))
        return []

    _loop(builder, n_quads, [], quad)


def _w16_4x2(wide, g):
    @intrinsic
    def w16_4x2(typingctx, w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
        """Prefill, register-blocked (_four_rows): four rows by two tokens at a time (AVX-512, g > 1: four), for
        out.shape[1] / 4 fours of rows and out.shape[0] / 2 pairs of tokens, K-quant rows in groups of g blocks
        interleaved (activations.interleave_k). w16 (4 Q K,) holds the rows unpacked (row r at r K), dsc (4 Q x 16
        K/(256 g)) their d by lane (msc and px unused: Q4_K's and Q5_K's mins are mins_rows'); token t's
        activations are x16[xo + t xs:][:K] in the same layout, its d by lane xd[bo + t xsb:] (xsb = 16 xs/(256 g);
        xs: the tokens' stride; g = 1: one d a block, xsb = xs/256, and dsc (4 Q K/256,)). out (T, 4 Q) f64:
        out[t, r] += the dot of row r and token t (the caller sums K by segments).
        Per group and pair, int32 lane i (i < 16) sums w16 q16 over elements 2i, 2i + 1 of each 32 (exact: 16 g
        products of one block, within int32 for Q4_K at g = 4, Q5_K at 2, Q6_K at 1 against 16-bit activations,
        at 4 against 14-bit), then acc[i] += f32(lane i) * (xd[i] * d[i]) in float32: one float32 step per 16 g
        products, where it was one per 16 (g = 4: Q4_K at T = 512 ~10% faster on cached data). AVX-512 VNNI holds
        the 16 lanes in one register (one vpdpwssd per 32 weights, four rows at once, 2 x16 loads per 8
        vpdpwssd); AVX2 holds them in two (lanes 0..7 from elements 0..15 of each 32, lanes 8..15 from 16..31)
        and takes the rows two at a time (8 int32 and 8 float32 accumulators in 16 vector registers). Four
        tokens a step only for g > 1: with g = 1 the float32 accumulators, which then spill, were touched every 8
        vpdpwssd a chain (191 -> 155-180 GMAC/s)."""
        if not _w4x2_ok(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
            return None
        per = 16 if g > 1 else 1   # scales a group: by lane, or the block's

        def codegen(context, builder, sig, args):
            c = lambda v: ir.Constant(I64, v)  # noqa: E731

            def strides(k, xs_):
                return builder.mul(builder.udiv(k, c(256 * g)), c(per)), builder.mul(builder.udiv(xs_, c(256 * g)), c(per))

            def group_loop(f, keys, chunk):
                zero_i, zero_f = ir.Constant(ir.VectorType(I32, f.lanes), [0] * f.lanes), ir.Constant(f.vf, [0.0] * f.lanes)
                rows = sorted({wi for wi, _, _ in keys})

                def step(u, accs):
                    y, at = builder.mul(u, c(256 * g)), builder.mul(u, c(per))
                    ints = [zero_i] * len(keys)
                    for ch in range(8 * g):
                        ints = chunk(builder.add(y, c(32 * ch)), ints)
                    if g == 1:   # one block: the same scale on every lane, one scalar product a pair
                        xds = [_load_at(builder, f.xd, builder.add(sc, at), ir.FloatType()) for sc in f.scs]
                        dss = {wi: _load_at(builder, f.d, builder.add(builder.mul(f.nsc, c(wi)), at), ir.FloatType()) for wi in rows}
                        scale = {(wi, xi, h): _splat(builder, builder.fmul(xds[xi], dss[wi]), f.lanes) for wi, xi, h in keys}
                    else:
                        xdv = {(xi, h): _load_at(builder, f.xd, builder.add(f.scs[xi], builder.add(at, c(8 * h))), f.vf) for _, xi, h in keys}
                        dsv = {(wi, h): _load_at(builder, f.d, builder.add(builder.mul(f.nsc, c(wi)), builder.add(at, c(8 * h))), f.vf)
                               for wi, _, h in keys}
                        scale = {(wi, xi, h): builder.fmul(xdv[xi, h], dsv[wi, h]) for wi, xi, h in keys}
                    return [builder.fadd(accs[p], builder.fmul(builder.sitofp(ints[p], f.vf), scale[key])) for p, key in enumerate(keys)]

                return _loop(builder, builder.udiv(f.k, c(256 * g)), [zero_f] * len(keys), step)

            _four_rows(context, builder, sig, args, wide, g > 1, strides, group_loop)
            return context.get_dummy_value()

        return types.none(w16, dsc, msc, x16, xd, px, xo, bo, xs, out), codegen
    return w16_4x2


def _sum8x8(builder, vs):
    """Eight <8 x float> -> <8 x float>: lane j the sum of vs[_SUM8X8_ORDER[j]], each by the tree
    h4[i] = v[i] + v[i + 4], h2[i] = h4[i] + h4[i + 2], h2[0] + h2[1] (three shuffle-and-add steps, each over
    all eight vectors at once, where eight horizontal sums took 8 x 24 scalar operations)."""
    def step(a, b, lo, hi):
        return builder.fadd(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 8), lo)),
                            builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 8), hi)))
    b = [step(vs[2 * p], vs[2 * p + 1], [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]) for p in range(4)]
    c = [step(b[2 * p], b[2 * p + 1], [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]) for p in range(2)]
    return step(c[0], c[1], [0, 2, 8, 10, 4, 6, 12, 14], [1, 3, 9, 11, 5, 7, 13, 15])


_SUM8X8_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _add_sums(builder, out_, stride, j, total):
    """out_[(2 j + t) stride + r] += float64(total[lane]) for rows r < 4 and tokens t < 2, 2 r + t =
    _SUM8X8_ORDER[lane]: per token one permute and one vector add of four (scalar ones took ~10% of a K
    segment's time), into out's (token, row) layout."""
    v4d = ir.VectorType(ir.DoubleType(), 4)
    for t in range(2):
        order = [_SUM8X8_ORDER.index(2 * r + t) for r in range(4)]
        v = builder.fpext(builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(I32, 4), order)), v4d)
        row = builder.add(builder.mul(j, ir.Constant(I64, 2)), ir.Constant(I64, t))
        ptr = builder.bitcast(builder.gep(out_, [builder.mul(row, stride)]), v4d.as_pointer())
        builder.store(builder.fadd(builder.load(ptr, align=8), v), ptr, align=8)


# by blocks a group (1: Q6_K, and Q4_K, Q5_K where K is no multiple of 1024 or 512; 2: Q5_K; 4: Q4_K); AVX2, and
# the same lanes with 32 weights per vpdpwssd (AVX-512 VNNI)
W16_4X2 = {g: _w16_4x2(False, g) for g in (1, 2, 4)}
W16_4X2_512 = {g: _w16_4x2(True, g) for g in (1, 2, 4)}


# --- prefill: the K-quants' mins, apart from the integer products ---

def _fma_fn(builder, n):   # llvm.fma on float32 (n lanes; 0: a scalar): one rounding, on any CPU (libm without FMA)
    ty = ir.FloatType() if n == 0 else ir.VectorType(ir.FloatType(), n)
    name = "llvm.fma.f32" if n == 0 else f"llvm.fma.v{n}f32"
    return _fn(builder, name, ty, [ty] * 3)


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c in float32 with one rounding (the portable twins' fused multiply-add)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_fma_fn(builder, 0), list(args))

    return types.float32(a, b, c), codegen


def _mins_rows(lanes):
    @intrinsic
    def mins_rows(typingctx, msc, pxt, s0, ldp, accm):
        """Q4_K / Q5_K mins of a segment: accm[r, t] += float64(sum over its S sub-blocks s, in order, of
        fma(msc[r S + s], pxt[(s0 + s) ldp + t], .)) in float32, for the R rows of accm (R % 4 == 0) and its
        NT tokens (NT % lanes == 0); S = msc.size / R. msc: dmin * min by sub-block (the unpack's), pxt: the
        tokens' xd * (sum of q16) by sub-block, tokens along (activations.quantize_prefill). Four rows by four
        vectors of tokens (16 fused multiply-adds per 4 loads and 4 broadcasts; 8 chains left the FMA units
        half idle), the rest a vector at a time."""
        if not (msc in F32ARR and pxt in F32ARR and isinstance(s0, types.Integer) and isinstance(ldp, types.Integer)
                and accm == types.Array(types.float64, 2, "C")):
            return None

        def codegen(context, builder, sig, args):
            c = lambda v: ir.Constant(I64, v)  # noqa: E731
            m_arr, p_arr, a_arr = (context.make_array(sig.args[k])(context, builder, args[k]) for k in (0, 1, 4))
            mp, pp, ap = m_arr.data, p_arr.data, a_arr.data
            s0_, ldp_ = _i64(builder, args[2]), _i64(builder, args[3])
            n_rows, n_tok = cgutils.unpack_tuple(builder, a_arr.shape)
            n_s = builder.udiv(m_arr.nitems, n_rows)
            vf, vd = ir.VectorType(ir.FloatType(), lanes), ir.VectorType(ir.DoubleType(), lanes)
            fma = _fma_fn(builder, lanes)
            zero = ir.Constant(vf, [0.0] * lanes)

            def quad(q, _):
                r0 = builder.mul(q, c(4))

                def tokens(t0, nv):   # tokens t0 .. t0 + nv lanes - 1 of the four rows (a _loop step: no values)
                    def step(s, accs):
                        at = builder.add(builder.mul(builder.add(s0_, s), ldp_), t0)
                        ps = [_load_at(builder, pp, builder.add(at, c(lanes * v)), vf) for v in range(nv)]
                        ms = [_splat(builder, _load_at(builder, mp, builder.add(builder.mul(builder.add(r0, c(r)), n_s), s), ir.FloatType()), lanes)
                              for r in range(4)]
                        return [builder.call(fma, [ms[r], ps[v], accs[nv * r + v]]) for r in range(4) for v in range(nv)]

                    for k, acc in enumerate(_loop(builder, n_s, [zero] * (4 * nv), step)):
                        r, v = divmod(k, nv)
                        ptr = builder.bitcast(builder.gep(ap, [builder.add(builder.mul(builder.add(r0, c(r)), n_tok), builder.add(t0, c(lanes * v)))]),
                                              vd.as_pointer())
                        builder.store(builder.fadd(builder.load(ptr, align=8), builder.fpext(acc, vd)), ptr, align=8)
                    return []

                n_four = builder.udiv(n_tok, c(4 * lanes))   # four vectors at a time (16 chains of fused multiply-adds), then one
                _loop(builder, n_four, [], lambda j, _: tokens(builder.mul(j, c(4 * lanes)), 4))
                _loop(builder, builder.udiv(builder.urem(n_tok, c(4 * lanes)), c(lanes)), [],
                      lambda j, _: tokens(builder.add(builder.mul(n_four, c(4 * lanes)), builder.mul(j, c(lanes))), 1))
                return []

            _loop(builder, builder.udiv(n_rows, c(4)), [], quad)
            return context.get_dummy_value()

        return types.none(msc, pxt, s0, ldp, accm), codegen
    return mins_rows


mins_rows8, mins_rows16 = _mins_rows(8), _mins_rows(16)   # AVX2, AVX-512
