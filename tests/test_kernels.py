"""The kernels against slow, obvious NumPy (tests/naive.py), both GRU variants, many sizes."""
import dataclasses
import sys

import numpy as np
import pytest

import edgegru
from edgegru import kernels
from conftest import make_model, max_abs
import naive

SIZES = [  # input_size, hidden_size, num_layers, bidirectional, output_size
    (1, 8, 1, False, 0),
    (4, 16, 2, False, 3),
    (32, 33, 1, False, 1),      # odd sizes: remainder paths of the blocked loops
    (5, 64, 3, False, 0),
    (3, 12, 2, True, 2),
    (7, 256, 1, False, 4),
    (3, 70, 2, False, 2),       # w_hh blocked (kernels.RECURRENT_BLOCKED_ABOVE), narrower blocks
]


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "i{}_h{}_l{}{}_o{}".format(
    s[0], s[1], s[2], "_bi" if s[3] else "", s[4]))
def test_sequence_matches_naive(sizes, reset_after, backend):
    I, H, L, bi, O = sizes
    model = make_model(backend, seed=H, input_size=I, hidden_size=H, num_layers=L,
                       bidirectional=bi, output_size=O, reset_after=reset_after)
    X = np.random.default_rng(H).standard_normal((200, I)).astype(np.float32)
    Y_ref, h_ref = naive.gru(model.config, model.weights.arrays, X)
    assert max_abs(model.run(X), Y_ref) <= 1e-5
    assert max_abs(model.state, h_ref) <= 1e-5


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_step_matches_naive_with_sigmoid_head(reset_after, backend):
    model = make_model(backend, input_size=3, hidden_size=20, num_layers=2, output_size=2,
                       reset_after=reset_after, head_activation="sigmoid")
    X = np.random.default_rng(1).standard_normal((100, 3)).astype(np.float32)
    Y_ref, _ = naive.gru(model.config, model.weights.arrays, X)
    Y = np.stack([model.step(x).copy() for x in X])
    assert max_abs(Y, Y_ref) <= 1e-5
    assert (Y > 0).all() and (Y < 1).all()


HARD = [(0.2, 0.5), (1 / 6, 0.5), (0.3, 0.4)]    # Keras 2, Keras 3, some ONNX HardSigmoid


def _hard_gate_model(backend, alpha, beta, reset_after, **sizes):
    config = edgegru.GRUConfig(**sizes, reset_after=reset_after, gate_activation="hard_sigmoid",
                               gate_alpha=alpha, gate_beta=beta)
    weights = edgegru.GRUWeights.random(config, seed=3)
    for a in weights.arrays.values():
        a *= 4.0                    # gate pre-activations beyond +-1/alpha: both clips are hit
    return edgegru.Model(config, weights, backend=backend)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("alpha,beta", HARD, ids=["keras2", "keras3", "onnx"])
def test_hard_sigmoid_gates_match_naive(alpha, beta, reset_after, backend):
    """Gates with hard_sigmoid (old Keras' recurrent_activation, ONNX HardSigmoid), both
    variants: sequence, step (bitwise equal to the sequence) and a batch, against float64."""
    model = _hard_gate_model(backend, alpha, beta, reset_after, input_size=3, hidden_size=20,
                             num_layers=2, output_size=2)
    X = np.random.default_rng(1).standard_normal((150, 3)).astype(np.float32)
    Y_ref, h_ref = naive.gru(model.config, model.weights.arrays, X)
    Y = model.run(X)
    assert max_abs(Y, Y_ref) <= 1e-5 and max_abs(model.state, h_ref) <= 1e-5
    model.reset()
    out = np.empty(2, np.float32)
    assert max_abs(np.stack([model.step(x, out=out).copy() for x in X]), Y) == 0.0
    Yb = model.run(np.stack([X, X[::-1]]))
    assert max_abs(Yb[0], Y) == 0.0
    # the weights are big enough to saturate some gates, so the test tells the slopes apart
    pre = X @ model.weights.arrays["l0.w_ih"][:40].T + model.weights.arrays["l0.b_ih"][:40]
    assert (alpha * pre + beta > 1).any() and (alpha * pre + beta < 0).any()
    other = dataclasses.replace(model.config, gate_alpha=alpha * 1.25)
    assert max_abs(naive.gru(other, model.weights.arrays, X)[0], Y) > 1e-3


