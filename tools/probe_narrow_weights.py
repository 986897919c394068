"""A probe, not part of the package: W_hh in reduced precision, converted in registers inside
the recurrent product; everything else float32 (issue #21 item 1; the findings are in
docs/performance-log.md, "Narrow weights"). It builds on edgegru.kernels' private helpers, so a
change there may need a change here.

A stand-alone sequence kernel (reset_after, sigmoid gates, one layer, linear head of one
output, input 4: the shape bench_compare times) whose recurrent product is an LLVM intrinsic
modelled on edgegru.kernels' ``chain`` panel (blocked W_hh, blocks of 8 vectors of
PANEL_LANES columns, the blocks' order alternating per step, sums in registers over all rows),
with W_hh held as (``--kinds``):

- ``f32``:  float32 (the probe's own structure, for reference against edgegru's Model.run);
- ``bf16``: bfloat16 (round to nearest even), two columns' weights per 32-bit word, widened by
  one ``shl 16`` or ``and 0xffff0000`` per vector (exact conversion);
- ``i8``:   int8, one float32 scale per gate row (max|row| / 127), ``sitofp`` of a <L x i8>
  load (vpmovsxbd + vcvtdq2ps); the sums start at zero and acc = scale * sums at the end;
- ``i8m``:  the same int8 weights stored as u = q + 128, widened by placing u in a float's
  mantissa (1 + u/256: a shift and an and/or per vector, no vcvtdq2ps), the offset removed at
  the end (sums - 1.5 * sum(h)): fewer ops, but the cancellation costs precision;
- ``dpbf``: bfloat16 weights with h rounded to bfloat16 each step too, through AVX512-BF16's
  vdpbf16ps (two products per lane per instruction): OUT OF the issue's spec (the state enters
  the product in 16 bits), measured only to see whether halving the FMA count helps;
- ``f16``:  float16, widened by vcvtph2ps (LLVM fpext from <L x half>);
- ``i8y``, ``bf16y``, ``f32y``: as above with 8-lane vectors.

Timing: ns per time step of run() over T steps, each kernel and edgegru's float32 Model.run
interleaved in rounds (median [min-max]). Accuracy over T=10,000 steps of N(0,1) inputs on
GRUWeights.random models: max |y - y_f32| against edgegru's float32 model (what quantising
costs) and against edgegru run on the dequantised weights (whether the kernel computes the
dequantised model exactly; float32 rounding alone gives ~1e-7).

    python tools/probe_narrow_weights.py [--sizes 16,32,64,128,256] \
        [--kinds f32,bf16,i8,i8m,dpbf] [--repeats 9]
"""
import argparse
import os
import sys
import time

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import edgegru  # noqa: E402
from edgegru import kernels as K  # noqa: E402
from edgegru.kernels import (_FLAGS, _i64, _loop, _splat, _vector_at, sigmoid, tanh)

L = K.PANEL_LANES           # 16 with AVX-512
P = 8 * L                   # columns per panel / block


from llvmlite.ir import types as _irt


class BFloat(_irt._BaseFloatType):       # llvmlite has no bfloat type
    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"


BFloat._create_instance()


def lanes_of(kind):
    return 8 if kind.endswith("y") else L


