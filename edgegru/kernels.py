"""The GRU in Numba: pure functions over float32 arrays, nothing else.

Read from the top: the activations, the cell, the step, the sequence and the batch, all in
terms of two products, :func:`matvec` and :func:`matmul`; then where the weights live in
``params`` (the layout, built once); then, below the banner, how the products are made fast.

Every kernel takes its outputs first, then inputs, then sizes, and never allocates: the buffers
are owned by :class:`edgegru.model.Model` and made once when the model is built.

The GRU, with r, z, n the reset gate, update gate and candidate::

    r = g(W_ir x + b_ir + W_hr h + b_hr)
    z = g(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      reset_after (PyTorch, cuDNN, ONNX lbr=1)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      reset_before (Cho 2014, ONNX default)
    h' = (1 - z) * n + z * h

The gate activation ``g`` is the logistic sigmoid (everyone's default), or, with
``hard_gates``, the piecewise-linear ``hard_sigmoid(x) = clip(alpha * x + beta, 0, 1)`` that
old Keras GRUs use (``recurrent_activation="hard_sigmoid"``: alpha 0.2 in Keras 2, 1/6 in
Keras 3; beta 0.5) and ONNX's ``HardSigmoid(alpha, beta)``.

One cell serves the step, the sequence and the batch, so they cannot disagree: every sum is
taken in the order written, and the tests hold the three paths to bitwise equality.
"""
import numpy as np

from edgegru import aot
from edgegru._jit import AOT, BACKEND, JIT, NO_NRT, njit

# Lets LLVM contract a*b+c into FMA, but not assume the absence of NaN/inf ("nnan", "ninf"):
# sensor data has NaN, and a NaN must propagate, not be optimised away. Nor may it reassociate
# ("reassoc"): every sum is computed in the order written, so the result of a kernel does not
# depend on how LLVM chose to vectorise it in one context or another (step, sequence, batch).
FASTMATH = {"nsz", "arcp", "contract"}
# error_model="numpy": float division by zero gives inf/NaN instead of raising. Numba's default
# (Python's ZeroDivisionError) puts a branch in every division, and that alone stops LLVM from
# vectorising the activations.
# NO_NRT: no reference counting of arrays (see edgegru._jit); nothing here allocates.
# nogil: a kernel touches no Python object, so it lets other threads run meanwhile (run()'s
# threads= splits a batch over them).
KERNEL = dict(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True, **NO_NRT)

_f32 = np.float32
_ZERO = _f32(0.0)
_HALF = _f32(0.5)
_ONE = _f32(1.0)

HEAD_LINEAR = 0
HEAD_SIGMOID = 1


# ---- the activations -----------------------------------------------------------------------

# tanh as a rational function p(x)/q(x) on [-c, c] (the float32 approximation used by Eigen):
# only multiply, add, divide and compare, so it vectorises on x86 and ARM alike, unlike a call to
# libm's tanhf. Its error against float64 tanh, and sigmoid's, is bounded in
# tests/test_kernels.py (largest where it saturates).
_TANH_CLAMP = _f32(7.90531110763549805)
_A1 = _f32(4.89352455891786e-03)
_A3 = _f32(6.37261928875436e-04)
_A5 = _f32(1.48572235717979e-05)
_A7 = _f32(5.12229709037114e-08)
_A9 = _f32(-8.60467152213735e-11)
_A11 = _f32(2.00018790482477e-13)
_A13 = _f32(-2.76076847742355e-16)
_B0 = _f32(4.89352518554385e-03)
_B2 = _f32(2.26843463243900e-03)
_B4 = _f32(1.18534705686654e-04)
_B6 = _f32(1.19825839466702e-06)


@njit(**KERNEL, inline="always")
def tanh(x):
    # Written so that NaN falls through both comparisons and propagates.
    if x > _TANH_CLAMP:
        x = _TANH_CLAMP
    if x < -_TANH_CLAMP:
        x = -_TANH_CLAMP
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return x * p / q


@njit(**KERNEL, inline="always")
def sigmoid(x):
    # sigmoid(x) = (1 + tanh(x/2)) / 2: error is half that of tanh.
    return _HALF * tanh(_HALF * x) + _HALF


@njit(**KERNEL, inline="always")
def hard_sigmoid(x, alpha, beta):
    # clip(alpha * x + beta, 0, 1), written so that NaN falls through and propagates.
    g = alpha * x + beta
    if g < _ZERO:
        g = _ZERO
    if g > _ONE:
        g = _ONE
    return g


@njit(**KERNEL, inline="always")
def _sigmoid_gate(x, alpha, beta):
    return sigmoid(x)               # alpha and beta: hard_sigmoid's, for one signature of gates


# ---- the cell --------------------------------------------------------------------------------
# One time step of one layer and direction. xp (3H,) is the step's input projection,
# [W_ir x + b_ir + b_hr | W_iz x + b_iz + b_hz | W_in x + b_in] (+ b_hn when reset_before:
# the layout folds the biases), and a (3H,) the scratch the hidden products are summed into,
# starting from xp's [r | z] parts, so every sum runs in the same order in all three paths.
# gates = (reset_after, hard_gates, alpha, beta); a matrix such as W_hh is a layout tuple
# (see _block) that only matvec and matmul read. The cell and its pieces are inlined into the
# kernels: one function body lets LLVM schedule a time step as a whole, and no call passes
# every array view's fields; the price is compile time, paid once into numba's cache.

@njit(**KERNEL, inline="always")
def _cell(h, xp, a, W_hh, b_hn, gates, reverse):
    # h (H,) -> h', in place. reverse: matvec reads W_hh's panels in the other order, for the
    # same sums; the callers alternate it from step to step (see _matvec).
    H = h.shape[0]
    reset_after = gates[0]
    _start(a, xp, b_hn, reset_after)
    if reset_after:
        matvec(a, h, W_hh, reverse)                     # a += h @ W_hh
        _gates_after(h, a, xp, gates)
    else:
        matvec(a[:2 * H], h, W_hh, reverse)             # a[:2H] += h @ [W_hr | W_hz]
        _gates_before(h, a, xp, gates)                  # a = [r * h | z | xp_n]
        matvec(a[2 * H:], a[:H], W_hh, reverse)         # a_n += (r * h) @ W_hn
        _update_before(h, a)


@njit(**KERNEL, inline="always")
def _start(a, xp, b_hn, reset_after):
    # a = [xp_r | xp_z | b_hn] (reset_after) or [xp_r | xp_z | .] (reset_before)
    H = b_hn.shape[0]
    for j in range(2 * H):
        a[j] = xp[j]
    if reset_after:
        a_n = a[2 * H:]
        for j in range(H):
            a_n[j] = b_hn[j]


# The elementwise part of the cell: one copy of each loop per gate function g, chosen once per
# call: with the choice inside the loop, LLVM no longer vectorises it.

@njit(**KERNEL, inline="always")
def _gates_after(h, a, xp, gates):
    if gates[1]:
        _update_after(h, a, xp, hard_sigmoid, gates[2], gates[3])
    else:
        _update_after(h, a, xp, _sigmoid_gate, gates[2], gates[3])


@njit(**KERNEL, inline="always")
def _gates_before(h, a, xp, gates):
    if gates[1]:
        _reset_before(h, a, xp, hard_sigmoid, gates[2], gates[3])
    else:
        _reset_before(h, a, xp, _sigmoid_gate, gates[2], gates[3])


@njit(**KERNEL, inline="always")
def _update_after(h, a, xp, g, alpha, beta):
    # reset_after: a = [r | z | W_hn h + b_hn] before the activations -> h', in place
    H = h.shape[0]
    a_r, a_z, a_n, xp_n = a[:H], a[H:2 * H], a[2 * H:], xp[2 * H:]
    for j in range(H):
        r = g(a_r[j], alpha, beta)              # g(W_ir x + b_ir + W_hr h + b_hr)
        z = g(a_z[j], alpha, beta)              # g(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(xp_n[j] + r * a_n[j])          # tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h[j] = n + z * (h[j] - n)               # h' = (1 - z) * n + z * h


@njit(**KERNEL, inline="always")
def _reset_before(h, a, xp, g, alpha, beta):
    # reset_before: a = [r | z | .] before the activations -> [r * h | z | xp_n], ready for
    # a_n += (r * h) @ W_hn
    H = h.shape[0]
    a_r, a_z, a_n, xp_n = a[:H], a[H:2 * H], a[2 * H:], xp[2 * H:]
    for j in range(H):
        a_r[j] = g(a_r[j], alpha, beta) * h[j]  # r * h; r is not needed again
        a_z[j] = g(a_z[j], alpha, beta)         # z
        a_n[j] = xp_n[j]                        # W_in x + b_in + b_hn


@njit(**KERNEL, inline="always")
def _update_before(h, a):
    # reset_before: a = [. | z | W_in x + b_in + W_hn (r * h) + b_hn] -> h', in place
    H = h.shape[0]
    a_z, a_n = a[H:2 * H], a[2 * H:]
    for j in range(H):
        n = tanh(a_n[j])                        # tanh(W_in x + b_in + W_hn (r * h) + b_hn)
        h[j] = n + a_z[j] * (h[j] - n)          # h' = (1 - z) * n + z * h


