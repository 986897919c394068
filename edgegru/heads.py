"""Heads deeper than one linear layer: dense layers with elementwise activations after the GRU.

A single linear (or linear + sigmoid) head runs fused into the GRU kernels; everything else
(``GRU -> Linear -> ReLU -> Linear``, Keras ``Dense(32, "relu")`` then ``Dense(1)``, a last layer
with tanh) runs here, on the top layer's output, as a chain::

    v_0 = x (K,)          K = hidden_size * directions
    v_i = act_i(W_i v_{i-1} + b_i)       W_i (n_i, n_{i-1}) row-major, b_i (n_i,)
    y   = v_n (O,)

with ``act`` one of :data:`ACTIVATIONS` (``hard_sigmoid`` is ``clip(alpha x + beta, 0, 1)``,
one alpha and beta for the head). The weights sit in one flat float32 array
``[W_1 | b_1 | W_2 | b_2 | ...]`` and the sizes in an int64 table ``layers (n, 3)``: inputs,
outputs, activation of each layer. :func:`head_step` and :func:`head_rows` are the kernels
(in :mod:`edgegru.kernels`, beside the activations they share with the fused head),
:func:`numpy_head_rows` their NumPy fallback.
"""
import numpy as np

from edgegru import kernels

ACTIVATIONS = {"linear": kernels.DENSE_LINEAR, "relu": kernels.DENSE_RELU,
               "tanh": kernels.DENSE_TANH, "sigmoid": kernels.DENSE_SIGMOID,
               "hard_sigmoid": kernels.DENSE_HARD_SIGMOID}
_RELU, _TANH, _SIGMOID, _HARD_SIGMOID = (kernels.DENSE_RELU, kernels.DENSE_TANH,
                                         kernels.DENSE_SIGMOID, kernels.DENSE_HARD_SIGMOID)


def pack(weights, biases, activations):
    """(flat weights, layers table, scratch size) of a chain: weights [(n_i, n_{i-1})],
    biases [(n_i,)], activations [name]."""
    flat = np.concatenate([np.concatenate([np.asarray(w, np.float32).ravel(),
                                           np.asarray(b, np.float32)])
                           for w, b in zip(weights, biases)])
    layers = np.array([[w.shape[1], w.shape[0], ACTIVATIONS[a]]
                       for w, a in zip(weights, activations)], dtype=np.int64)
    return flat, layers, 2 * int(layers[:, 1].max())


head_step = kernels.head_step      # compiled in kernels.py, beside the activations
head_rows = kernels.head_rows


def numpy_head_step(y, x, weights, layers, alpha, beta, scratch):
    """head_step in NumPy (the fallback without numba): the same results within rounding."""
    v = x
    off = 0
    for k, m, act in layers:
        v = weights[off:off + m * k].reshape(m, k) @ v + weights[off + m * k:off + m * k + m]
        if act == _RELU:
            v = np.where(v < 0, np.float32(0), v)
        elif act == _TANH:
            v = np.tanh(v)
        elif act == _SIGMOID:
            v = np.float32(0.5) * np.tanh(np.float32(0.5) * v) + np.float32(0.5)
        elif act == _HARD_SIGMOID:
            g = alpha * v + beta
            v = np.where(g < 0, np.float32(0), np.where(g > 1, np.float32(1), g))
        off += m * k + m
    y[...] = v


def numpy_head_rows(Y, X, weights, layers, alpha, beta, scratch):
    # row by row, as step() does: a matrix product would sum in another order
    for r in range(X.shape[0]):
        numpy_head_step(Y[r], X[r], weights, layers, alpha, beta, scratch)