def _codegen(nvec, kind):
    L = lanes_of(kind)
    kind = kind.rstrip("y")

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        acc_a, x_a, q_a, s_a = (context.make_array(t)(context, builder, value=v)
                                for t, v in zip(sig.args[:4], args[:4]))
        vec = ir.VectorType(ir.FloatType(), L)
        bvec = ir.VectorType(ir.IntType(8), L)
        wvec = ir.VectorType(ir.IntType(32), L)
        m = builder.extract_value(x_a.shape, 0)
        # elements of q per row: int8 one per column, bf16 pairs in one 32-bit word, f32 one
        width = _i64(L * nvec * {"i8": 1, "i8m": 1, "bf16": 2, "f32": 4, "dpbf": 4,
                                 "f16": 2}[kind])
        f32 = ir.FloatType()
        zero = ir.Constant(vec, [0.0] * L)

        if kind == "dpbf":
            # x: pairs of bf16 (rows 2p, 2p+1) in one word; q: per pair of rows, one word per
            # column; sums += vdpbf16ps (inline asm: llvmlite has no bfloat type)
            bvec32 = ir.VectorType(BFloat(), 2 * L)
            name = "llvm.x86.avx512bf16.dpbf16ps.%d" % (32 * L)
            mod = builder.module
            fn = mod.globals.get(name) or ir.Function(
                mod, ir.FunctionType(vec, [vec, bvec32, bvec32]), name)

            def dp_call(s, a, b):
                return builder.call(fn, [s, builder.bitcast(a, bvec32), builder.bitcast(b, bvec32)])

            def body(p, sums):
                xw = builder.load(builder.gep(x_a.data, [p], inbounds=True), align=4)
                xs = _splat(builder, xw, wvec)
                row = builder.mul(p, width)
                out = []
                for q, s in enumerate(sums):
                    off = builder.add(row, _i64(4 * L * q))
                    words = builder.load(_vector_at(builder, q_a.data, off, wvec), align=4)
                    out.append(dp_call(s, words, xs))
                return out
            sums = _loop(builder, "dp.rows", _i64(0), m, 1, body, [zero] * nvec)
            for q, s in enumerate(sums):
                sp = _vector_at(builder, s_a.data, _i64(L * q), vec)
                ap = _vector_at(builder, acc_a.data, _i64(L * q), vec)
                builder.store(builder.fmul(builder.load(sp, align=4), s, flags=_FLAGS), ap,
                              align=4)
            return context.get_dummy_value()

        def body(i, sums):
            xi = builder.load(builder.gep(x_a.data, [i], inbounds=True), align=4)
            xs = _splat(builder, xi, vec)
            row = builder.mul(i, width)
            out = []
            if kind == "i8m":       # the last sum: sum of x, a scalar
                sums, xsum = sums[:-1], sums[-1]
            for q, s in enumerate(sums):
                if kind == "i8m":
                    # u = q + 128 in byte k of word j (vectors 4g..4g+3, lane j): as the float
                    # 1 + u/256, its bits 0x3F800000 | u << 15
                    off = builder.add(row, _i64(4 * L * (q // 4)))
                    words = builder.load(_vector_at(builder, q_a.data, off, wvec), align=4)
                    k = q % 4
                    shift = [15, 7, -1, -9][k]
                    if shift > 0:
                        bits = builder.shl(words, ir.Constant(wvec, [shift] * L))
                    else:
                        bits = builder.lshr(words, ir.Constant(wvec, [-shift] * L))
                    bits = builder.and_(bits, ir.Constant(wvec, [0x7F8000] * L))
                    bits = builder.or_(bits, ir.Constant(wvec, [0x3F800000] * L))
                    wf = builder.bitcast(bits, vec)
                elif kind == "i8":
                    off = builder.add(row, _i64(L * q))
                    w8 = builder.load(_vector_at(builder, q_a.data, off, bvec), align=1)
                    wf = builder.sitofp(w8, vec)
                elif kind == "f16":    # vcvtph2ps (F16C)
                    off = builder.add(row, _i64(2 * L * q))
                    hvec = ir.VectorType(ir.HalfType(), L)
                    wh = builder.load(_vector_at(builder, q_a.data, off, hvec), align=2)
                    wf = builder.fpext(wh, vec)
                elif kind == "f32":
                    off = builder.add(row, _i64(4 * L * q))
                    ptr = _vector_at(builder, q_a.data, off, vec)
                    wf = builder.load(ptr, align=4)
                else:   # bf16: vector 2k in the low halves of the words, 2k+1 in the high
                    off = builder.add(row, _i64(4 * L * (q // 2)))
                    words = builder.load(_vector_at(builder, q_a.data, off, wvec), align=4)
                    if q % 2 == 0:
                        bits = builder.shl(words, ir.Constant(wvec, [16] * L))
                    else:
                        bits = builder.and_(words, ir.Constant(wvec, [-65536] * L))
                    wf = builder.bitcast(bits, vec)
                out.append(builder.fadd(s, builder.fmul(xs, wf, flags=_FLAGS), flags=_FLAGS))
            if kind == "i8m":
                out.append(builder.fadd(xsum, xi, flags=_FLAGS))
            return out
        init = [zero] * nvec + ([ir.Constant(f32, 0.0)] if kind == "i8m" else [])
        sums = _loop(builder, "i8.rows", _i64(0), m, 1, body, init)
        if kind == "i8m":       # S - 1.5 sum(x): s (already times 256) * that = s * (x @ Q)
            sums, xsum = sums[:-1], sums[-1]
            mean = _splat(builder, builder.fmul(xsum, ir.Constant(f32, 1.5)), vec)
            sums = [builder.fsub(s, mean) for s in sums]
        for q, s in enumerate(sums):
            sp = _vector_at(builder, s_a.data, _i64(L * q), vec)
            ap = _vector_at(builder, acc_a.data, _i64(L * q), vec)
            scale = builder.load(sp, align=4)
            builder.store(builder.fmul(scale, s, flags=_FLAGS), ap, align=4)
        return context.get_dummy_value()
    return codegen


def make_chain(kind):
    @intrinsic
    def chain(typingctx, acc, x, q, s, nvec):
        # acc[:L*nvec] = s * (x @ Q), Q (m, L*nvec) row-major flat in q (uint8 bytes);
        # sums in registers
        if not isinstance(nvec, types.IntegerLiteral):
            return None
        return types.void(acc, x, q, s, nvec), _codegen(nvec.literal_value, kind)
    return chain


def make_run(kind):
    chain_i8 = make_chain(kind)
    BPW = {"i8": 1, "i8m": 1, "bf16": 2, "f32": 4, "dpbf": 2, "f16": 2}[kind.rstrip("y")]
    DP = kind == "dpbf"
    L = lanes_of(kind)
    P = 8 * L

    @njit(fastmath=K.FASTMATH, error_model="numpy", inline="always")
    def _chain_of_width(acc, x, q, s, nvec):
        if nvec == 8:
            chain_i8(acc, x, q, s, 8)
        elif nvec == 7:
            chain_i8(acc, x, q, s, 7)
        elif nvec == 6:
            chain_i8(acc, x, q, s, 6)
        elif nvec == 5:
            chain_i8(acc, x, q, s, 5)
        elif nvec == 4:
            chain_i8(acc, x, q, s, 4)
        elif nvec == 3:
            chain_i8(acc, x, q, s, 3)
        elif nvec == 2:
            chain_i8(acc, x, q, s, 2)
        else:
            chain_i8(acc, x, q, s, 1)


    @njit(fastmath=K.FASTMATH, error_model="numpy")
    def matvec(a, h, qb, s, reverse, hb):
        # a (Gp,) = s * (h @ Q^T-blocked);  Gp = 3H padded to vectors; blocks of P columns
        H = h.shape[0]
        x = h
        if DP:      # h as pairs of bf16, rounded to nearest even
            hv = h.view(np.uint32)
            for p in range(H // 2):
                lo = hv[2 * p]
                hi = hv[2 * p + 1]
                lo = (lo + np.uint32(0x7FFF) + ((lo >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
                hi = (hi + np.uint32(0x7FFF) + ((hi >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
                hb[p] = lo | (hi << np.uint32(16))
        G = a.shape[0]
        nb = (G + P - 1) // P
        for k in range(nb):
            b = nb - 1 - k if reverse else k
            c = b * P
            w = min(P, G - c)
            _chain_of_width(a[c:c + w], hb if DP else h, qb[H * c * BPW:H * (c + w) * BPW], s[c:c + w], w // L)


    @njit(fastmath=K.FASTMATH, error_model="numpy", cache=False)
    def run_i8(Y, X, h, w_ih_t, b_x, qb, s, b_hn, w_head, b_head, xp, a, hb):
        T, I = X.shape
        H = h.shape[0]
        G = 3 * H
        for t in range(T):
            x = X[t]
            for j in range(G):
                xp[j] = b_x[j]
            for i in range(I):
                xi = x[i]
                row = w_ih_t[i]
                for j in range(G):
                    xp[j] += xi * row[j]
            matvec(a, h, qb, s, t % 2 == 1, hb)
            for j in range(H):
                r = sigmoid(xp[j] + a[j])
                z = sigmoid(xp[H + j] + a[H + j])
                n = tanh(xp[2 * H + j] + r * (a[2 * H + j] + b_hn[j]))
                h[j] = n + z * (h[j] - n)
            acc = b_head[0]
            for j in range(H):
                acc += w_head[j] * h[j]
            Y[t, 0] = acc



    return run_i8


RUNS = {k: make_run(k) for k in ("i8", "bf16", "f32", "i8y", "bf16y", "f32y", "i8m", "dpbf", "f16")}


def quantize(w_hh):
    # w_hh (3H, H): one scale per gate row; int8 in -127..127
    amax = np.abs(w_hh).max(axis=1)
    s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w_hh / s[:, None]), -127, 127).astype(np.int8)
    return q, s


def bf16_round(w):
    # float32 -> nearest bfloat16 (ties to even), as float32 bits' high halves (uint16)
    b = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


class ReducedGRU:
    """reset_after, sigmoid, 1 layer, head of 1 output; W_hh as `kind`, the rest float32."""

    def __init__(self, arr, kind):
        w_ih, w_hh = arr["l0.w_ih"], arr["l0.w_hh"]
        b_ih, b_hh = arr["l0.b_ih"], arr["l0.b_hh"]
        G, H = w_hh.shape
        self.H, self.kind, self.run_kernel = H, kind, RUNS[kind]
        L = lanes_of(kind)
        P = 8 * L
        kind = kind.rstrip("y")
        step = {"bf16": 2 * L, "i8m": 4 * L}.get(kind, L)
        Gp = -(-G // step) * step
        s = np.ones(G, np.float32)
        if kind == "i8":
            q, s = quantize(w_hh)
            self.w_eff = q.astype(np.float32) * s[:, None]
            qt = np.zeros((H, Gp), np.int8)
            qt[:, :G] = q.T
        elif kind == "i8m":
            q, s = quantize(w_hh)
            self.w_eff = q.astype(np.float32) * s[:, None]
            s = (s * 256).astype(np.float32)
            t = np.zeros((H, Gp), np.uint8)
            t[:, :G] = (q.T.astype(np.int16) + 128).astype(np.uint8)
            # each group of 4 vectors (4g..4g+3) of L columns as L words: byte k = vector 4g+k
            qt = np.ascontiguousarray(t.reshape(H, Gp // (4 * L), 4, L).transpose(0, 1, 3, 2))
            qt = qt.reshape(H, Gp)
        elif kind == "dpbf":
            hb = bf16_round(w_hh)
            self.w_eff = (hb.astype(np.uint32) << 16).view(np.float32)
            t = np.zeros((H, Gp), np.uint32)
            t[:, :G] = hb.T
            # rows in pairs: word (p, j) = W[2p+1, j] << 16 | W[2p, j]; as bytes (H, 2 Gp)
            qt = (t[0::2] | (t[1::2] << 16)).reshape(H // 2, Gp)
            qt = np.ascontiguousarray(qt).view(np.uint8).reshape(H // 2, Gp, 4)
            qt = qt.reshape(H, Gp * 2)      # only its blocks' byte ranges matter, see below
        elif kind == "f16":
            self.w_eff = w_hh.astype(np.float16).astype(np.float32)
            qt = np.zeros((H, Gp), np.float16)
            qt[:, :G] = w_hh.T.astype(np.float16)
        elif kind == "f32":
            self.w_eff = w_hh.copy()
            qt = np.zeros((H, Gp), np.float32)
            qt[:, :G] = w_hh.T
        else:
            hb = bf16_round(w_hh)
            self.w_eff = (hb.astype(np.uint32) << 16).view(np.float32)
            t = np.zeros((H, Gp), np.uint16)
            t[:, :G] = hb.T
            # each pair of vectors (2k, 2k+1) of L columns as L words: lo | hi << 16
            t = t.reshape(H, Gp // (2 * L), 2, L).astype(np.uint32)
            qt = (t[:, :, 0, :] | (t[:, :, 1, :] << 16)).reshape(H, Gp // 2)
        sp = np.zeros(Gp, np.float32)
        sp[:G] = s
        bpc = {"i8": 1, "i8m": 1, "bf16": 2, "f32": 4, "dpbf": 2, "f16": 2}[kind]   # bytes per column
        qbytes = np.ascontiguousarray(qt).view(np.uint8).reshape(H, Gp * bpc)
        if kind == "dpbf":      # blocks of P columns: (H/2 pairs, P words) each
            pairs = np.ascontiguousarray(qbytes).reshape(H // 2, Gp * 4)
            qbytes = None
            self.qb = np.concatenate([np.ascontiguousarray(pairs[:, c * 4:(c + P) * 4]).ravel()
                                      for c in range(0, Gp, P)])
        if qbytes is not None:
            self.qb = np.concatenate([np.ascontiguousarray(qbytes[:, c * bpc:(c + P) * bpc])
                                      .ravel() for c in range(0, Gp, P)])
        self.s_p = sp
        self.w_ih_t = np.ascontiguousarray(w_ih.T)
        b_x = (b_ih + b_hh).copy()
        b_x[2 * H:] = b_ih[2 * H:]
        self.b_x = b_x.astype(np.float32)
        self.b_hn = b_hh[2 * H:].copy()
        self.w_head = arr["head.weight"][0].copy()
        self.b_head = arr["head.bias"].copy()
        self.h = np.zeros(H, np.float32)
        self.xp = np.zeros(G, np.float32)
        self.a = np.zeros(Gp, np.float32)
        self.hb = np.zeros(max(1, H // 2), np.uint32)

    def dequantized(self, arr):
        out = dict(arr)
        out["l0.w_hh"] = self.w_eff.astype(np.float32)
        return out

    def run(self, X, Y):
        self.run_kernel(Y, X, self.h, self.w_ih_t, self.b_x, self.qb, self.s_p, self.b_hn,
                        self.w_head, self.b_head, self.xp, self.a, self.hb)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="16,32,64,128,256")
    p.add_argument("--kinds", default="f32,bf16,i8")
    p.add_argument("--T", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--acc-T", type=int, default=10000)
    a = p.parse_args()
    kinds = a.kinds.split(",")
    rng = np.random.default_rng(1)
    print(f"PANEL_LANES={L}; ns per step of run() over T={a.T}: median [min-max] of "
          f"{a.repeats} interleaved rounds (edgegru = Model.run float32; others: this probe's "
          f"kernel, W_hh held as each --kinds). Accuracy over T={a.acc_T}, N(0,1) inputs: "
          f"max |y - y_edgegru_f32| (quantisation) and max |y - y_edgegru(dequantised W_hh)| "
          f"(kernel exactness)")
    for H in [int(v) for v in a.sizes.split(",")]:
        cfg = edgegru.GRUConfig(input_size=4, hidden_size=H, output_size=1)
        arr = edgegru.GRUWeights.random(cfg, seed=H).arrays
        f32 = edgegru.Model(cfg, edgegru.GRUWeights(arr))
        red = {k: ReducedGRU(arr, k) for k in kinds}
        Xa = rng.standard_normal((a.acc_T, 4)).astype(np.float32)
        Yf = f32.run(Xa)
        acc = {}
        for k, m in red.items():
            deq = edgegru.Model(cfg, edgegru.GRUWeights(m.dequantized(arr)))
            Ya = np.zeros((a.acc_T, 1), np.float32)
            m.h[:] = 0
            m.run(Xa, Ya)
            acc[k] = (float(np.abs(Ya - Yf).max()), float(np.abs(Ya - deq.run(Xa)).max()))
        X = rng.standard_normal((a.T, 4)).astype(np.float32)
        Y = np.zeros((a.T, 1), np.float32)
        runs = {"edgegru": lambda: f32.run(X)}
        runs.update({k: (lambda m=m: m.run(X, Y)) for k, m in red.items()})
        times = {k: [] for k in runs}
        for _ in range(a.repeats):
            for k, fn in runs.items():
                fn()
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) / a.T * 1e9)
        line = f"H={H:<4d}"
        for k, ts in times.items():
            ts = np.array(ts)
            line += f" {k} {np.median(ts):6.0f} [{ts.min():.0f}-{ts.max():.0f}] |"
        print(line, flush=True)
        for k, (d1, d2) in acc.items():
            print(f"        {k}: max diff vs f32 {d1:.2e}, vs dequantised {d2:.2e}")


if __name__ == "__main__":
    main()