@njit(**KERNEL)
def _cells(hs, xps, c, acc, W_hh, b_hn, gates, reverse):
    # _cell for N independent sequences at once, each row of W_hh read once for all:
    # hs (N, H) in place; xps[:, c] (N, 3H) this step's input projections; acc (N, 3H).
    N, H = hs.shape
    for b in range(N):
        _start(acc[b], xps[b, c], b_hn, gates[0])
    if gates[0]:
        matmul(acc, hs, W_hh, 3 * H, reverse)
        for b in range(N):
            _gates_after(hs[b], acc[b], xps[b, c], gates)
    else:
        matmul(acc, hs, W_hh, 2 * H, reverse)
        for b in range(N):
            _gates_before(hs[b], acc[b], xps[b, c], gates)
        matmul(acc, acc, W_hh, H, reverse)              # [n] += (r * h) @ W_hn, r * h in acc
        for b in range(N):
            _update_before(hs[b], acc[b])


@njit(**KERNEL, inline="always")
def _output(y, h, w_head, b_head, activation):
    # y (O,) = act(W_head h + b_head);  h (K,), W_head (O, K) flat in w_head.
    # Without a head (O = 0), y (K,) = h.
    K = h.shape[0]
    if b_head.shape[0] == 0:
        for j in range(K):
            y[j] = h[j]
        return
    for o in range(y.shape[0]):
        s = _dot(w_head[o * K:(o + 1) * K], h) + b_head[o]
        if activation == HEAD_SIGMOID:
            s = sigmoid(s)
        y[o] = s


# ---- the step --------------------------------------------------------------------------------
# The step kernel reads its sizes and flags from its model array's header (see STEP_HEADER).

@njit(**KERNEL)
def gru_step(out, x, model):
    """One time step of a unidirectional stack, updating the state in place.

    out (O,)   x (I,)
    model: [header | params | work | x] (see write_step_header); params: see "the layout";
    work (L*H + 6H,): [h of each layer | xp (3H) | a (3H)], owned by the model.
    output_size == 0 means no head: out (H,) receives the top layer's hidden state.
    """
    P = np.int64(model[_H_PARAMS])
    reverse = model[_H_REVERSE] != 0
    model[_H_REVERSE] = _ZERO if reverse else _ONE
    sizes = (np.int64(model[_H_INPUT]), np.int64(model[_H_HIDDEN]), np.int64(model[_H_LAYERS]),
             np.int64(model[_H_OUTPUT]), np.int64(model[_H_HEAD]), model[_H_RECURRENT_BF16] != 0)
    gates = (model[_H_RESET_AFTER] != 0, model[_H_HARD_GATES] != 0, model[_H_ALPHA],
             model[_H_BETA])
    _step(out, x, model[STEP_HEADER:STEP_HEADER + P], model[STEP_HEADER + P:], sizes, gates,
          reverse)


@njit(**KERNEL, inline="always")
def _step(out, x, params, work, sizes, gates, reverse):
    I, H, L, O, head_activation, recurrent_bf16 = sizes
    G = 3 * H
    xp = work[L * H:L * H + G]
    a = work[L * H + G:L * H + 2 * G]
    layer_in = x
    for l in range(L):
        W_ih, b_x, W_hh, b_hn = _block(params, l, 0, I, H, 1, recurrent_bf16)
        h = work[l * H:(l + 1) * H]
        for j in range(G):
            xp[j] = b_x[j]
        matvec(xp, layer_in, W_ih, reverse)             # xp = b_x + layer_in @ W_ih
        _cell(h, xp, a, W_hh, b_hn, gates, reverse)
        layer_in = h
    w_head, b_head = _head_views(params, I, H, L, 1, O)
    _output(out, layer_in, w_head, b_head, head_activation)


# ---- the sequence and the batch --------------------------------------------------------------
# The sequence kernel projects the input of a chunk of CHUNK time steps at once (for all
# sequences of a batch), so the input weights are read once per chunk rather than per step.
CHUNK = 32


def sequence_workspace_size(B, T, hidden_size, num_directions):
    """Floats of workspace gru_sequences needs for B sequences of T steps."""
    G = 3 * hidden_size
    K = num_directions * hidden_size
    return 2 * B * T * K + B * min(T, CHUNK) * G + B * G


@njit(**KERNEL)
def gru_sequences(Y, X, h, params, ws, input_size, hidden_size, num_layers, num_directions,
                  output_size, reset_after, hard_gates, gate_alpha, gate_beta, head_activation,
                  recurrent_bf16):
    """B independent sequences through the stack, all B advanced together one step at a time
    (each weight read once per step for the whole batch).

    Y (B, T, O)   X (B, T, I)   h (L*D, B, H): initial state in, final state out
    ws: workspace of at least sequence_workspace_size(B, T, H, D) floats.
    recurrent_bf16: w_hh is bfloat16 (pack_recurrent: which blocks hold bfloat16 words).

    The reverse direction of a bidirectional layer starts from its row of h at the end of the
    sequences, as in PyTorch.
    """
    B, T = X.shape[0], X.shape[1]
    H, D = hidden_size, num_directions
    G, K, C = 3 * H, D * H, min(T, CHUNK)
    seq_a = ws[:B * T * K].reshape((B, T, K))           # layer outputs, alternately
    seq_b = ws[B * T * K:2 * B * T * K].reshape((B, T, K))
    rest = ws[2 * B * T * K:]
    xp = rest[:B * C * G].reshape((B, C, G))           # sequence b, step c of the chunk
    acc = rest[B * C * G:B * C * G + B * G].reshape((B, G))
    gates = (reset_after, hard_gates, gate_alpha, gate_beta)
    src = X
    for l in range(num_layers):
        dst = seq_a if l % 2 == 0 else seq_b
        for d in range(D):
            block = _block(params, l, d, input_size, H, D, recurrent_bf16)
            _direction(dst, d, src, h[l * D + d], block, gates, xp, acc)
        src = dst
    w_head, b_head = _head_views(params, input_size, H, num_layers, D, output_size)
    for b in range(B):
        for t in range(T):
            _output(Y[b, t], src[b, t], w_head, b_head, head_activation)


@njit(**KERNEL, inline="always")
def _direction(dst, d, src, hs, block, gates, xp, acc):
    # Direction d (0 forward, 1 backward) of one layer over B sequences: src (B, T, in) ->
    # dst[:, :, dH:(d+1)H]; hs (B, H) the state, in place. For each chunk of time steps, the
    # input projection first, then the recurrence over it.
    W_ih, b_x, W_hh, b_hn = block
    B, T, H = src.shape[0], src.shape[1], hs.shape[1]
    C = xp.shape[1]
    for c0 in range(0, T, C):
        n = min(C, T - c0)
        t0 = c0 if d == 0 else T - c0 - n       # steps t0 .. t0+n-1, or their mirror image
        for b in range(B):
            _project(xp[b, :n], src[b, t0:t0 + n], W_ih, b_x)
        for s in range(n):
            c = s if d == 0 else n - 1 - s
            reverse = (c0 + s) % 2 == 1         # W_hh's panels in the other order, every other
            if B == 1:                          # step
                _cell(hs[0], xp[0, c], acc[0], W_hh, b_hn, gates, reverse)
            else:
                _cells(hs, xp, c, acc, W_hh, b_hn, gates, reverse)
            for b in range(B):                  # a loop: numba's slice assignment costs more
                row = dst[b, t0 + c, d * H:(d + 1) * H]        # at small H
                hb = hs[b]
                for j in range(H):
                    row[j] = hb[j]


@njit(**KERNEL, inline="always")
def _project(xp, xs, W_ih, b_x):
    # xp (N, 3H) = b_x + xs @ W_ih;   xs (N, in), b_x (3H,)
    for b in range(xp.shape[0]):
        row = xp[b]
        for j in range(row.shape[0]):
            row[j] = b_x[j]
    # forward as a value, not a literal: numba compiles a function anew for a literal argument
    forward = xp.shape[0] < 0
    matmul(xp, xs, W_ih, xp.shape[1], forward)


# ---- a head past the fused one ---------------------------------------------------------------
# Dense layers with elementwise activations on the top layer's output (edgegru.heads packs them:
# weights [W_1 | b_1 | ...] flat, layers (n, 3) = inputs, outputs, activation of each layer).
# Here, beside the activations they share with the fused head, so that numba's cache, which
# looks only at the file a kernel is defined in, sees a change to either.
DENSE_LINEAR, DENSE_RELU, DENSE_TANH, DENSE_SIGMOID, DENSE_HARD_SIGMOID = range(5)


@njit(**KERNEL, inline="always")
def _dense_activate(s, act, alpha, beta):
    if act == DENSE_RELU:
        return s if not s < _ZERO else _ZERO        # NaN passes through
    if act == DENSE_TANH:
        return tanh(s)
    if act == DENSE_SIGMOID:
        return sigmoid(s)
    if act == DENSE_HARD_SIGMOID:
        return hard_sigmoid(s, alpha, beta)
    return s


@njit(**KERNEL, inline="always")
def _dense_chain(y, x, weights, layers, alpha, beta, scratch):
    # y (O,) = the chain on x (K,); scratch (2 * widest layer,): the layers in between
    half = scratch.shape[0] // 2
    src = x
    off = 0
    n = layers.shape[0]
    for i in range(n):
        k, m, act = layers[i, 0], layers[i, 1], layers[i, 2]
        dst = y if i == n - 1 else scratch[(i % 2) * half:(i % 2) * half + m]
        b = weights[off + m * k:off + m * k + m]
        for o in range(m):
            w = weights[off + o * k:off + (o + 1) * k]
            s = _ZERO
            for j in range(k):              # in order: the same sum on every path
                s += w[j] * src[j]
            dst[o] = _dense_activate(s + b[o], act, alpha, beta)
        off += m * k + m
        src = dst


