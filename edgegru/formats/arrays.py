"""Plain arrays: a ``.npz`` of state-dict arrays, and the textbook GRU layout (:func:`from_arrays`).

The textbook cell (Cho et al. 2014; one matrix per gate over the concatenation ``[h, x]``)::

    r = sigmoid(W_r [h, x] + b_r)           W_r, W_z, W: (H, H + I)   b_r, b_z, b: (H,)
    z = sigmoid(W_z [h, x] + b_z)
    c = tanh(W [r * h, x] + b)              reset before the product: edgegru's reset_before
    h = z * h_prev + (1 - z) * c            z_selects="previous" (Cho, PyTorch, Keras, ONNX)
    h = (1 - z) * h_prev + z * c            z_selects="candidate" (e.g. Wikipedia's "fully gated")

Mapping to edgegru's layout (gate order r | z | n, ``reset_after=False``): the first H columns
of each matrix act on h and go to ``w_hh``, the last I columns act on x and go to ``w_ih``; the
biases go to ``b_ih`` and ``b_hh`` is zero. With ``z_selects="candidate"`` the update gate means
the opposite, z' = 1 - z, and since 1 - sigmoid(a) = sigmoid(-a) that is ``W_z -> -W_z``,
``b_z -> -b_z``: exact, no approximation.
"""
import io

import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.model import GRUConfig, GRUWeights, Model


def read_npz_state_dict(data, name="<bytes>"):
    """A ``.npz`` of arrays under their state-dict names (``np.savez(path, **sd)``) -> dict."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:          # includes "Object arrays cannot be loaded..."
        raise ModelFormatError(f"{name}: not a readable .npz of arrays ({exc})") from None
    except Exception as exc:           # zipfile.BadZipFile, zlib.error, EOFError, OSError...
        raise ModelFormatError(f"{name}: corrupt .npz file ({type(exc).__name__}: {exc})") \
            from None


def from_arrays(W_r, W_z, W, b_r=None, b_z=None, b=None, z_selects="previous",
                head_weight=None, head_bias=None, head_activation="linear", backend=None):
    """A one-layer :class:`~edgegru.Model` from the textbook layout (see the module docstring).

    >>> import numpy as np, edgegru
    >>> H, I = 3, 2
    >>> W_r, W_z, W = (np.full((H, H + I), 0.1, np.float32) for _ in range(3))
    >>> edgegru.from_arrays(W_r, W_z, W).run(np.ones((4, I))).shape
    (4, 3)
    """
    if z_selects not in ("previous", "candidate"):
        raise ValueError(f"z_selects must be 'previous' (h = z*h_prev + (1-z)*c) or "
                         f"'candidate' (h = (1-z)*h_prev + z*c), got {z_selects!r}")
    mats = [_float32(m, n) for m, n in ((W_r, "W_r"), (W_z, "W_z"), (W, "W"))]
    if mats[0].ndim != 2 or mats[0].shape[1] <= mats[0].shape[0]:
        raise ModelFormatError(f"W_r has shape {mats[0].shape}, expected (H, H + input_size)")
    H, I = mats[0].shape[0], mats[0].shape[1] - mats[0].shape[0]
    for m, n in zip(mats, ("W_r", "W_z", "W")):
        if m.shape != (H, H + I):
            raise ModelFormatError(f"{n} has shape {m.shape}, expected ({H}, {H + I}) "
                                   f"(hidden_size, hidden_size + input_size) like W_r")
    biases = []
    for v, n in ((b_r, "b_r"), (b_z, "b_z"), (b, "b")):
        v = np.zeros(H, np.float32) if v is None else _float32(v, n)
        if v.shape != (H,):
            raise ModelFormatError(f"{n} has shape {v.shape}, expected ({H},)")
        biases.append(v)
    if z_selects == "candidate":                  # z' = 1 - z = sigmoid(-(W_z [h, x] + b_z))
        mats[1], biases[1] = -mats[1], -biases[1]
    arrays = {"l0.w_hh": np.concatenate([m[:, :H] for m in mats]),   # gate order r | z | n
              "l0.w_ih": np.concatenate([m[:, H:] for m in mats]),
              "l0.b_ih": np.concatenate(biases),
              "l0.b_hh": np.zeros(3 * H, np.float32)}
    output_size = 0
    if head_weight is not None:
        w = _float32(head_weight, "head_weight")
        if w.ndim != 2 or w.shape[1] != H:
            raise ModelFormatError(f"head_weight has shape {w.shape}, expected "
                                   f"(output_size, {H})")
        hb = np.zeros(w.shape[0], np.float32) if head_bias is None else _float32(head_bias,
                                                                                 "head_bias")
        if hb.shape != (w.shape[0],):
            raise ModelFormatError(f"head_bias has shape {hb.shape}, expected ({w.shape[0]},)")
        arrays["head.weight"], arrays["head.bias"] = w, hb
        output_size = w.shape[0]
    config = GRUConfig(input_size=I, hidden_size=H, reset_after=False, output_size=output_size,
                       head_activation=head_activation)
    weights = GRUWeights(arrays)
    weights.check(config, source="from_arrays")
    meta = {"provenance": {"source": {"format": "textbook-arrays", "z_selects": z_selects}}}
    return Model(config, weights, meta=meta, backend=backend)


def _float32(a, name):
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ModelFormatError(f"{name} has dtype {arr.dtype}, expected floats")
    return np.ascontiguousarray(arr, dtype=np.float32)


def is_plain_npz(names):
    """True when every zip entry is a ``.npy`` array (what ``np.savez`` writes)."""
    return bool(names) and all(n.endswith(".npy") for n in names)



# -- memory on loading --------------------------------------------------------------------------
# A model file describes arrays that the loader then materialises: a strided view of a small
# storage (stride 0) or an Expand in an ONNX graph can ask for gigabytes from a few kilobytes,
# and on a 2-4 GB Raspberry Pi the OOM killer then takes the process or its neighbours. Every
# loader adds up what it materialises and stops before the total passes a small multiple of the
# file's size plus room for a GRU of any sane size (64 MiB of float32: H=1024, two layers,
# bidirectional), and never passes MAX_MODEL_BYTES.

MAX_MODEL_BYTES = 1 << 30        # EDGEGRU_MAX_MODEL_BYTES overrides it (in bytes)
_ROOM = 64 << 20


class Allowance:
    """How many bytes a loader may still materialise for a file of ``file_size`` bytes."""

    def __init__(self, file_size, name):
        import os
        cap = MAX_MODEL_BYTES
        env = os.environ.get("EDGEGRU_MAX_MODEL_BYTES", "").strip()
        if env.isdigit():
            cap = int(env)
        self.limit = min(cap, 4 * int(file_size) + _ROOM)
        self.cap_from_env = bool(env.isdigit())
        self.used = 0
        self.name = name

    def take(self, nbytes, what):
        """Count ``nbytes`` about to be allocated for ``what``; ModelFormatError first when they
        would pass the limit."""
        from edgegru.errors import ModelFormatError
        nbytes = int(nbytes)
        if nbytes < 0 or self.used + nbytes > self.limit:
            raise ModelFormatError(
                f"{'' if what.startswith(self.name) else self.name + ': '}{what} would take {nbytes / 2**20:.1f} MiB, over the "
                f"{self.limit / 2**20:.0f} MiB a model file of this size may take when loaded "
                f"(4x its size + 64 MiB, at most EDGEGRU_MAX_MODEL_BYTES="
                f"{MAX_MODEL_BYTES if not self.cap_from_env else self.limit} bytes)")
        self.used += nbytes
