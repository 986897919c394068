"""The compute kernels: pure functions over float32 arrays, nothing else.

Every kernel takes its outputs first, then inputs, then sizes, and never allocates: the buffers
are owned by :class:`edgegru.model.Model` and made once when the model is built.

Weights live in one flat float32 array (``params``), laid out by :func:`block_offsets`, one block
per layer and direction (``l`` major, then ``d``)::

    w_ih   (in_size, 3H)   transposed input weights, columns [r | z | n]
    b_x    (3H,)           [b_ir + b_hr | b_iz + b_hz | b_in]   (+ b_hn when reset_before)
    w_hh   (H, 3H)         transposed hidden weights, columns [r | z | n]
    b_hn   (H,)            hidden bias of the candidate (zero when reset_before: folded into b_x)

followed by the optional linear head ``w_head (O, K)`` and ``b_head (O,)``, K = H * directions.
Transposed weights make every matrix-vector product a sum of scaled rows ("axpy"): the inner loop
runs over contiguous output elements, which LLVM vectorises without reassociating a reduction.

The GRU, with r, z, n the reset gate, update gate and candidate::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      reset_after (PyTorch, cuDNN, ONNX lbr=1)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      reset_before (Cho 2014, ONNX default)
    h' = (1 - z) * n + z * h

One cell (:func:`_cell`) serves the step and the sequence paths, so they cannot disagree.
"""
import numpy as np

from edgegru._jit import njit

# Lets LLVM contract a*b+c into FMA and reassociate sums, but not assume the absence of NaN/inf
# ("nnan", "ninf"): sensor data has NaN, and a NaN must propagate, not be optimised away.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": float division by zero gives inf/NaN instead of raising. Numba's default
# (Python's ZeroDivisionError) puts a branch in every division, and that alone stops LLVM from
# vectorising the activations (0.54 vs 4.2 ns per tanh here).
KERNEL = dict(fastmath=FASTMATH, error_model="numpy", cache=True)

_f32 = np.float32
_HALF = _f32(0.5)
_ONE = _f32(1.0)

# tanh as a rational function p(x)/q(x) on [-c, c] (the float32 approximation used by Eigen):
# only multiply, add, divide and compare, so it vectorises on x86 and ARM alike, unlike a call to
# libm's tanhf. Max abs error against float64 tanh: 2.6e-7, reached where it saturates
# (tests/test_kernels.py checks 3e-7; sigmoid, built on it, 1.5e-7).
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

HEAD_LINEAR = 0
HEAD_SIGMOID = 1


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


@njit(cache=True)
def block_offsets(l, d, input_size, hidden_size, num_directions):
    """Where block (layer l, direction d) lives in ``params``: (w_ih, b_x, w_hh, b_hn, in_size)."""
    G = 3 * hidden_size
    K = num_directions * hidden_size
    first = input_size * G + G + hidden_size * G + hidden_size      # one block of layer 0
    later = K * G + G + hidden_size * G + hidden_size               # one block of layer >= 1
    if l == 0:
        in_size = input_size
        w_ih = d * first
    else:
        in_size = K
        w_ih = num_directions * first + ((l - 1) * num_directions + d) * later
    b_x = w_ih + in_size * G
    w_hh = b_x + G
    b_hn = w_hh + hidden_size * G
    return w_ih, b_x, w_hh, b_hn, in_size


@njit(cache=True)
def head_offset(input_size, hidden_size, num_layers, num_directions):
    """Start of w_head in ``params`` (b_head follows it); also the size without a head."""
    w_ih, b_x, w_hh, b_hn, in_size = block_offsets(
        num_layers - 1, num_directions - 1, input_size, hidden_size, num_directions)
    return b_hn + hidden_size


def params_size(input_size, hidden_size, num_layers, num_directions, output_size):
    """Length of ``params`` for these sizes (output_size 0: no head)."""
    size = head_offset(input_size, hidden_size, num_layers, num_directions)
    return size + output_size * (num_directions * hidden_size + 1)


# Indexing note: the inner loops index array *views* with the bare loop variable (a[j], never
# a[a0 + j]). An index that might be negative makes numba emit wraparound code, which stops LLVM
# from vectorising the loop: the same axpy ran at 1.9 GFLOP/s written with offsets and at
# 38 GFLOP/s written with views (H=64, this machine).