@njit(**KERNEL)
def head_step(y, x, weights, layers, alpha, beta, scratch):
    """y (O,) = the head on one row x (K,)."""
    _dense_chain(y, x, weights, layers, alpha, beta, scratch)


@njit(**KERNEL)
def head_rows(Y, X, weights, layers, alpha, beta, scratch):
    """Y (N, O) = the head on each row of X (N, K), row by row as head_step."""
    for r in range(X.shape[0]):
        _dense_chain(Y[r], X[r], weights, layers, alpha, beta, scratch)



# ---- the layout of params, built once ----------------------------------------------------------
# Weights live in one flat float32 array (``params``), laid out by block_offsets, one block per
# layer and direction (``l`` major, then ``d``)::
#
#     w_ih   (in_size, 3H)   transposed input weights, columns [r | z | n]
#     b_x    (3H,)           [b_ir + b_hr | b_iz + b_hz | b_in]   (+ b_hn when reset_before)
#     w_hh   (H, 3H)         transposed hidden weights, columns [r | z | n]; past
#                            RECURRENT_BLOCKED_ABOVE hidden units (a bfloat16 one past
#                            RECURRENT_BF16_ABOVE), blocked (pack_recurrent)
#     b_hn   (H,)            hidden bias of the candidate (zero when reset_before: folded into b_x)
#
# each padded with zeros to whole cache lines (ALIGNMENT): the rows of w_ih and of a row-major
# w_hh are row_stride(H) long, so that every row starts on a cache line and no vector load
# of it straddles two lines. Then the optional linear head ``w_head (O, K)`` and ``b_head
# (O,)``, K = H * directions. Transposed weights make every matrix-vector product a sum of
# scaled rows: the inner loop runs over contiguous outputs, which LLVM vectorises without
# reassociating a reduction.
#
# The layout arithmetic is plain Python when Python calls it, so that building a model (and the
# NumPy fallback) does not load compiled code, and compiled into the kernels that call it
# (_jitable).
ALIGNMENT = 16                  # floats: 64 bytes, a cache line; params itself starts on one

# Large recurrent matrices are stored "blocked": [r | z] (H, 2H) and then [n] (H, H), each cut
# into blocks of RECURRENT_BLOCK_COLUMNS columns (the last one narrower), each block row-major,
# one after the other. A panel of the product (_matvec_blocked) then reads one contiguous run
# of memory, which the hardware prefetchers follow from L2, where row-major panels read a
# short piece of every row. Only past RECURRENT_BLOCKED_ABOVE: smaller matrices stay in L1,
# where the row-major panels in _rows4's order are as fast or faster.
RECURRENT_BLOCKED_ABOVE = 64

# A bfloat16 W_hh (recurrent_dtype "bfloat16") is blocked past this many hidden units too, so
# that its blocks can hold bfloat16 words; up to RECURRENT_BLOCKED_ABOVE their products keep
# _rows4's order, the order of float32's row-major panels (see _matvec_blocked). Its float32
# (12 H^2 bytes) is then past L1, and half of it fits: one time step gains more than the
# widening costs. Not below: where W_hh fits in L1 either way (to H=48), float32's own
# products on the rounded weights are faster, and at H=56 a batch, which widens the weights
# for each of its sequences, is slower (figures in BENCHMARKS.md, "Narrow weights").
RECURRENT_BF16_ABOVE = 56

if BACKEND == "numba":
    from numba.extending import register_jitable as _jitable
else:
    def _jitable(func):
        return func


