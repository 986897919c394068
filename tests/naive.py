"""Slow, obvious GRU in float64 NumPy, written from the equations, for the kernels to match.

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))     reset_after
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)     reset_before
    h = (1 - z) * n + z * h

with config.gate_activation == "hard_sigmoid", the gates use clip(alpha x + beta, 0, 1) instead.
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def cell(x, h, w_ih, w_hh, b_ih, b_hh, reset_after, gate=sigmoid):
    H = h.shape[0]
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    r = gate(W_ir @ x + b_ir + W_hr @ h + b_hr)
    z = gate(W_iz @ x + b_iz + W_hz @ h + b_hz)
    if reset_after:
        n = np.tanh(W_in @ x + b_in + r * (W_hn @ h + b_hn))
    else:
        n = np.tanh(W_in @ x + b_in + W_hn @ (r * h) + b_hn)
    return (1 - z) * n + z * h


def gru(config, arrays, X, h0=None):
    """Y (T, output_size), h_n (L*D, H) for one sequence X (T, I), in float64."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    L, D = config.num_layers, config.num_directions
    # h_n: one row per layer and direction (rows of different lengths when the layers differ)
    h_n = [np.zeros(config.layer_sizes[k // D]) for k in range(L * D)] if h0 is None \
        else list(np.array(h0, dtype=np.float64))
    seq = np.asarray(X, dtype=np.float64)
    T = seq.shape[0]
    gate = sigmoid
    if config.gate_activation == "hard_sigmoid":
        def gate(v):
            return hard_sigmoid(v, config.gate_alpha, config.gate_beta)
    for l, H in enumerate(config.layer_sizes):
        out = np.zeros((T, D * H))
        for d in range(D):
            p = f"l{l}." + ("reverse." if d else "")
            h = h_n[l * D + d]
            for t in (range(T) if d == 0 else reversed(range(T))):
                h = cell(seq[t], h, a[p + "w_ih"], a[p + "w_hh"], a[p + "b_ih"], a[p + "b_hh"],
                         config.reset_after, gate)
                out[t, d * H:(d + 1) * H] = h
            h_n[l * D + d] = h
        seq = out
    for prefix, _, act in config.head_layers:        # dense layers, then the activation
        seq = activation(seq @ a[prefix + "weight"].T + a[prefix + "bias"], act, config)
    if config.head_on == "last":
        seq = seq[-1]
    return seq, h_n if config.hidden_sizes else np.array(h_n)


def activation(v, name, config):
    if name == "relu":
        return np.maximum(v, 0.0)
    if name == "tanh":
        return np.tanh(v)
    if name == "sigmoid":
        return sigmoid(v)
    if name == "hard_sigmoid":
        return hard_sigmoid(v, config.head_alpha, config.head_beta)
    return v