def test_hard_sigmoid_bidirectional_matches_naive(backend):
    model = _hard_gate_model(backend, 0.2, 0.5, True, input_size=2, hidden_size=9,
                             bidirectional=True, output_size=1)
    X = np.random.default_rng(5).standard_normal((40, 2)).astype(np.float32)
    assert max_abs(model.run(X), naive.gru(model.config, model.weights.arrays, X)[0]) <= 1e-5


def test_hard_sigmoid_kernel():
    x = np.float32([-1e30, -3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0, 1e30])
    alpha, beta = np.float32(0.2), np.float32(0.5)
    got = np.array([kernels.hard_sigmoid(v, alpha, beta) for v in x])
    assert max_abs(got, np.clip(0.2 * x.astype(np.float64) + 0.5, 0, 1)) <= 1e-7
    assert np.isnan(kernels.hard_sigmoid(np.float32(np.nan), alpha, beta))


def test_gate_activation_is_checked():
    with pytest.raises(ValueError, match="gate_activation"):
        edgegru.GRUConfig(input_size=1, hidden_size=2, gate_activation="relu")
    with pytest.raises(ValueError, match="gate_alpha"):
        edgegru.GRUConfig(input_size=1, hidden_size=2, gate_activation="hard_sigmoid",
                          gate_alpha=float("nan"))


def test_tanh_and_sigmoid_error_bound():
    """The vectorisable activations stay within 3.5e-7 (tanh) and 2.5e-7 (sigmoid) of float64:
    2.6e-7 and 1.5e-7 with FMA, 3.3e-7 and 2.3e-7 without (NUMBA_CPU_NAME=generic on x86)."""
    x = np.concatenate([np.linspace(-12, 12, 400001), [-1e30, 1e30, 0.0, -0.0, 1e-30]])
    x = x.astype(np.float32)
    xd = x.astype(np.float64)
    t = np.array([kernels.tanh(v) for v in x[::7]])
    s = np.array([kernels.sigmoid(v) for v in x[::7]])
    assert max_abs(t, np.tanh(xd[::7])) <= 3.5e-7
    with np.errstate(over="ignore"):
        assert max_abs(s, 1 / (1 + np.exp(-xd[::7]))) <= 2.5e-7
    assert np.isnan(kernels.tanh(np.float32(np.nan)))
    assert np.isnan(kernels.sigmoid(np.float32(np.nan)))


def test_nan_input_propagates(backend):
    model = make_model(backend, input_size=2, hidden_size=8, output_size=1)
    y = model.step(np.array([np.nan, 0.0]))
    assert np.isnan(y).all() and np.isnan(model.state).all()
    model.reset()
    Y = model.run(np.array([[0.0, 0.0], [np.inf, 0.0], [0.0, 0.0]]))
    assert np.isfinite(Y[0]).all() and not np.isnan(Y[1]).all()


def test_huge_inputs_saturate_not_overflow(backend):
    model = make_model(backend, input_size=2, hidden_size=8)
    Y = model.run(np.full((5, 2), 1e30))
    assert np.isfinite(Y).all() and (np.abs(Y) <= 1).all()


BATCH_SIZES = [  # input_size, hidden_size, num_layers, bidirectional, batch, T
    (3, 16, 2, False, 5, 40),
    (7, 33, 2, True, 23, 70),     # odd sizes; B spans two row blocks, T three chunks (+ a rest)
    (1, 9, 1, False, 2, 1),
    (2, 70, 1, True, 3, 35),      # w_hh blocked
]


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("sizes", BATCH_SIZES, ids=lambda s: "i{}_h{}_l{}{}_b{}_t{}".format(
    s[0], s[1], s[2], "_bi" if s[3] else "", s[4], s[5]))