@_jitable
def aligned(n):
    """n floats rounded up to whole cache lines."""
    return -(-n // ALIGNMENT) * ALIGNMENT


@_jitable
def row_stride(hidden_size):
    """Row length, in floats, of the row-major w_ih and w_hh: 3H and its padding."""
    return aligned(3 * hidden_size)


@_jitable
def recurrent_size(hidden_size):
    """Floats of params' w_hh: room for either layout (pack_recurrent), padding included."""
    return hidden_size * (aligned(2 * hidden_size) + aligned(hidden_size))


@_jitable
def block_offsets(l, d, input_size, hidden_size, num_directions):
    """Where block (layer l, direction d) lives in ``params``: (w_ih, b_x, w_hh, b_hn, in_size)."""
    S = row_stride(hidden_size)
    K = num_directions * hidden_size
    rest = S + recurrent_size(hidden_size) + aligned(hidden_size)   # b_x, w_hh, b_hn
    first = input_size * S + rest                   # one block of layer 0
    later = K * S + rest                            # one block of layer >= 1
    if l == 0:
        in_size = input_size
        w_ih = d * first
    else:
        in_size = K
        w_ih = num_directions * first + ((l - 1) * num_directions + d) * later
    b_x = w_ih + in_size * S
    w_hh = b_x + S
    b_hn = w_hh + recurrent_size(hidden_size)
    return w_ih, b_x, w_hh, b_hn, in_size


@_jitable
def head_offset(input_size, hidden_size, num_layers, num_directions):
    """Start of w_head in ``params`` (b_head follows it); also the size without a head."""
    w_ih, b_x, w_hh, b_hn, in_size = block_offsets(
        num_layers - 1, num_directions - 1, input_size, hidden_size, num_directions)
    return b_hn + aligned(hidden_size)


def params_size(input_size, hidden_size, num_layers, num_directions, output_size):
    """Length of ``params`` for these sizes (output_size 0: no head)."""
    size = head_offset(input_size, hidden_size, num_layers, num_directions)
    return size + output_size * (num_directions * hidden_size + 1)


@_jitable
def recurrent_blocked(hidden_size, block_columns, bf16=False):
    """Whether w_hh is blocked, for kernels whose blocks are block_columns wide (0: never);
    bf16: a bfloat16 W_hh, blocked past RECURRENT_BF16_ABOVE if its [r | z] can then be
    bfloat16 (bf16_block; otherwise the blocks would only split float32's products)."""
    if block_columns <= 0:
        return False
    if hidden_size > RECURRENT_BLOCKED_ABOVE:
        return True
    return bf16 and hidden_size > RECURRENT_BF16_ABOVE and bf16_block(2 * hidden_size,
                                                                       block_columns)


@_jitable
def bf16_block(width, block_columns):
    """Whether a block of a blocked bfloat16 W_hh this wide holds bfloat16 words: where it is a
    whole number of vectors (block_columns // 8 floats each), so that its product needs no
    masked tail."""
    return width % (block_columns // 8) == 0


def pack_recurrent(w_hh_t, block_columns, bf16=False):
    """The w_hh of params from the transposed hidden weights (H, 3H), flat: row-major with
    rows of row_stride(H), or blocked; its padding zero.

    bf16 (w_hh_t's values already bfloat16, see to_bfloat16): blocked from
    RECURRENT_BF16_ABOVE hidden units on, and each block that is a whole number of vectors
    wide (bf16_block) holds them as bfloat16 words (pack_bf16_block) at the start of its
    place, for _chain_bf16 and _panel_bf16; other blocks, and a row-major w_hh, stay float32."""
    H = w_hh_t.shape[0]
    if not recurrent_blocked(H, block_columns, bf16):
        return padded(w_hh_t, row_stride(H)).ravel()
    return np.concatenate([blocked(w_hh_t[:, :2 * H], block_columns, bf16),
                           blocked(w_hh_t[:, 2 * H:], block_columns, bf16)])


def padded(w, columns):
    """W (m, n) with zero columns added up to `columns`."""
    return np.pad(w, ((0, 0), (0, columns - w.shape[1])))


def blocked(w, block_columns, bf16=False):
    """W (m, n) flat in the blocked layout: blocks of block_columns columns, each row-major,
    the last one's rows padded to whole cache lines (aligned); with bf16, each block that is
    a whole number of vectors wide (bf16_block) as bfloat16 words at the start of its place."""
    out = []
    for c in range(0, w.shape[1], block_columns):
        width = min(block_columns, w.shape[1] - c)
        block = padded(w[:, c:c + block_columns], aligned(width))
        if bf16 and bf16_block(width, block_columns):
            words = pack_bf16_block(block[:, :width], block_columns // 8).ravel()
            out += [words, np.zeros(block.size - words.size, np.float32)]   # rows of words
        else:
            out.append(block.ravel())
    return np.concatenate(out)


def to_bfloat16(a):
    """The bfloat16 bits (uint16) nearest to float32 a, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16(bits):
    """float32 values of bfloat16 bits (uint16): exact."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def pack_bf16_block(block, lanes):
    """A block (m, v * lanes) of bfloat16 values, as float32 as (m, ceil(v / 2) * lanes) words
    (bf16_words): word k of a row's vector p holds column 2 p lanes + k in its low half and
    column (2 p + 1) lanes + k in its high half (zero past the block), so that one shift (or
    one mask) of a vector of words widens one vector of columns (_PanelIR.widened)."""
    m, n = block.shape
    pairs = bf16_words(n // lanes, lanes) // lanes
    bits = np.zeros((m, 2 * pairs * lanes), np.uint32)
    bits[:, :n] = to_bfloat16(block)
    bits = bits.reshape(m, pairs, 2, lanes)
    return (bits[:, :, 0] | (bits[:, :, 1] << 16)).reshape(m, pairs * lanes).view(np.float32)


@_jitable
def bf16_words(nvec, lanes):
    """Words in a row of pack_bf16_block's block of nvec vectors of lanes columns."""
    return (nvec + 1) // 2 * lanes


def unpack_bf16_block(words, lanes):
    """pack_bf16_block's block (m, 2 * words' columns) float32, from its words (with the
    zero columns past the block, when it has an odd number of vectors)."""
    m = words.shape[0]
    u = np.ascontiguousarray(words).view(np.uint32).reshape(m, -1, lanes)
    halves = np.stack([u << 16, u & np.uint32(0xFFFF0000)], axis=2)
    return halves.reshape(m, -1).view(np.float32)


@njit(cache=True, inline="always")
def _block(params, l, d, input_size, hidden_size, num_directions, recurrent_bf16):
    # One block of params: W_ih, b_x (3H,), W_hh, b_hn (H,). A matrix is the tuple (w, H,
    # blocked, bf16) that matvec and matmul read: w its floats, flat (a reshape is a call into
    # numba's C helpers, a slice is not), H the hidden size (a row-major matrix's rows are
    # row_stride(H) long), blocked whether it is in the blocked layout (only a large w_hh),
    # bf16 whether its blocks may hold bfloat16 words (pack_recurrent; only a blocked w_hh).
    w_ih, b_x, w_hh, b_hn, in_size = block_offsets(l, d, input_size, hidden_size, num_directions)
    H = hidden_size
    # (False as a value: a literal would give W_ih a type of its own, and matmul a second
    # compilation for it)
    row_major = H < 0
    blocked = recurrent_blocked(H, RECURRENT_BLOCK_COLUMNS, recurrent_bf16)
    return ((params[w_ih:b_x], H, row_major, row_major), params[b_x:b_x + 3 * H],
            (params[w_hh:b_hn], H, blocked, blocked and recurrent_bf16), params[b_hn:b_hn + H])


@njit(cache=True, inline="always")
def _head_views(params, input_size, hidden_size, num_layers, num_directions, output_size):
    # w_head (O * K,), b_head (O,)
    K = hidden_size * num_directions
    start = head_offset(input_size, hidden_size, num_layers, num_directions)
    end = start + output_size * K
    return params[start:end], params[end:end + output_size]


# ---- the step kernel's model array ----------------------------------------------------------
# The step kernel takes the whole model as one array, so that a call from Python converts three
# arrays and nothing else: each argument numba's entry point unboxes costs time on every call,
# a noticeable share of a small model's step, and the sizes and flags never change once a model
# is built. The array is
#     [header (STEP_HEADER floats) | params | work | x (I)]
# with the sizes and flags in the header as float32 values (exact: all are below 2**24), and
# one slot of state, _H_REVERSE: the order in which this call reads the weights (see _matvec).
STEP_HEADER = 16                # 64 bytes: params start where the array does, modulo a cache line
_H_INPUT, _H_HIDDEN, _H_LAYERS, _H_OUTPUT, _H_RESET_AFTER, _H_HARD_GATES, _H_ALPHA, _H_BETA, \
    _H_HEAD, _H_PARAMS, _H_REVERSE, _H_RECURRENT_BF16 = range(12)


def step_model_size(params_size, work_size, input_size):
    """Length of the step kernel's model array."""
    return STEP_HEADER + params_size + work_size + input_size


def write_step_header(model, input_size, hidden_size, num_layers, output_size, reset_after,
                      hard_gates, gate_alpha, gate_beta, head_activation, params_size,
                      recurrent_bf16=False):
    """Fill the header of a step model array (see above); params and work follow it."""
    model[:STEP_HEADER] = 0.0
    model[[_H_INPUT, _H_HIDDEN, _H_LAYERS, _H_OUTPUT, _H_RESET_AFTER, _H_HARD_GATES, _H_ALPHA,
           _H_BETA, _H_HEAD, _H_PARAMS, _H_RECURRENT_BF16]] = [
        input_size, hidden_size, num_layers, output_size, float(bool(reset_after)),
        float(bool(hard_gates)), gate_alpha, gate_beta, head_activation, params_size,
        float(bool(recurrent_bf16))]


# ---- calling a kernel from Python ----------------------------------------------------------------

def entry_point(kernel, args):
    """The machine code of ``kernel`` for the types of ``args``, as a plain callable.

    Compiled now, or loaded from numba's cache. Calling it skips numba's dispatcher (which
    types every argument on every call, a good part of a small model's step), so it does no
    type checking at all: the caller must pass arrays of exactly these dtypes, dimensions and
    contiguity. From the ahead-of-time module (edgegru.aot), the types are checked once, here.
    Without numba the kernel is a plain function, returned as it is.
    """
    if isinstance(kernel, aot.Kernel):
        return kernel.entry(args)
    if not JIT:
        return kernel
    from numba import typeof
    return kernel.compile(tuple(typeof(a) for a in args))


# ================================================================================================
#    The product machinery: how matvec and matmul are made fast. Nothing above depends on how.
# ================================================================================================
# Every product here computes, for each output column, the same sum in the same order as the
# plain row-by-row loop _axpy (or, for the blocked w_hh, _axpy_chain), so whichever path a
# product takes (sums in vector registers, panels in either order, masked tails, blocks), the
# bits are those of the loop. tests/test_kernels.py holds each path to that.

@njit(**KERNEL, inline="always")
def matvec(acc, x, W, reverse):
    # acc (n,) += x @ W[:, c:c+n];   x (m,), W (m, 3H) a matrix of params (see _block), whose
    # columns are all (n = 3H), [r | z] (n = 2H, c = 0) or [n] (n = H, c = 2H).
    # reverse: the same sums, the panels in the other order (see _matvec).
    # Inlined, so that the cell calls _matvec directly: one call more per product costs a
    # noticeable share of a small model's step.
    w, H, blocked, bf16 = W
    if blocked:
        _matvec_recurrent_blocked(acc, x, w, reverse, bf16)
    else:
        _matvec(acc, x, w, row_stride(H), 2 * H if acc.shape[0] == H else 0, reverse)


@njit(**KERNEL)
def matmul(acc, xs, W, n, reverse):
    # acc[:, c:c+n] += xs @ W[:, c:c+n], row by row, bitwise as matvec on each row;
    # acc (N, 3H), xs (N, m), W and its columns as matvec's. For [n], xs may be (N, >= H) with
    # strided rows: the reset-before cell's r * h, in acc, which goes by _matmul.
    # The cells call each product once, whatever the layout, and pass no constants: a second
    # copy of the gate loops per layout doubles the kernels' compile time, and numba compiles
    # a function anew for each literal argument.
    w, H, blocked, bf16 = W
    c0 = 2 * H if n == H else 0
    if blocked:
        _matmul_recurrent_blocked(acc, xs, w, n, reverse, bf16)
    elif n == H:
        _matmul(acc, c0, xs[:, :H], w, row_stride(H), c0, n)
    else:
        _matmul_panels(acc, c0, xs, w, row_stride(H), c0, n, reverse)


# Indexing note: the inner loops index array *views* with the bare loop variable (a[j], never
# a[a0 + j]). An index that might be negative makes numba emit wraparound code, which stops LLVM
# from vectorising the loop.

@njit(**KERNEL, inline="always")
def _rows4(acc, x0, x1, x2, x3, w0, w1, w2, w3):
    # acc (n,) += x0 w0 + x1 w1 + x2 w2 + x3 w3, summed in this order (no reassociation).
    for j in range(acc.shape[0]):
        acc[j] += (x0 * w0[j] + x1 * w1[j]) + (x2 * w2[j] + x3 * w3[j])


@njit(**KERNEL, inline="always")
def _rows1(acc, x0, w0):
    for j in range(acc.shape[0]):
        acc[j] += x0 * w0[j]


@njit(**KERNEL, inline="always")
def _axpy(acc, x, w, ld, c0):
    # acc (n,) += x @ W[:, c0:c0+n];   x (m,), W (m, ld) row-major, flat in w.
    # w is transposed ("rows" are input elements), so acc is a sum of scaled rows of w: the
    # inner loop runs over contiguous outputs and vectorises. Four rows per pass.
    n = acc.shape[0]
    m = x.shape[0]
    i = 0
    while i + 4 <= m:
        r = i * ld + c0
        _rows4(acc, x[i], x[i + 1], x[i + 2], x[i + 3], w[r:r + n], w[r + ld:r + ld + n],
               w[r + 2 * ld:r + 2 * ld + n], w[r + 3 * ld:r + 3 * ld + n])
        i += 4
    while i < m:
        r = i * ld + c0
        _rows1(acc, x[i], w[r:r + n])
        i += 1


@njit(**KERNEL, inline="always")
def _axpy_chain(acc, x, w, ld, c0):
    # _axpy, one row at a time: acc[j] = fma(x[i], W[i, c0 + j], acc[j]) for i in order. The
    # order of the large recurrent products (_matvec_blocked), whose register-held sums
    # (_chain) are faster in it than in _rows4's (see _matvec_blocked).
    n = acc.shape[0]
    for i in range(x.shape[0]):
        r = i * ld + c0
        _rows1(acc, x[i], w[r:r + n])


def _vector_intrinsics(lanes):
    """Six numba intrinsics, ``panel``, ``panel_masked``, ``chain``, ``chain_bf16``,
    ``panel_bf16`` and ``dot8``, in LLVM IR.

    ``panel(acc, x, w, ld, c0, nvec)``:
    acc[:L*nvec] += x @ W[:, c0:c0+L*nvec], x (m,), W (m, ld) flat in w, nvec a literal 1..8,
    L = ``lanes`` floats per vector (see panel_lanes).

    Exactly :func:`_axpy` on those columns (the same sums in the same order, so bitwise the same
    results), except that the L*nvec sums stay in vector registers from the first row to the
    last, where _axpy loads and stores its accumulator every four rows and checks at run time
    that it does not overlap the weights. Numba cannot say "keep this in registers" (its arrays
    live in memory, and LLVM cannot prove that the accumulator and the weights, views of one
    model array, do not overlap), hence LLVM IR, written in this file rather than in a module
    of its own so that numba's cache, which watches the file a kernel is defined in, sees any
    change to it.

    Portable: plain ``<L x float>`` vectors, which LLVM maps onto whatever registers the target
    has (``<8 x float>``: one AVX register on x86, two NEON registers on ARM; ``<16 x float>``:
    one AVX-512 register); no target intrinsics. Per row group the expression is that
    of :func:`_rows4` with the kernels' fast-math flags, so LLVM contracts the same products
    into FMAs. Numba backend only: it imports numba.

    ``panel_masked(acc, x, w, ld, c0, nvec)``: ``panel`` for the last columns of a product,
    fewer than ``L*nvec``: acc[:n] += x @ W[:, c0:c0+n], L*(nvec-1) < n <= L*nvec, its last
    vector loaded and stored through a mask of n - L*(nvec-1) lanes (``llvm.masked.load`` and
    ``.store``, which LLVM lowers on every target: one instruction with AVX-512 or AVX2, a
    branch per lane on NEON). Weights past the n columns are read (but not used) only where
    they lie inside w. The same sums as ``panel``, so bitwise :func:`_axpy` on those columns.

    ``chain(acc, x, w, ld, c0, nvec)``: the same product in the order of :func:`_axpy_chain`,
    one row at a time (acc = fma(x[i], W[i], acc) for i in order), for the blocked layout of
    large recurrent matrices (see _matvec_blocked).

    ``chain_bf16(acc, x, w, ld, c0, nvec)``: ``chain`` on W held as bfloat16 words (nvec even;
    ld and c0 count words; the layout of pack_bf16_block), each vector of words widened exactly
    into two vectors of float32 weights: bitwise ``chain`` on the widened W.

    ``panel_bf16(acc, x, w, ld, c0, nvec)``: ``panel`` (its order, _rows4's) on W held so, nvec
    1..8 (odd: the last vector of words widens its low halves only): bitwise ``panel`` on the
    widened W.

    ``dot8(a, b)``: the first part of :func:`_dot` for len(a) a multiple of 8, in one
    ``<8 x float>`` register: lane l sums a[k] * b[k] for k = l mod 8, in order, exactly as the
    eight scalar sums of :func:`_dot8_lanes` below, then the same fixed tree. LLVM does
    not vectorise those eight scalar chains by itself.
    """
    from numba import types
    from numba.extending import intrinsic

    def product(acc, x, w, ld, c0, nvec, rows_per_group, masked=False, bf16=False):
        if not (isinstance(nvec, types.IntegerLiteral)
                and 1 <= nvec.literal_value <= _MAX_VECTORS and _float32_vectors(acc, x, w)):
            return None
        return (types.void(acc, x, w, ld, c0, nvec),
                _panel_codegen(lanes, nvec.literal_value, rows_per_group, masked, bf16))

    @intrinsic
    def panel(typingctx, acc, x, w, ld, c0, nvec):
        return product(acc, x, w, ld, c0, nvec, 4)

    @intrinsic
    def chain(typingctx, acc, x, w, ld, c0, nvec):
        return product(acc, x, w, ld, c0, nvec, 1)

    @intrinsic
    def panel_masked(typingctx, acc, x, w, ld, c0, nvec):
        return product(acc, x, w, ld, c0, nvec, 4, masked=True)

    @intrinsic
    def chain_bf16(typingctx, acc, x, w, ld, c0, nvec):
        if not (isinstance(nvec, types.IntegerLiteral) and nvec.literal_value % 2 == 0):
            return None
        return product(acc, x, w, ld, c0, nvec, 1, bf16=True)

    @intrinsic
    def panel_bf16(typingctx, acc, x, w, ld, c0, nvec):
        return product(acc, x, w, ld, c0, nvec, 4, bf16=True)

    @intrinsic
    def dot8(typingctx, a, b):
        if not _float32_vectors(a, b):
            return None
        return types.float32(a, b), _dot8_codegen

    return panel, panel_masked, chain, chain_bf16, panel_bf16, dot8


_MAX_VECTORS = 8                # sums per panel: 8 (+4 broadcasts, 2 temporaries) of 16 registers
_DOT_LANES = 8                  # dot8's, whatever the panels' (its order of sums is fixed)
_FLAGS = tuple(sorted(FASTMATH))    # the IR's fast-math flags, as the kernels', so both contract alike


def _float32_vectors(*arrays):
    # the IR below assumes 1-d float32 arrays with unit strides
    from numba import types
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               and a.dtype == types.float32 for a in arrays)


def _i64(v):
    from llvmlite import ir
    return ir.Constant(ir.IntType(64), v)


def _vector_at(builder, base, offset, vector):
    # base[offset:] as one vector
    ptr = builder.gep(base, [offset], inbounds=True)
    return builder.bitcast(ptr, vector.as_pointer())


def _splat(builder, value, vector):
    # value in every lane
    from llvmlite import ir
    undef = ir.Constant(vector, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        v, undef, ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count))


def _loop(builder, name, start, stop, stride, body, sums):
    # for i in range(start, stop, stride): sums = body(i, sums), the sums in phi nodes;
    # returns the sums after the loop
    from llvmlite import ir
    before = builder.block
    loop_block = builder.append_basic_block(name)
    after = builder.append_basic_block(name + ".end")
    builder.cbranch(builder.icmp_signed("<", start, stop), loop_block, after)
    builder.position_at_end(loop_block)
    i = builder.phi(ir.IntType(64))
    i.add_incoming(start, before)
    carried = []
    for s in sums:
        phi = builder.phi(s.type)
        phi.add_incoming(s, before)
        carried.append(phi)
    new = body(i, carried)
    i_next = builder.add(i, _i64(stride))
    last = builder.block
    i.add_incoming(i_next, last)
    for phi, s in zip(carried, new):
        phi.add_incoming(s, last)
    builder.cbranch(builder.icmp_signed("<", i_next, stop), loop_block, after)
    builder.position_at_end(after)
    out = []
    for s, s_new in zip(sums, new):
        phi = builder.phi(s.type)
        phi.add_incoming(s, before)
        phi.add_incoming(s_new, last)
        out.append(phi)
    return out


def _masked_memory(builder, name, vector, types_):
    # llvm.masked.load or .store, declared once per module
    from llvmlite import ir
    module = builder.module
    mangled = "llvm.masked.%s.v%df32.p0" % (name, vector.count)
    if mangled in module.globals:
        return module.globals[mangled]
    returns = vector if name == "load" else ir.VoidType()
    return ir.Function(module, ir.FunctionType(returns, types_), mangled)


def _panel_codegen(lanes, Q, rows_per_group, masked, bf16=False):
    """The codegen of a panel intrinsic (see _vector_intrinsics): Q vectors of `lanes` floats,
    the rows summed four at a time in _rows4's order (rows_per_group 4) or one at a time
    (1), the last vector masked or not; the weights float32, or bfloat16 words (bf16: ld and
    c0 count words; see pack_recurrent)."""
    def codegen(context, builder, signature, args):
        acc_a, x_a, w_a = (context.make_array(t)(context, builder, value=v)
                           for t, v in zip(signature.args[:3], args[:3]))
        p = _PanelIR(builder, lanes, Q, x_a.data, w_a.data, ld=args[3], c0=args[4], bf16=bf16)
        m = builder.extract_value(x_a.shape, 0)
        safe = p.set_mask(acc_a, w_a, m) if masked else None
        sums = [p.load(p.acc_vector(acc_a.data, q), whole=not masked or q < Q - 1)
                for q in range(Q)]
        if rows_per_group == 4:
            m4 = builder.mul(builder.sdiv(m, _i64(4)), _i64(4))
        else:
            m4 = _i64(0)
        if not masked:
            sums = _loop(builder, "panel.rows4", _i64(0), m4, 4, p.rows4(True), sums)
            sums = _loop(builder, "panel.rows1", m4, m, 1, p.rows1(True), sums)
        else:                           # the same rows in the same order, split at `safe`
            safe4 = p.smaller(m4, builder.mul(builder.sdiv(safe, _i64(4)), _i64(4)))
            sums = _loop(builder, "panel.rows4", _i64(0), safe4, 4, p.rows4(True), sums)
            sums = _loop(builder, "panel.rows4.masked", safe4, m4, 4, p.rows4(False), sums)
            safe1 = p.larger(m4, safe)
            sums = _loop(builder, "panel.rows1", m4, safe1, 1, p.rows1(True), sums)
            sums = _loop(builder, "panel.rows1.masked", safe1, m, 1, p.rows1(False), sums)
        for q, s in enumerate(sums):
            p.store(s, p.acc_vector(acc_a.data, q), whole=not masked or q < Q - 1)
        return context.get_dummy_value()
    return codegen


class _PanelIR:
    """The pieces of one panel's IR, for one call of its codegen: loads, sums, the mask."""

    def __init__(self, builder, lanes, Q, x, w, ld, c0, bf16=False):
        from llvmlite import ir
        self.builder, self.lanes, self.Q, self.x, self.w, self.ld, self.c0 = \
            builder, lanes, Q, x, w, ld, c0
        self.vector = ir.VectorType(ir.FloatType(), lanes)
        self.bf16 = bf16
        self.words = ir.VectorType(ir.IntType(32), lanes)

    def set_mask(self, acc_a, w_a, m):
        # The last vector holds n - L (Q - 1) columns: a mask of its first lanes. Returns the
        # first row whose last vector would reach past the end of w: the rows before it load
        # that vector in full (its lanes past n read the columns after, or the next row), as
        # a masked load costs one branch per lane where the target has none (NEON).
        from llvmlite import ir
        b, L = self.builder, self.lanes
        i64s = ir.VectorType(ir.IntType(64), L)
        n = b.extract_value(acc_a.shape, 0)
        valid = b.sub(n, _i64(L * (self.Q - 1)))
        self.mask = b.icmp_signed("<", ir.Constant(i64s, list(range(L))), _splat(b, valid, i64s))
        self.zeros = ir.Constant(self.vector, [0.0] * L)
        masks = ir.VectorType(ir.IntType(1), L)
        pointer = self.vector.as_pointer()
        self.masked_load = _masked_memory(b, "load", self.vector,
                                          [pointer, ir.IntType(32), masks, self.vector])
        self.masked_store = _masked_memory(b, "store", self.vector,
                                           [self.vector, pointer, ir.IntType(32), masks])
        length = b.extract_value(w_a.shape, 0)
        room = b.sub(b.sub(length, self.c0), _i64(L * self.Q))
        safe = b.select(b.icmp_signed("<", room, _i64(0)), _i64(0),
                        b.add(b.sdiv(room, self.ld), _i64(1)))
        return self.smaller(safe, m)

    def smaller(self, a, b):
        return self.builder.select(self.builder.icmp_signed("<", a, b), a, b)

    def larger(self, a, b):
        return self.builder.select(self.builder.icmp_signed("<", a, b), b, a)

    def acc_vector(self, acc, q):
        return _vector_at(self.builder, acc, _i64(self.lanes * q), self.vector)

    def load(self, pointer, whole=True):
        from llvmlite import ir
        if whole:
            return self.builder.load(pointer, align=4)
        return self.builder.call(self.masked_load,
                                 [pointer, ir.Constant(ir.IntType(32), 4), self.mask, self.zeros])

    def store(self, value, pointer, whole=True):
        from llvmlite import ir
        if whole:
            self.builder.store(value, pointer, align=4)
        else:
            self.builder.call(self.masked_store,
                              [value, pointer, ir.Constant(ir.IntType(32), 4), self.mask])

    def broadcast(self, i):
        # x[i] in every lane
        b = self.builder
        return _splat(b, b.load(b.gep(self.x, [i], inbounds=True), align=4), self.vector)

    def weights(self, i, q, whole=True):
        # W[i, c0 + Lq : c0 + Lq + L], the last vector masked unless whole
        b = self.builder
        if self.bf16:
            return self.widened(i, q)
        offset = b.add(b.add(b.mul(i, self.ld), self.c0), _i64(self.lanes * q))
        return self.load(_vector_at(b, self.w, offset, self.vector), whole or q < self.Q - 1)

    def widened(self, i, q):
        # W[i, Lq : Lq + L] from bfloat16 words: vector q // 2 of row i's words holds columns
        # L(q - q % 2) + k in its low halves, the L columns after them in its high halves
        # (pack_recurrent); a bfloat16 is the top half of its float32, so one shift or one
        # mask widens it exactly. (LLVM loads each vector of words once for both halves.)
        from llvmlite import ir
        b, L = self.builder, self.lanes
        offset = b.add(b.add(b.mul(i, self.ld), self.c0), _i64(L * (q // 2)))
        words = b.load(_vector_at(b, self.w, offset, self.words), align=4)
        if q % 2 == 0:
            words = b.shl(words, ir.Constant(self.words, [16] * L))
        else:
            words = b.and_(words, ir.Constant(self.words, [-65536] * L))
        return b.bitcast(words, self.vector)

    def mul(self, a, b):
        return self.builder.fmul(a, b, flags=_FLAGS)

    def add(self, a, b):
        return self.builder.fadd(a, b, flags=_FLAGS)

    def rows4(self, whole):
        # the loop body of _rows4: acc += (x0 w0 + x1 w1) + (x2 w2 + x3 w3)
        def body(i, sums):
            i1, i2, i3 = (self.builder.add(i, _i64(k)) for k in (1, 2, 3))
            x0, x1, x2, x3 = self.broadcast(i), self.broadcast(i1), self.broadcast(i2), \
                self.broadcast(i3)
            add, mul, w = self.add, self.mul, self.weights
            return [add(s, add(add(mul(x0, w(i, q, whole)), mul(x1, w(i1, q, whole))),
                               add(mul(x2, w(i2, q, whole)), mul(x3, w(i3, q, whole)))))
                    for q, s in enumerate(sums)]
        return body

    def rows1(self, whole):
        # the loop body of _rows1: acc += x0 w0
        def body(i, sums):
            x0 = self.broadcast(i)
            return [self.add(s, self.mul(x0, self.weights(i, q, whole)))
                    for q, s in enumerate(sums)]
        return body


def _dot8_codegen(context, builder, signature, args):
    # the code of dot8 (see _vector_intrinsics)
    from llvmlite import ir
    vector = ir.VectorType(ir.FloatType(), _DOT_LANES)
    a_a, b_a = (context.make_array(t)(context, builder, value=v)
                for t, v in zip(signature.args, args))
    n = builder.extract_value(a_a.shape, 0)

    def lanes8(k, sums):            # as s_l += a[k + l] * b[k + l], l = 0..7
        ak = builder.load(_vector_at(builder, a_a.data, k, vector), align=4)
        bk = builder.load(_vector_at(builder, b_a.data, k, vector), align=4)
        return [builder.fadd(sums[0], builder.fmul(ak, bk, flags=_FLAGS), flags=_FLAGS)]

    zero = ir.Constant(vector, [0.0] * _DOT_LANES)
    total, = _loop(builder, "dot8", _i64(0), n, _DOT_LANES, lanes8, [zero])
    s = [builder.extract_element(total, ir.Constant(ir.IntType(32), lane))
         for lane in range(_DOT_LANES)]

    def add(x, y):
        return builder.fadd(x, y, flags=_FLAGS)
    return add(add(add(s[0], s[1]), add(s[2], s[3])), add(add(s[4], s[5]), add(s[6], s[7])))


def _dot8_lanes(a, b):
    # What _dot8 computes, written out: len(a) a multiple of 8; eight running sums, then a
    # fixed tree. The NumPy backend's _dot8, and the tests' reference for the intrinsic.
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for k in range(0, a.shape[0], 8):
        s0 += a[k] * b[k]
        s1 += a[k + 1] * b[k + 1]
        s2 += a[k + 2] * b[k + 2]
        s3 += a[k + 3] * b[k + 3]
        s4 += a[k + 4] * b[k + 4]
        s5 += a[k + 5] * b[k + 5]
        s6 += a[k + 6] * b[k + 6]
        s7 += a[k + 7] * b[k + 7]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


def panel_lanes(cpu_features):
    """Floats per vector in the register-blocked product for a CPU with these LLVM features
    ("+avx2,+fma,..."): 16 where it has AVX-512 (32 registers of 16 floats), else 8.

    Eight sums of 16 floats make a panel of 128 columns, where eight of 8 make 64: per row of
    the weights, one broadcast of x[i] feeds twice the columns, and the loads are full-width.
    Bitwise the same results either way: the lanes only decide which columns are summed side by side, and
    every column's sum keeps its order. With LLVM's "evex512" off (AVX10/256) there are no
    512-bit registers: 8.
    """
    features = set(cpu_features.split(","))
    return 16 if "+avx512f" in features and "-evex512" not in features else 8


def masked_tail(cpu_features):
    """Whether _matvec_tail takes the last columns of a product as one masked panel on a CPU
    with these LLVM features: where it has AVX (masked loads and stores in one instruction).

    Elsewhere it keeps panels of 4, 2 and 1 vectors and _axpy for the last columns: without
    AVX LLVM splits a masked load into a branch per lane, and on AArch64 the vector sums of
    a masked panel can round differently (by one bit, FMAs fused in another order) from
    _axpy's scalar ones, which the batch's _matmul shares, so the paths would no longer agree
    bitwise there.
    """
    return any(f.startswith("+avx") for f in cpu_features.split(","))


if BACKEND == "numba":
    # The CPU numba compiles for (NUMBA_CPU_NAME/FEATURES honoured): numba's cache and the
    # ahead-of-time module are both keyed by it, so a kernel compiled for 16 lanes is only
    # ever loaded where it was compiled (NUMBA_CPU_NAME=generic: no AVX-512, 8 lanes).
    PANEL_LANES = panel_lanes(aot.target_cpu()[1])
    MASKED_TAIL = masked_tail(aot.target_cpu()[1])
    _panel, _panel_masked, _chain, _chain_bf16, _panel_bf16, _dot8 = \
        _vector_intrinsics(PANEL_LANES)
else:
    # What the intrinsics compute (the NumPy backend and the ahead-of-time module never call
    # these: there the kernels are numpy_kernels or already machine code). The module's
    # lanes are those of the CPU it was built for: they decide the layout of params
    # (recurrent_blocked), which must be the one its code reads.
    PANEL_LANES = panel_lanes(AOT.cpu_features) if BACKEND == "aot" else 8
    MASKED_TAIL = False

    def _panel(acc, x, w, ld, c0, nvec):
        _axpy(acc[:PANEL_LANES * nvec], x, w, ld, c0)

    def _panel_masked(acc, x, w, ld, c0, nvec):
        _axpy(acc, x, w, ld, c0)

    def _chain(acc, x, w, ld, c0, nvec):
        _axpy_chain(acc[:PANEL_LANES * nvec], x, w, ld, c0)

    def _widened(x, w, ld, c0, nvec):
        # W (m, PANEL_LANES * nvec) float32, flat, from its bfloat16 words (rows of ld in w)
        words = w[c0:c0 + x.shape[0] * ld].reshape(x.shape[0], ld)
        widened = unpack_bf16_block(words[:, :bf16_words(nvec, PANEL_LANES)], PANEL_LANES)
        return np.ascontiguousarray(widened[:, :PANEL_LANES * nvec]).ravel()

    def _chain_bf16(acc, x, w, ld, c0, nvec):
        _axpy_chain(acc[:PANEL_LANES * nvec], x, _widened(x, w, ld, c0, nvec),
                    PANEL_LANES * nvec, 0)

    def _panel_bf16(acc, x, w, ld, c0, nvec):
        _axpy(acc[:PANEL_LANES * nvec], x, _widened(x, w, ld, c0, nvec), PANEL_LANES * nvec, 0)

    _dot8 = _dot8_lanes

# The widest panel: 8 vectors, 64 columns (128 with AVX-512). The columns left after the
# widest panels are one panel as wide as they are: where they are a whole number of vectors,
# a plain one (_matvec_rest); else _matvec_tail's, its last vector masked (where MASKED_TAIL;
# elsewhere panels of 4, 2 and 1 vectors, then _axpy).
PANEL_COLUMNS = 8 * PANEL_LANES

# A product keeps its sums in registers (_panel) up to this many output columns; wider
# ones are faster in _axpy's row-by-row sweep. A w_hh that wide is blocked (_matvec_blocked),
# so this bound applies to w_ih.
PANEL_MAX_COLUMNS = 320

# The blocks of a blocked w_hh (pack_recurrent): one widest panel each.
RECURRENT_BLOCK_COLUMNS = PANEL_COLUMNS


def _of_width(panel):
    """panel(acc, x, w, ld, c0, nvec) for nvec in 1..8 given at run time: the intrinsics take
    their width as a literal, hence one call per width."""
    @njit(**KERNEL, inline="always")
    def of_width(acc, x, w, ld, c0, nvec):
        if nvec == 1:
            panel(acc, x, w, ld, c0, 1)
        elif nvec == 2:
            panel(acc, x, w, ld, c0, 2)
        elif nvec == 3:
            panel(acc, x, w, ld, c0, 3)
        elif nvec == 4:
            panel(acc, x, w, ld, c0, 4)
        elif nvec == 5:
            panel(acc, x, w, ld, c0, 5)
        elif nvec == 6:
            panel(acc, x, w, ld, c0, 6)
        elif nvec == 7:
            panel(acc, x, w, ld, c0, 7)
        elif nvec == 8:
            panel(acc, x, w, ld, c0, 8)
    return of_width


_panel_of_width = _of_width(_panel)
_masked_panel_of_width = _of_width(_panel_masked)
_bf16_panel_of_width = _of_width(_panel_bf16)


# Not inlined, unlike the rest of the cell: its panel widths, inlined at the three places
# the cell multiplies, would make the step and sequence kernels compile much longer, for no
# faster step than one call per product.
@njit(**KERNEL)
def _matvec(acc, x, w, ld, c0, reverse):
    # acc (n,) += x @ W[:, c0:c0+n], bitwise as _axpy: panels of 8 vectors of PANEL_LANES
    # columns with their sums in registers, then one for the columns left (_matvec_rest).
    #
    # reverse: the same panels in the opposite order, for the same results (the columns are
    # independent sums). The cell alternates the order from one time step to the next, so that
    # each step starts on the panels the previous one read last, which are still in L1: past
    # H~40 (W_hh over ~20 KB) the matrix no longer fits L1 and, read in one order, every step
    # would fetch all of it from L2 again. Past PANEL_MAX_COLUMNS the panels are slower than
    # _axpy's sweep even in alternating order, and _axpy's rows cannot be reversed without
    # changing the order of the sums.
    n = acc.shape[0]
    if n > PANEL_MAX_COLUMNS:
        _axpy(acc, x, w, ld, c0)
        return
    if n < PANEL_COLUMNS:
        # the loop below would do the same in one piece, but its branch makes the product
        # measurably slower at these sizes
        _matvec_rest(acc, x, w, ld, c0, 0)
        return
    n_full = n - n % PANEL_COLUMNS
    pieces = n_full // PANEL_COLUMNS + (1 if n_full < n else 0)    # full panels, the rest
    for i in range(pieces):
        k = PANEL_COLUMNS * (pieces - 1 - i if reverse else i)
        if k < n_full:
            _panel(acc[k:k + PANEL_COLUMNS], x, w, ld, c0 + k, 8)
        else:
            _matvec_rest(acc, x, w, ld, c0, n_full)


@njit(**KERNEL, inline="always")
def _matvec_rest(acc, x, w, ld, c0, j):
    # _matvec for the columns from j on (fewer than PANEL_COLUMNS): where they are a whole
    # number of vectors, one _panel that wide, inlined where the product is; else
    # _matvec_tail, a call. At H=16 and 32 every product is this whole panel (3H = 3 and 6
    # vectors of 16), where _matvec_tail's call and its masked panel's set-up (masks, rows
    # that may be loaded whole) would be a good part of a time step. The price is a longer
    # compile of the kernels that inline it.
    n = acc.shape[0]
    L = PANEL_LANES
    if (n - j) % L != 0:
        _matvec_tail(acc, x, w, ld, c0, j)
        return
    _panel_of_width(acc[j:], x, w, ld, c0 + j, (n - j) // L)


# Not inlined: its eight panel widths, inlined where the products call it, make the sequence
# kernel compile markedly longer for no faster step.
@njit(**KERNEL)
def _matvec_tail(acc, x, w, ld, c0, j):
    # _matvec for the columns from j on (fewer than PANEL_COLUMNS). Where MASKED_TAIL: one
    # panel as wide as they are, its last vector masked: faster than panels of 4, 2 and 1
    # vectors and _axpy for the last columns.
    n = acc.shape[0]
    L = PANEL_LANES
    if not MASKED_TAIL:             # (a constant: numba compiles one branch or the other)
        if j + 4 * L <= n:
            _panel(acc[j:j + 4 * L], x, w, ld, c0 + j, 4)
            j += 4 * L
        if j + 2 * L <= n:
            _panel(acc[j:j + 2 * L], x, w, ld, c0 + j, 2)
            j += 2 * L
        if j + L <= n:
            _panel(acc[j:j + L], x, w, ld, c0 + j, 1)
            j += L
        if j < n:
            _axpy(acc[j:], x, w, ld, c0 + j)
        return
    _masked_panel_of_width(acc[j:], x, w, ld, c0 + j, (n - j + L - 1) // L)


@njit(**KERNEL)
def _matmul(acc, a0, xs, w, ld, c0, n):
    # acc[:, a0:a0+n] += xs @ W[:, c0:c0+n];   acc (N, >= a0+n), xs (N, m), W (m, ld) flat in w.
    # Row by row, the same sums in the same order as _axpy, so one sequence, a batch and a
    # single step agree bitwise. For N > 1, each four rows of w are applied to a block of acc
    # rows that sits in L1, so w is read from memory once per block rather than once per row.
    N = acc.shape[0]
    if N == 1:
        _axpy(acc[0, a0:a0 + n], xs[0], w, ld, c0)
        return
    m = xs.shape[1]
    nb = max(1, 2048 // n)              # acc rows per block: 8 KB
    for b0 in range(0, N, nb):
        b1 = min(N, b0 + nb)
        i = 0
        while i + 4 <= m:
            r = i * ld + c0
            w0 = w[r:r + n]
            w1 = w[r + ld:r + ld + n]
            w2 = w[r + 2 * ld:r + 2 * ld + n]
            w3 = w[r + 3 * ld:r + 3 * ld + n]
            for b in range(b0, b1):
                x = xs[b]
                _rows4(acc[b, a0:a0 + n], x[i], x[i + 1], x[i + 2], x[i + 3], w0, w1, w2, w3)
            i += 4
        while i < m:
            r = i * ld + c0
            w0 = w[r:r + n]
            for b in range(b0, b1):
                _rows1(acc[b, a0:a0 + n], xs[b, i], w0)
            i += 1


@njit(**KERNEL)
def _matmul_panels(acc, a0, xs, w, ld, c0, n, reverse):
    # _matmul (bitwise the same) for rows of xs that are contiguous, through _panel: one panel
    # of columns at a time for all N rows, so that its strip of w stays in L1 while the N rows
    # go through it, and each row's sums stay in registers across all rows of w. reverse:
    # the strips in the other order, as in _matvec; one call site per panel width, as each is
    # compiled anew (two loops, one per order, would compile the sequence kernel markedly
    # longer). (The reset-before cell's second product, whose input rows
    # are strided, stays on _matmul.)
    N = acc.shape[0]
    if n > PANEL_MAX_COLUMNS:
        _matmul(acc, a0, xs, w, ld, c0, n)
        return
    n_full = n - n % PANEL_COLUMNS
    strips = n_full // PANEL_COLUMNS + (1 if n_full < n else 0)   # full panels, the rest
    for i in range(strips):
        j = PANEL_COLUMNS * (strips - 1 - i if reverse else i)
        if j < n_full:
            for b in range(N):
                _panel(acc[b, a0 + j:a0 + j + PANEL_COLUMNS], xs[b], w, ld, c0 + j, 8)
        else:
            for b in range(N):
                _matvec_rest(acc[b, a0:a0 + n], xs[b], w, ld, c0, n_full)


@njit(**KERNEL, inline="always")
def _block_of(w, m, n, k):
    # block k of W (m, n) blocked: its first column, its width, its row length (the width
    # padded, aligned), its (m, row length) weights, flat
    c = RECURRENT_BLOCK_COLUMNS * k
    width = min(RECURRENT_BLOCK_COLUMNS, n - c)
    ld = aligned(width)
    return c, width, ld, w[m * c:m * c + m * ld]


@njit(**KERNEL)
def _matvec_blocked(acc, x, w, reverse, bf16):
    # acc (n,) += x @ W, W (m, n) blocked (pack_recurrent): each full block in one _chain
    # panel (_axpy_chain's order), the last, narrower one as _matvec_tail (_axpy's order).
    # reverse: the blocks in the opposite order, as in _matvec.
    #
    # Against _matvec on a row-major W it brings the product close to one read of W from L2
    # (tools/bench_floor.py; figures in BENCHMARKS.md). Both changes are needed: blocked but in
    # _rows4's order, or row-major in this order, gains nothing. Where W fits in L1 (H <= 64)
    # it is slower: there the latency of one long chain of FMAs per column shows, as it does
    # in narrow blocks (1-4 vectors: too few chains side by side; fewer columns than a vector:
    # the sums in memory), which is why the last block keeps _rows4's order.
    #
    # Up to RECURRENT_BLOCKED_ABOVE rows (a bfloat16 W_hh, blocked from RECURRENT_BF16_ABOVE)
    # the full blocks keep _rows4's order too: that of float32's row-major panels there.
    #
    # bf16: the blocks that are whole vectors wide hold bfloat16 words (pack_recurrent), half
    # the bytes to read, widened exactly in registers (_block_bf16): the same sums as float32's
    # on the widened weights.
    n = acc.shape[0]
    m = x.shape[0]
    P = RECURRENT_BLOCK_COLUMNS
    blocks = (n + P - 1) // P
    chain = m > RECURRENT_BLOCKED_ABOVE             # else every block in _rows4's order
    for i in range(blocks):
        c, width, ld, block = _block_of(w, m, n, i if not reverse else blocks - 1 - i)
        if bf16 and bf16_block(width, P):
            _block_bf16(acc[c:c + width], x, block, chain and width == P)
        elif chain and width == P:
            _chain(acc[c:c + P], x, block, P, 0, 8)
        else:
            _matvec_tail(acc[c:c + width], x, block, ld, np.int64(0), np.int64(0))


@njit(**KERNEL, inline="always")
def _block_bf16(acc, x, words, chain):
    # acc (n,) += x @ W, W (m, n) one block of bfloat16 words (pack_bf16_block), n a whole
    # number of vectors: in _axpy_chain's order (chain: a full block) or else in _axpy's
    nvec = acc.shape[0] // PANEL_LANES
    if chain:
        _chain_bf16(acc, x, words, RECURRENT_BLOCK_COLUMNS // 2, 0, 8)
    else:
        _bf16_panel_of_width(acc, x, words, bf16_words(nvec, PANEL_LANES), 0, nvec)


@njit(**KERNEL)
def _matmul_blocked(acc, a0, xs, m, w, n, reverse, bf16):
    # acc[:, a0:a0+n] += xs[:, :m] @ W, W (m, n) blocked: _matvec_blocked for each row of
    # acc, bitwise the same, but a strip of 32 KB of a full block at a time (its rows i0..i1)
    # for all rows of acc, so that W is read from L2 once per step for the whole batch rather
    # than once per row (a block of a large W does not fit in L1). Each row's sums go to
    # memory between strips and come back exactly, so the order of the sums is unchanged
    # (strips of a multiple of 4 rows: _rows4's groups stay whole). A float32 block in
    # _rows4's order (the last, narrower one) goes by panels while it fits in L1, else by
    # _matmul, as the row-major w_hh did past PANEL_MAX_COLUMNS (by panels, each row of the
    # batch would read it from L2 again). Rows of xs need only be contiguous up to m: the
    # reset-before cell's second product reads its inputs, r * h, from acc itself.
    N = acc.shape[0]
    P = RECURRENT_BLOCK_COLUMNS
    blocks = (n + P - 1) // P
    for i in range(blocks):
        c, width, ld, block = _block_of(w, m, n, i if not reverse else blocks - 1 - i)
        half = bf16 and bf16_block(width, P)
        chain = width == P and m > RECURRENT_BLOCKED_ABOVE      # as in _matvec_blocked
        if not (half or chain) and m * ld <= 8192:      # fits in L1 (32 KB): by panels
            for b in range(N):
                _matvec_tail(acc[b, a0 + c:a0 + c + width], xs[b, :m], block, ld,
                             np.int64(0), np.int64(0))
            continue
        if not (half or chain):                         # else read once per block of rows
            # (the block as w from m * c rather than as block from a literal 0, which numba
            # would compile _matmul anew for)
            _matmul(acc, a0 + c, xs[:, :m], w, ld, m * c, width)
            continue
        strip = 8192 // width // 4 * 4                  # rows of W per strip: 32 KB of float32
        words = bf16_words(width // PANEL_LANES, PANEL_LANES) if half else P   # (16 in bf16)
        for i0 in range(0, m, strip):
            i1 = min(m, i0 + strip)
            rows = block[i0 * words:i1 * words]
            for b in range(N):
                if half:
                    _block_bf16(acc[b, a0 + c:a0 + c + width], xs[b, i0:i1], rows, chain)
                else:
                    _chain(acc[b, a0 + c:a0 + c + P], xs[b, i0:i1], rows, P, 0, 8)


# The recurrent products in the blocked layout: [r | z] and [n], each blocked on its own.
@njit(**KERNEL, inline="always")
def _recurrent_parts(w_hh, H):
    # a blocked w_hh's [r | z] (H, 2H) and [n] (H, H), each with its padding
    rz = H * aligned(2 * H)
    return w_hh[:rz], w_hh[rz:rz + H * aligned(H)]


@njit(**KERNEL)
def _matvec_recurrent_blocked(acc, x, w_hh, reverse, bf16):
    # matvec for a blocked w_hh
    H = x.shape[0]
    n = acc.shape[0]
    w_rz, w_n = _recurrent_parts(w_hh, H)
    if n == H:
        _matvec_blocked(acc, x, w_n, reverse, bf16)
    elif n == 2 * H:
        _matvec_blocked(acc, x, w_rz, reverse, bf16)
    elif reverse:                                   # all three: the blocks in the other order
        _matvec_blocked(acc[2 * H:], x, w_n, reverse, bf16)
        _matvec_blocked(acc[:2 * H], x, w_rz, reverse, bf16)
    else:
        _matvec_blocked(acc[:2 * H], x, w_rz, reverse, bf16)
        _matvec_blocked(acc[2 * H:], x, w_n, reverse, bf16)


@njit(**KERNEL, inline="always")
def _matmul_recurrent_blocked(acc, xs, w_hh, n, reverse, bf16):
    # matmul for a blocked w_hh
    H = acc.shape[1] // 3
    c0 = 2 * H if n == H else 0
    w_rz, w_n = _recurrent_parts(w_hh, H)
    if n == H:
        _matmul_blocked(acc, c0, xs, H, w_n, H, reverse, bf16)
    elif n == 2 * H:
        _matmul_blocked(acc, c0, xs, H, w_rz, n, reverse, bf16)
    elif reverse:
        _matmul_blocked(acc, 2 * H, xs, H, w_n, H, reverse, bf16)
        _matmul_blocked(acc, c0, xs, H, w_rz, 2 * H, reverse, bf16)
    else:
        _matmul_blocked(acc, c0, xs, H, w_rz, 2 * H, reverse, bf16)
        _matmul_blocked(acc, 2 * H, xs, H, w_n, H, reverse, bf16)


@njit(**KERNEL, inline="always")
def _dot(a, b):
    # sum(a * b) in a fixed order, without relying on reassociation: eight running sums
    # (independent chains, so no FMA latency chain; one vector register, _dot8), then a
    # fixed tree, then the tail.
    n = a.shape[0]
    n8 = n - n % 8
    s = _dot8(a[:n8], b[:n8])
    for k in range(n8, n):
        s += a[k] * b[k]
    return s


# ---- a step on the row Python hands over ----------------------------------------------------
# Model.step() passes x as it comes (a row of an array, a column, a fresh reading): typed here
# with any strides, float32 or float64, so that Python checks only its dtype and dimensions
# and converts nothing. The products read x in vectors, so it is copied first (rounded to
# float32 as NumPy's astype rounds) into the last I floats of the model array
# (step_model_size counts them). It keeps the GIL: releasing and taking it back costs a sizeable
# part of a small model's step, and the step is too short for another thread to use the gap.

@njit(**dict(KERNEL, nogil=False))
def gru_step_strided(out, x, model):
    """gru_step for x (I,) of any strides. Returns False, having touched nothing, when x does
    not have I values."""
    I = np.int64(model[_H_INPUT])
    if x.shape[0] != I:
        return False
    contiguous = model[model.shape[0] - I:]
    for i in range(I):
        contiguous[i] = np.float32(x[i])
    gru_step(out, contiguous, model)
    return True