@njit(**KERNEL, inline="always")
def _axpy_rows(acc, x, w, c0):
    # acc (n,) += W^T x, with x (m,) and W = w[:, c0:c0+n], w (m, >= c0+n) row-major.
    # Four rows per pass: one load/store of acc per four multiply-adds.
    n = acc.shape[0]
    m = x.shape[0]
    i = 0
    while i + 4 <= m:
        x_0 = x[i]
        x_1 = x[i + 1]
        x_2 = x[i + 2]
        x_3 = x[i + 3]
        w_0 = w[i, c0:c0 + n]
        w_1 = w[i + 1, c0:c0 + n]
        w_2 = w[i + 2, c0:c0 + n]
        w_3 = w[i + 3, c0:c0 + n]
        for j in range(n):
            acc[j] += (x_0 * w_0[j] + x_1 * w_1[j]) + (x_2 * w_2[j] + x_3 * w_3[j])
        i += 4
    while i < m:
        x_i = x[i]
        w_i = w[i, c0:c0 + n]
        for j in range(n):
            acc[j] += x_i * w_i[j]
        i += 1


@njit(**KERNEL)
def _input_projection(xp, x, w_ih, b_x):
    # xp (3H,) = W_ih^T x + b_x;   x (in,), w_ih (in, 3H), b_x (3H,)
    for j in range(xp.shape[0]):
        xp[j] = b_x[j]
    _axpy_rows(xp, x, w_ih, 0)


@njit(**KERNEL)
def _cell(h, xp, acc, w_hh, b_hn, reset_after):
    # One GRU time step of one layer and direction, in place on h (H,).
    # xp (3H,): this step's input projection (from _input_projection); acc (3H,): scratch;
    # w_hh (H, 3H); b_hn (H,).
    H = h.shape[0]
    acc_r = acc[:H]
    acc_z = acc[H:2 * H]
    acc_n = acc[2 * H:]
    xp_n = xp[2 * H:]
    for j in range(2 * H):
        acc[j] = xp[j]
    if reset_after:
        for j in range(H):
            acc_n[j] = b_hn[j]
        _axpy_rows(acc, h, w_hh, 0)                 # [r | z | W_hn h + b_hn] pre-activations
        for j in range(H):
            r = sigmoid(acc_r[j])
            z = sigmoid(acc_z[j])
            n = tanh(xp_n[j] + r * acc_n[j])
            h[j] = n + z * (h[j] - n)
    else:
        _axpy_rows(acc[:2 * H], h, w_hh, 0)         # r, z pre-activations
        for j in range(H):
            acc_r[j] = sigmoid(acc_r[j]) * h[j]     # r * h (r is not needed again)
            acc_z[j] = sigmoid(acc_z[j])
            acc_n[j] = xp_n[j]
        _axpy_rows(acc_n, acc_r, w_hh, 2 * H)       # += W_hn (r * h)
        for j in range(H):
            n = tanh(acc_n[j])
            h[j] = n + acc_z[j] * (h[j] - n)


@njit(**KERNEL)
def _head(y, h, w_head, b_head, activation):
    # y (O,) = act(W_head h + b_head);  h (K,), w_head (O, K)
    for o in range(y.shape[0]):
        w = w_head[o]
        s = np.float32(0.0)
        for k in range(h.shape[0]):
            s += w[k] * h[k]
        s += b_head[o]
        if activation == HEAD_SIGMOID:
            s = sigmoid(s)
        y[o] = s


@njit(cache=True, inline="always")
def _block(params, l, d, input_size, hidden_size, num_directions):
    # Views of one block: w_ih (in, 3H), b_x (3H,), w_hh (H, 3H), b_hn (H,)
    w_ih, b_x, w_hh, b_hn, in_size = block_offsets(l, d, input_size, hidden_size, num_directions)
    G = 3 * hidden_size
    return (params[w_ih:b_x].reshape((in_size, G)), params[b_x:w_hh],
            params[w_hh:b_hn].reshape((hidden_size, G)), params[b_hn:b_hn + hidden_size])


