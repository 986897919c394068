"""The register-blocked panel product of :func:`edgegru.kernels._matvec`, written in LLVM IR.

``panel(acc, x, w, ld, c0, nvec)``: acc[:8*nvec] += x @ W[:, c0:c0+8*nvec], with x (m,), W (m, ld)
row-major and flat in w, nvec a literal from 1 to 8. It is exactly ``kernels._axpy`` on those
columns (the same sums in the same order, so the results are bitwise the same) with one
difference: the 8*nvec sums stay in vector registers from the first row to the last, where
``_axpy`` loads and stores its accumulator for every four rows and checks at run time that it
does not overlap the weights. Numba has no way to say "keep this in registers" (its arrays live
in memory, and LLVM cannot prove that the accumulator and the weights, views of one model
array, do not overlap), hence a numba ``@intrinsic``.

Portable: plain ``<8 x float>`` vectors, which LLVM maps onto AVX registers on x86 and onto
pairs of NEON registers on ARM; no target intrinsics. Per row group the expression is that of
``kernels._rows4`` with numba's fast-math flags, so LLVM contracts the same products into FMAs.

Only for the numba backend: importing this module imports numba.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LANES = 8                       # floats per vector: one AVX register, two NEON registers
MAX_VECTORS = 8                 # accumulators per panel: 8 (+4 broadcasts, 2 temporaries) of 16


def _fastmath_flags():
    from edgegru.kernels import FASTMATH     # the kernels' flags, so both contract alike
    return tuple(sorted(FASTMATH))


@intrinsic
def panel(typingctx, acc, x, w, ld, c0, nvec):
    if not isinstance(nvec, types.IntegerLiteral) or not 1 <= nvec.literal_value <= MAX_VECTORS:
        return None
    for a in (acc, x, w):       # the code below assumes unit strides
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                and a.dtype == types.float32):
            return None
    Q = nvec.literal_value
    flags = _fastmath_flags()

    def codegen(context, builder, signature, args):
        acc_a, x_a, w_a = (context.make_array(t)(context, builder, value=v)
                           for t, v in zip(signature.args[:3], args[:3]))
        ld_v, c0_v = args[3], args[4]
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vty = ir.VectorType(ir.FloatType(), LANES)
        m = builder.extract_value(x_a.shape, 0)

        def const(v):
            return ir.Constant(i64, v)

        def vector_at(base, offset):
            ptr = builder.gep(base, [offset], inbounds=True)
            return builder.bitcast(ptr, vty.as_pointer())

        def broadcast(i):               # x[i] in every lane
            xi = builder.load(builder.gep(x_a.data, [i], inbounds=True), align=4)
            v = builder.insert_element(ir.Constant(vty, ir.Undefined), xi, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

        def weights(i, q):              # W[i, c0 + 8q : c0 + 8q + 8]
            offset = builder.add(builder.add(builder.mul(i, ld_v), c0_v), const(LANES * q))
            return builder.load(vector_at(w_a.data, offset), align=4)

        def mul(a, b):
            return builder.fmul(a, b, flags=flags)

        def add(a, b):
            return builder.fadd(a, b, flags=flags)

        def rows4(i, sums):             # as _rows4: acc += (x0 w0 + x1 w1) + (x2 w2 + x3 w3)
            i1, i2, i3 = (builder.add(i, const(k)) for k in (1, 2, 3))
            x0, x1, x2, x3 = broadcast(i), broadcast(i1), broadcast(i2), broadcast(i3)
            return [add(s, add(add(mul(x0, weights(i, q)), mul(x1, weights(i1, q))),
                               add(mul(x2, weights(i2, q)), mul(x3, weights(i3, q)))))
                    for q, s in enumerate(sums)]

        def rows1(i, sums):             # as _rows1: acc += x0 w0
            x0 = broadcast(i)
            return [add(s, mul(x0, weights(i, q))) for q, s in enumerate(sums)]

        def loop(name, start, stop, stride, body, sums):
            # for i in range(start, stop, stride): sums = body(i, sums), the sums in phi nodes
            before = builder.block
            loop_block = builder.append_basic_block(name)
            after = builder.append_basic_block(name + ".end")
            builder.cbranch(builder.icmp_signed("<", start, stop), loop_block, after)
            builder.position_at_end(loop_block)
            i = builder.phi(i64)
            i.add_incoming(start, before)
            carried = []
            for s in sums:
                phi = builder.phi(vty)
                phi.add_incoming(s, before)
                carried.append(phi)
            new = body(i, carried)
            i_next = builder.add(i, const(stride))
            last = builder.block
            i.add_incoming(i_next, last)
            for phi, s in zip(carried, new):
                phi.add_incoming(s, last)
            builder.cbranch(builder.icmp_signed("<", i_next, stop), loop_block, after)
            builder.position_at_end(after)
            out = []
            for s, s_new in zip(sums, new):
                phi = builder.phi(vty)
                phi.add_incoming(s, before)
                phi.add_incoming(s_new, last)
                out.append(phi)
            return out

        sums = [builder.load(vector_at(acc_a.data, const(LANES * q)), align=4) for q in range(Q)]
        m4 = builder.mul(builder.sdiv(m, const(4)), const(4))
        sums = loop("panel.rows4", const(0), m4, 4, rows4, sums)
        sums = loop("panel.rows1", m4, m, 1, rows1, sums)
        for q, s in enumerate(sums):
            builder.store(s, vector_at(acc_a.data, const(LANES * q)), align=4)
        return context.get_dummy_value()

    return types.void(acc, x, w, ld, c0, nvec), codegen