def test_batch_equals_sequences_one_by_one(sizes, reset_after, backend):
    """The batched kernel (all B sequences advanced together) gives exactly the per-sequence
    results, from a given h0, with its final states."""
    I, H, L, bi, B, T = sizes
    model = make_model(backend, seed=H, input_size=I, hidden_size=H, num_layers=L,
                       bidirectional=bi, output_size=2, reset_after=reset_after)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((L * (2 if bi else 1), B, H)).astype(np.float32)
    Y, h_n = model.run(X, h0=h0, return_state=True)
    for b in range(B):
        model.state = h0[:, b]
        assert max_abs(Y[b], model.run(X[b])) == 0.0
        assert max_abs(h_n[:, b], model.state) == 0.0


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("hidden_size", [33, 70], ids=["row_major", "blocked"])
def test_step_equals_run_bitwise(hidden_size, reset_after, backend):
    """step() and run() share the cell and sum in the same order: not a bit apart (w_hh in
    either layout: kernels.recurrent_blocked)."""
    model = make_model(backend, input_size=5, hidden_size=hidden_size, num_layers=2,
                       output_size=3, reset_after=reset_after)
    X = np.random.default_rng(4).standard_normal((70, 5)).astype(np.float32)
    Y = model.run(X)
    model.reset()
    out = np.empty(3, np.float32)
    assert max_abs(np.stack([model.step(x, out=out).copy() for x in X]), Y) == 0.0


def test_backends_agree():
    if not edgegru.JIT:
        pytest.skip("numba not available")
    X = np.random.default_rng(3).standard_normal((500, 4)).astype(np.float32)
    a = make_model("numba", input_size=4, hidden_size=40, num_layers=2, output_size=2)
    b = make_model("numpy", input_size=4, hidden_size=40, num_layers=2, output_size=2)
    assert max_abs(a.run(X), b.run(X)) <= 1e-5