@njit(cache=True, inline="always")
def _head_views(params, input_size, hidden_size, num_layers, num_directions, output_size):
    # w_head (O, K), b_head (O,)
    K = hidden_size * num_directions
    start = head_offset(input_size, hidden_size, num_layers, num_directions)
    end = start + output_size * K
    return params[start:end].reshape((output_size, K)), params[end:end + output_size]


@njit(**KERNEL)
def gru_step(out, x, params, work, input_size, hidden_size, num_layers, output_size,
             reset_after, head_activation):
    """One time step of a unidirectional stack, updating the state in place.

    out (O,)   x (I,)   params: see the module doc
    work (L*H + 6H,): [h of each layer | xp (3H) | acc (3H)], owned by the model.
    output_size == 0 means no head: out (H,) receives the top layer's hidden state.
    """
    H = hidden_size
    G = 3 * H
    s = num_layers * H
    xp = work[s:s + G]
    acc = work[s + G:s + 2 * G]
    layer_in = x
    for l in range(num_layers):
        w_ih, b_x, w_hh, b_hn = _block(params, l, 0, input_size, H, 1)
        h = work[l * H:(l + 1) * H]
        _input_projection(xp, layer_in, w_ih, b_x)
        _cell(h, xp, acc, w_hh, b_hn, reset_after)
        layer_in = h
    if output_size > 0:
        w_head, b_head = _head_views(params, input_size, H, num_layers, 1, output_size)
        _head(out, layer_in, w_head, b_head, head_activation)
    else:
        for j in range(H):
            out[j] = layer_in[j]


@njit(cache=True)
def step_workspace_size(hidden_size, num_layers):
    return num_layers * hidden_size + 6 * hidden_size


@njit(cache=True)
def sequence_workspace_size(T, hidden_size, num_directions):
    G = 3 * hidden_size
    K = num_directions * hidden_size
    return T * (G + 2 * K) + G


@njit(**KERNEL)
def gru_sequence(Y, X, h, params, ws, input_size, hidden_size, num_layers, num_directions,
                 output_size, reset_after, head_activation):
    """A whole sequence through the stack: Y (T, O) from X (T, I), state h (L*D, H) in and out.

    For each layer, the input projection of all T steps is computed first (its weights stay in
    cache), then the recurrence runs over it. The reverse direction of a bidirectional layer
    starts from its row of h at the end of the sequence, as in PyTorch.
    ws: workspace of at least sequence_workspace_size(T, H, D) floats.
    """
    T = X.shape[0]
    H = hidden_size
    G = 3 * H
    D = num_directions
    K = D * H
    xp = ws[:T * G].reshape((T, G))
    seq_a = ws[T * G:T * (G + K)].reshape((T, K))
    seq_b = ws[T * (G + K):T * (G + 2 * K)].reshape((T, K))
    acc = ws[T * (G + 2 * K):T * (G + 2 * K) + G]
    src = X
    for l in range(num_layers):
        dst = seq_a if l % 2 == 0 else seq_b
        for d in range(D):
            w_ih, b_x, w_hh, b_hn = _block(params, l, d, input_size, H, D)
            hk = h[l * D + d]
            for t in range(T):
                _input_projection(xp[t], src[t], w_ih, b_x)
            for s in range(T):
                t = s if d == 0 else T - 1 - s
                _cell(hk, xp[t], acc, w_hh, b_hn, reset_after)
                dst[t, d * H:(d + 1) * H] = hk
        src = dst
    if output_size > 0:
        w_head, b_head = _head_views(params, input_size, H, num_layers, D, output_size)
        for t in range(T):
            _head(Y[t], src[t], w_head, b_head, head_activation)
    else:
        for t in range(T):
            Y[t] = src[t]


@njit(**KERNEL)
def gru_sequence_batch(Y, X, h, params, ws, input_size, hidden_size, num_layers,
                       num_directions, output_size, reset_after, head_activation):
    """B independent sequences: Y (B, T, O), X (B, T, I), h (B, L*D, H) in and out."""
    for b in range(X.shape[0]):
        gru_sequence(Y[b], X[b], h[b], params, ws, input_size, hidden_size, num_layers,
                     num_directions, output_size, reset_after, head_activation)
