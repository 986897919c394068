"""The kernels of :mod:`edgegru.kernels` in vectorised NumPy, for machines without Numba.

Same signatures, same ``params`` layout (but w_hh never blocked), same results within float32
rounding; used when numba cannot be imported or ``EDGEGRU_NO_JIT=1`` is set. Slower per call,
but no compiler needed.
"""
import numpy as np

from edgegru import kernels
from edgegru.kernels import HEAD_SIGMOID, STEP_HEADER, block_offsets, head_offset

_f32 = np.float32
# w_hh stays row-major here (see kernels.pack_recurrent): one matrix product per step.
RECURRENT_BLOCK_COLUMNS = 0


def entry_point(kernel, args):
    """As :func:`edgegru.kernels.entry_point`: here the kernel is already a plain function."""
    return kernel


def _sigmoid(x):
    return _f32(0.5) * np.tanh(_f32(0.5) * x) + _f32(0.5)


def _gate(x, hard_gates, alpha, beta):
    if hard_gates:
        # clip(alpha x + beta, 0, 1) with NaN passing through, as in the compiled kernel
        g = alpha * x + beta
        return np.where(g < 0, _f32(0), np.where(g > 1, _f32(1), g))
    return _sigmoid(x)


def _blocks(params, l, d, input_size, H, D):
    # Views of one block's weights: w_ih (in, 3H), b_x (3H,), w_hh (H, 3H), b_hn (H,), the
    # matrices' rows without their padding
    w_ih, b_x, w_hh, b_hn, in_size = block_offsets(l, d, input_size, H, D)
    G, S = 3 * H, kernels.row_stride(H)
    return (params[w_ih:b_x].reshape(in_size, S)[:, :G], params[b_x:b_x + G],
            params[w_hh:w_hh + H * S].reshape(H, S)[:, :G], params[b_hn:b_hn + H])


def _cell(h, xp, w_hh, b_hn, H, reset_after, gate):
    # h (H,) -> new h; xp (3H,) the input projection of this step; gate: (hard, alpha, beta).
    if reset_after:
        gh = h @ w_hh
        r = _gate(xp[:H] + gh[:H], *gate)
        z = _gate(xp[H:2 * H] + gh[H:2 * H], *gate)
        n = np.tanh(xp[2 * H:] + r * (gh[2 * H:] + b_hn))
    else:
        gh = h @ w_hh[:, :2 * H]
        r = _gate(xp[:H] + gh[:H], *gate)
        z = _gate(xp[H:2 * H] + gh[H:], *gate)
        n = np.tanh(xp[2 * H:] + (r * h) @ w_hh[:, 2 * H:])
    return n + z * (h - n)


def _head(src, params, w_head, output_size, K, activation):
    W = params[w_head:w_head + output_size * K].reshape(output_size, K)
    b = params[w_head + output_size * K:w_head + output_size * (K + 1)]
    y = W @ src + b
    return _sigmoid(y) if activation == HEAD_SIGMOID else y


def gru_step(out, x, model):
    """model: [header | params | work | x], as for the compiled kernel."""
    k = kernels
    input_size, H, num_layers, output_size, head_activation, P = (
        int(model[i]) for i in (k._H_INPUT, k._H_HIDDEN, k._H_LAYERS, k._H_OUTPUT, k._H_HEAD,
                                k._H_PARAMS))
    reset_after = model[k._H_RESET_AFTER] != 0
    gate = (model[k._H_HARD_GATES] != 0, model[k._H_ALPHA], model[k._H_BETA])
    params = model[STEP_HEADER:STEP_HEADER + P]
    work = model[STEP_HEADER + P:]
    layer_in = x
    for l in range(num_layers):
        w_ih, b_x, w_hh, b_hn = _blocks(params, l, 0, input_size, H, 1)
        h = work[l * H:(l + 1) * H]
        h[:] = _cell(h, layer_in @ w_ih + b_x, w_hh, b_hn, H, reset_after, gate)
        layer_in = h
    if output_size > 0:
        out[:] = _head(layer_in, params, head_offset(input_size, H, num_layers, 1),
                       output_size, H, head_activation)
    else:
        out[:] = layer_in


def gru_step_strided(out, x, model):
    """As the compiled kernel: False, having touched nothing, when x does not have I values."""
    if x.shape[0] != int(model[kernels._H_INPUT]):
        return False
    gru_step(out, np.asarray(x, np.float32), model)
    return True


def gru_sequence(Y, X, h, params, ws, input_size, hidden_size, num_layers, num_directions,
                 output_size, reset_after, hard_gates, gate_alpha, gate_beta, head_activation):
    """One sequence: Y (T, O), X (T, I), h (L*D, H) in and out."""
    T = X.shape[0]
    H = hidden_size
    D = num_directions
    src = X
    for l in range(num_layers):
        dst = np.empty((T, D * H), dtype=np.float32)
        for d in range(D):
            k = l * D + d
            w_ih, b_x, w_hh, b_hn = _blocks(params, l, d, input_size, H, D)
            state = h[k].copy()
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                # row by row, as gru_step does: a (T, I) matmul would sum in another order,
                # and chunked runs would then differ from one run in the last bit
                state = _cell(state, src[t] @ w_ih + b_x, w_hh, b_hn, H, reset_after,
                              (hard_gates, gate_alpha, gate_beta))
                dst[t, d * H:(d + 1) * H] = state
            h[k] = state
        src = dst
    if output_size > 0:
        w_head = head_offset(input_size, H, num_layers, D)
        for t in range(T):
            Y[t] = _head(src[t], params, w_head, output_size, D * H, head_activation)
    else:
        Y[:] = src


def gru_sequences(Y, X, h, params, ws, input_size, hidden_size, num_layers, num_directions,
                  output_size, reset_after, hard_gates, gate_alpha, gate_beta, head_activation,
                  recurrent_bf16=False):
    """B sequences: Y (B, T, O), X (B, T, I), h (L*D, B, H) in and out. recurrent_bf16 means
    nothing here: w_hh is row-major float32 (its values rounded to bfloat16 already)."""
    for b in range(X.shape[0]):
        gru_sequence(Y[b], X[b], h[:, b], params, ws, input_size, hidden_size, num_layers,
                     num_directions, output_size, reset_after, hard_gates, gate_alpha,
                     gate_beta, head_activation)