def test_register_blocked_product_equals_axpy_bitwise():
    """_matvec (sums held in vector registers, kernels._panel) against _axpy (the accumulator
    in memory): the same sums in the same order, so not a bit apart, for every panel width
    (8 vectors, then the columns left as one panel of 1 to 7 whole vectors, or as the masked
    panel or panels of 4, 2 and 1 vectors and _axpy), column and row remainders, past
    PANEL_MAX_COLUMNS, and with NaN; with its panels in either order (the cell alternates them
    from step to step)."""
    if not edgegru.JIT:
        pytest.skip("numba not available")
    from numba import njit

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")     # not cached: the kernels may change
    def both(by_panels, by_rows, x, w, ld, c0, reverse):
        kernels._matvec(by_panels, x, w, ld, c0, reverse)
        kernels._axpy(by_rows, x, w, ld, c0)

    rng = np.random.default_rng(5)
    # every combination of panels for 8 lanes up to 120 columns, and for 16 up to 248; every
    # number of whole vectors left after the widest panels (8 lanes: 8-56, 16 lanes: 16-112,
    # and 144, 176, 240 after one panel)
    widths = (1, 7, 8, 13, 16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 99, 112, 120, 128, 136,
              144, 176, 200, 240, 248, 255,
              kernels.PANEL_MAX_COLUMNS, kernels.PANEL_MAX_COLUMNS + 1, 400)
    for m in (1, 3, 4, 7, 33):
        for n in widths:
            ld, c0 = n + 5, 3               # a block of columns inside wider rows
            w = rng.standard_normal(m * ld).astype(np.float32)
            x = rng.standard_normal(m).astype(np.float32)
            if n == 99:
                x[m // 2] = np.nan
            start = rng.standard_normal(n).astype(np.float32)
            expected = start.astype(np.float64) + x @ w.reshape(m, ld)[:, c0:c0 + n]
            for reverse in (False, True):
                by_panels, by_rows = start.copy(), start.copy()
                both(by_panels, by_rows, x, w, ld, c0, reverse)
                assert np.array_equal(by_panels, by_rows, equal_nan=True), (m, n, reverse)
                assert np.allclose(by_panels, expected, rtol=1e-5, atol=1e-4,
                                   equal_nan=True), (m, n, reverse)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("order", ["rows4", "chain"])
def test_panels_of_either_vector_width_equal_axpy_bitwise(order, lanes):
    """The panel intrinsics for 8 lanes (AVX, NEON) and for 16 (AVX-512), whichever this CPU
    uses in the kernels (the other one LLVM splits or merges into the registers it has): the
    sums of _axpy (panel) or _axpy_chain (chain), not a bit apart, for 1, 2, 3, 4 and 8 vectors,
    and with NaN."""
    if kernels.BACKEND != "numba":
        pytest.skip("numba not available")
    from numba import njit

    panel, _, chain = kernels._vector_intrinsics(lanes)[:3]

    intrinsic, reference = (panel, kernels._axpy) if order == "rows4" else \
        (chain, kernels._axpy_chain)

    def product(nvec):
        @njit(fastmath=kernels.FASTMATH, error_model="numpy")
        def both(by_panel, by_rows, x, w, ld, c0):
            intrinsic(by_panel, x, w, ld, c0, nvec)
            reference(by_rows, x, w, ld, c0)
        return both

    rng = np.random.default_rng(7)
    for nvec in (1, 2, 3, 4, 8):
        both = product(nvec)
        n = nvec * lanes
        for m in (1, 5, 32):
            ld, c0 = n + 9, 5
            w = rng.standard_normal(m * ld).astype(np.float32)
            x = rng.standard_normal(m).astype(np.float32)
            if m == 5:
                x[2] = np.nan
            start = rng.standard_normal(n).astype(np.float32)
            by_panel, by_rows = start.copy(), start.copy()
            both(by_panel, by_rows, x, w, ld, c0)
            assert np.array_equal(by_panel, by_rows, equal_nan=True), (nvec, m)
            assert np.isnan(by_panel).all() == (m == 5), (nvec, m)


def _guarded_floats(n):
    """n float32 that end where an unreadable page begins: a read past them crashes."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    pages = -(-4 * n // page)
    memory = mmap.mmap(-1, (pages + 1) * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    libc = ctypes.CDLL(None, use_errno=True)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    assert libc.mprotect(ctypes.c_void_p(base + pages * page), page, 0) == 0   # PROT_NONE
    floats = np.frombuffer(memory, np.float32, count=pages * page // 4)
    return floats[pages * page // 4 - n:], memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect via libc")
@pytest.mark.parametrize("lanes", [8, 16])
def test_masked_panel_equals_axpy_bitwise_and_stays_inside_its_arrays(lanes):
    """The masked panel (the last, partial columns of a product, kernels._matvec_tail) for 8
    and 16 lanes: bitwise _axpy's sums for every width of its last vector; the columns past
    acc untouched; and no read past the end of w, even where the last rows' vector would reach
    beyond it (w ends at an unreadable page: such a read crashes the test)."""
    if kernels.BACKEND != "numba":
        pytest.skip("numba not available")
    if not kernels.MASKED_TAIL:
        pytest.skip("the kernels do not use the masked panel on this CPU (kernels.masked_tail)")
    from numba import njit

    panel_masked = kernels._vector_intrinsics(lanes)[1]

    def product(nvec):
        @njit(fastmath=kernels.FASTMATH, error_model="numpy")
        def both(by_panel, by_rows, x, w, ld, c0):
            panel_masked(by_panel, x, w, ld, c0, nvec)
            kernels._axpy(by_rows, x, w, ld, c0)
        return both

    rng = np.random.default_rng(13)
    for nvec in (1, 2, 3, 8):
        both = product(nvec)
        for n in sorted({lanes * (nvec - 1) + 1, lanes * nvec - 3, lanes * nvec}):
            for m, ld, c0 in ((1, n, 0), (5, n, 0), (9, n + 2, 2), (33, n, 0), (6, n + 40, 40)):
                w, memory = _guarded_floats(m * ld)
                w[:] = rng.standard_normal(m * ld)
                x = rng.standard_normal(m).astype(np.float32)
                if m == 5:
                    x[2] = np.nan
                start = rng.standard_normal(n + 8).astype(np.float32)
                by_panel, by_rows = start.copy(), start.copy()
                both(by_panel[:n], by_rows[:n], x, w, ld, c0)
                assert np.array_equal(by_panel, by_rows, equal_nan=True), (nvec, n, m)
                assert np.array_equal(by_panel[n:], start[n:])


@pytest.mark.parametrize("bf16", [False, True])
def test_blocked_products_equal_one_row_at_a_time_bitwise(bf16):
    """_matvec_blocked (W blocked, sums in registers) and _matmul_blocked (a batch) against
    the row-major W summed one row at a time (_axpy_chain) in the full blocks and by _axpy in
    the last, narrower one: not a bit apart, for every panel width of the last block (and one
    too large for L1, which the batch takes by _matmul), either order of the blocks, and with
    NaN; and the two orders of summing really differ somewhere (else this test could not tell
    them apart). Up to 64 rows, every block by _axpy. bf16: W's values bfloat16, its blocks
    that are whole vectors wide held as bfloat16 words: the same bits."""
    if not edgegru.JIT:
        pytest.skip("numba not available")
    from numba import njit

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")
    def products(by_blocks, by_batch, by_rows, by_axpy, x, xs, w_blocked, w, full, reverse,
                 bf16):
        n = by_blocks.shape[0]
        kernels._matvec_blocked(by_blocks, x, w_blocked, reverse, bf16)
        kernels._matmul_blocked(by_batch, 1, xs, x.shape[0], w_blocked, n, reverse, bf16)
        kernels._axpy_chain(by_rows[:full], x, w, n, 0)
        kernels._axpy(by_rows[full:], x, w, n, full)
        kernels._axpy(by_axpy, x, w, n, 0)

    rng = np.random.default_rng(11)
    P = kernels.RECURRENT_BLOCK_COLUMNS
    orders_differ = False
    widths = (P, 2 * P, P + 5, 2 * P + 7 * kernels.PANEL_LANES + 3, 140, 70)
    for m, ns in ((1, widths), (6, widths), (70, widths), (150, (2 * P - 1,))):
        for n in ns:
            W = rng.standard_normal((m, n)).astype(np.float32)
            if bf16:
                W = kernels.from_bfloat16(kernels.to_bfloat16(W))
            x = rng.standard_normal(m).astype(np.float32)
            if n == 140:
                x[m // 2] = np.nan
            start = rng.standard_normal(n).astype(np.float32)
            xs = np.zeros((3, m + 2), np.float32)
            xs[1, :m] = x                       # the batch's row 1 is x, its others zeros
            batch = np.zeros((3, n + 4), np.float32)
            batch[1, 1:n + 1] = start
            for reverse in (False, True):
                by_blocks, by_rows, by_axpy, by_batch = start.copy(), start.copy(), \
                    start.copy(), batch.copy()
                full = n - n % P if m > kernels.RECURRENT_BLOCKED_ABOVE else 0
                products(by_blocks, by_batch, by_rows, by_axpy, x, xs,
                         kernels.blocked(W, P, bf16), W.ravel(), full, reverse, bf16)
                assert np.array_equal(by_blocks, by_rows, equal_nan=True), (m, n, reverse)
                assert np.array_equal(by_batch[1, 1:n + 1], by_rows, equal_nan=True)
                assert not by_batch[[0, 2]].any() and by_batch[1, 0] == by_batch[1, -3:].sum() == 0
                assert np.allclose(by_blocks, start + x.astype(np.float64) @ W, rtol=1e-5,
                                   atol=1e-4, equal_nan=True), (m, n)
                orders_differ |= not np.array_equal(by_rows, by_axpy, equal_nan=True)
    assert orders_differ


def test_recurrent_layout():
    """w_hh in params: row-major in rows padded to whole cache lines, or blocked, each block's
    rows padded so; the padding zero, and either layout fits recurrent_size."""
    W = np.arange(1, 70 * 210 + 1, dtype=np.float32).reshape(70, 210)
    assert kernels.row_stride(70) == 224 and kernels.recurrent_size(70) == 70 * (144 + 80)
    rows = kernels.pack_recurrent(W, 0).reshape(70, 224)
    assert np.array_equal(rows[:, :210], W) and not rows[:, 210:].any()
    assert not kernels.recurrent_blocked(64, 128) and kernels.recurrent_blocked(65, 128)
    packed = kernels.pack_recurrent(W, 64)
    assert packed.shape == (kernels.recurrent_size(70),)
    blocks = [(0, 64, 64), (64, 64, 64), (128, 12, 16),     # [r|z]: 64 + 64 + 12 (in 16)
              (140, 64, 64), (204, 6, 16)]                  # [n]: 64 + 6 (in 16)
    start = 0
    for c, width, ld in blocks:
        block = packed[start:start + 70 * ld].reshape(70, ld)
        assert np.array_equal(block[:, :width], W[:, c:c + width]), c
        assert not block[:, width:].any(), c
        start += 70 * ld
    assert start == packed.size


def test_masked_tail_only_where_the_cpu_has_avx():
    assert kernels.masked_tail("+avx2,+fma,+avx512f") and kernels.masked_tail("+avx,+sse4.2")
    assert not kernels.masked_tail("-avx,+sse4.2") and not kernels.masked_tail("+neon")
    assert not kernels.masked_tail("-aes,-rand,-sha2,-sve") and not kernels.masked_tail("")


def test_vector_width_follows_the_cpu_features():
    assert kernels.panel_lanes("+avx2,+fma,+avx512f,+avx512vl") == 16
    assert kernels.panel_lanes("+avx2,+fma,-avx512f") == 8
    assert kernels.panel_lanes("+avx2,+avx512f,-evex512") == 8
    assert kernels.panel_lanes("+neon,+fp-armv8") == 8
    assert kernels.panel_lanes("") == 8
    assert kernels.PANEL_COLUMNS == 8 * kernels.PANEL_LANES


def test_vectorised_dot_equals_eight_scalar_sums_bitwise():
    """_dot (the head: eight running sums in one vector register, kernels._dot8) against the
    same eight sums written as scalars: not a bit apart, for every length and with NaN."""
    if not edgegru.JIT:
        pytest.skip("numba not available")
    from numba import njit

    lanes = njit(fastmath=kernels.FASTMATH, error_model="numpy")(kernels._dot8_lanes)

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")     # not cached: the kernels may change
    def scalar_dot(a, b):
        n8 = a.shape[0] - a.shape[0] % 8
        s = lanes(a[:n8], b[:n8])               # the eight sums as scalars, then the tail
        for k in range(n8, a.shape[0]):
            s += a[k] * b[k]
        return s

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")
    def vector_dot(a, b):
        return kernels._dot(a, b)

    rng = np.random.default_rng(6)
    for n in list(range(0, 35)) + [64, 67, 128, 256, 259]:
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32) * np.float32(1e3)
        if n == 67:
            a[40] = np.nan
        got, want = vector_dot(a, b), scalar_dot(a, b)
        assert np.array_equal(np.float32(got), np.float32(want), equal_nan=True), n
        assert np.isclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-3, equal_nan=True), n


def _compiled_from_elsewhere(module):
    # the names of module's compiled functions (njit, intrinsics) defined in another module
    return sorted(name for name, obj in vars(module).items()
                  if getattr(getattr(obj, "py_func", getattr(obj, "_defn", None)),
                             "__module__", module.__name__) != module.__name__)


def test_kernels_call_no_compiled_code_from_another_file():
    """numba's cache checks only the file a kernel is defined in (its time stamp and size):
    were a product the kernels call defined in another module, a change to it would leave the
    cached kernels stale. So the product machinery stays in kernels.py (below its banner);
    moving it out needs a cache key that follows the other file first."""
    if kernels.BACKEND != "numba":
        pytest.skip("numba not in use")
    assert _compiled_from_elsewhere(kernels) == []
    from numba import njit                       # the check sees an imported kernel
    import types as pytypes
    elsewhere = pytypes.ModuleType("edgegru.elsewhere")
    elsewhere.helper = njit(lambda x: x)
    elsewhere.helper.py_func.__module__ = "edgegru.products"
    assert _compiled_from_elsewhere(elsewhere) == ["helper"]
