"""A GRU stack with an optional head: sizes (GRUConfig), weights (GRUWeights), run state.

The weights arrive here in one layout, whatever format they came from (the format modules do the
translating): per layer and direction, PyTorch-shaped matrices with the gate blocks in the order
r | z | n::

    w_ih (3H, in_size)   w_hh (3H, H)   b_ih (3H,)   b_hh (3H,)

:func:`pack_params` turns them into the kernels' flat, transposed layout once, when the model is
built. The run state (hidden vectors and scratch) is allocated once as well; :meth:`Model.step`
and :meth:`Model.run` only write into it.
"""
import dataclasses
import functools
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgegru import heads, kernels
from edgegru._jit import JIT
from edgegru.errors import ModelFormatError

# what a head layer may apply (edgegru.heads); the first two run fused into the GRU kernels
HEAD_ACTIVATIONS = tuple(heads.ACTIVATIONS)
_FUSED_HEAD = {"linear": kernels.HEAD_LINEAR, "sigmoid": kernels.HEAD_SIGMOID}
HEAD_ON = ("all", "last")
GATE_ACTIVATIONS = ("sigmoid", "hard_sigmoid")
RECURRENT_DTYPES = ("float32", "bfloat16")
WEIGHTS_DTYPES = ("f32", "bf16")        # --weights-dtype (convert, train): the same two
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_ndarray = np.ndarray
_NONE = object()


@dataclasses.dataclass(frozen=True)
class GRUConfig:
    """Sizes and variant. ``output_size == 0`` means no head (the output is the top hidden state).

    The head: ``head_hidden`` dense layers ``((units, activation), ...)``, then the output layer
    of ``output_size`` units and ``head_activation``; activations are those of
    :data:`HEAD_ACTIVATIONS` (a head ``hard_sigmoid`` is ``clip(head_alpha * x + head_beta, 0,
    1)``: alpha 1/6 in PyTorch and Keras 3, 0.2 in Keras 2 and ONNX). ``head_on="last"`` makes a
    sequence-to-one model: :meth:`Model.run` returns the head's output for the last step only.

    ``hidden_sizes`` gives each layer's width, bottom first, when they differ (``hidden_size``
    is then the top layer's): such a Model runs each run of equal widths as a uniform stack.
    ``layer_directions`` does the same for directions (1 or 2 per layer: a bidirectional layer
    in the middle of a stack); ``bidirectional`` is then true (the model reads whole
    sequences) and the output is the top layer's, of its own directions.
    ``reverse`` makes the stack read each sequence from its end (ONNX ``direction="reverse"``).

    ``gate_activation`` is what the reset and update gates apply: the logistic ``"sigmoid"``
    (PyTorch, ONNX and Keras' default), or ``"hard_sigmoid"``, ``clip(gate_alpha * x +
    gate_beta, 0, 1)``: Keras' ``recurrent_activation="hard_sigmoid"`` (alpha 0.2 in Keras 2 and
    tf.keras, 1/6 in Keras 3; beta 0.5) and ONNX's ``HardSigmoid``. ``gate_alpha`` and
    ``gate_beta`` mean nothing for the sigmoid.

    ``recurrent_dtype="bfloat16"`` (opt-in) holds the recurrent weights W_hh in bfloat16: a
    Model rounds them to the nearest bfloat16 (ties to even; ``model.weights`` holds the
    rounded values as float32) and, past 64 hidden units, its kernels read them in 16 bits,
    widened exactly in registers; state, biases, activations, sums and W_ih stay float32.
    The outputs are those of the float32 model with the rounded W_hh (the NumPy fallback runs
    exactly that); the native file stores W_hh in 16 bits.
    """
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    reverse: bool = False           # the stack reads the sequence from its end (ONNX "reverse")
    reset_after: bool = True        # PyTorch / cuDNN / Keras reset_after=True / ONNX lbr=1
    bias: bool = True
    output_size: int = 0            # size of the linear head, 0 for none
    head_activation: str = "linear"
    gate_activation: str = "sigmoid"
    gate_alpha: float = 0.2
    gate_beta: float = 0.5
    hidden_sizes: tuple = ()        # per layer, bottom first, when they differ (hidden_size: the top's)
    layer_directions: tuple = ()    # per layer (1 or 2), bottom first, when they differ
    head_on: str = "all"            # "last": run() returns the last step's output
    head_hidden: tuple = ()         # ((units, activation), ...) before the output layer
    head_alpha: float = 1 / 6
    head_beta: float = 0.5
    recurrent_dtype: str = "float32"    # or "bfloat16": W_hh held in 16 bits (see above)

    def __post_init__(self):
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.output_size, (int, np.integer)) or self.output_size < 0:
            raise ValueError(f"output_size must be a non-negative integer, got {self.output_size!r}")
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {sorted(HEAD_ACTIVATIONS)}, "
                             f"got {self.head_activation!r}")
        if self.gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(f"gate_activation must be one of {list(GATE_ACTIVATIONS)}, "
                             f"got {self.gate_activation!r}")
        self._check_hidden_sizes()
        self._check_layer_directions()
        if self.reverse and self.bidirectional:
            raise ValueError("reverse is for unidirectional stacks (a bidirectional layer has "
                             "its own reverse direction)")
        if self.head_on not in HEAD_ON:
            raise ValueError(f"head_on must be one of {list(HEAD_ON)}, got {self.head_on!r}")
        self._check_head_hidden()
        if self.recurrent_dtype not in RECURRENT_DTYPES:
            raise ValueError(f"recurrent_dtype must be one of {list(RECURRENT_DTYPES)}, "
                             f"got {self.recurrent_dtype!r}")
        for name in ("gate_alpha", "gate_beta", "head_alpha", "head_beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) \
                    or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

    def _check_hidden_sizes(self):
        sizes = tuple(self.hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1
               for h in sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {sizes!r}")
        sizes = tuple(int(h) for h in sizes)
        if sizes and (len(sizes) != self.num_layers or sizes[-1] != self.hidden_size):
            raise ValueError(f"hidden_sizes {sizes} must give num_layers ({self.num_layers}) "
                             f"sizes, the last one hidden_size ({self.hidden_size})")
        if len(set(sizes)) == 1:
            sizes = ()                       # uniform: the one way to say it
        object.__setattr__(self, "hidden_sizes", sizes)

    def _check_layer_directions(self):
        dirs = tuple(self.layer_directions)
        if any(isinstance(d, bool) or d not in (1, 2) for d in dirs) \
                or (dirs and len(dirs) != self.num_layers):
            raise ValueError(f"layer_directions must give num_layers ({self.num_layers}) "
                             f"directions, each 1 or 2, got {dirs!r}")
        dirs = tuple(int(d) for d in dirs)
        if len(set(dirs)) == 1:              # uniform: the one way to say it is bidirectional
            if self.bidirectional != (dirs[0] == 2):
                raise ValueError(f"layer_directions {dirs} contradict bidirectional="
                                 f"{self.bidirectional}")
            dirs = ()
        elif dirs:
            object.__setattr__(self, "bidirectional", True)     # whole sequences only
        object.__setattr__(self, "layer_directions", dirs)

    @property
    def layer_dirs(self):
        """The number of directions of each layer, bottom first."""
        return self.layer_directions or ((2 if self.bidirectional else 1),) * self.num_layers

    @property
    def layer_sizes(self):
        """The hidden size of each layer, bottom first."""
        return self.hidden_sizes or (self.hidden_size,) * self.num_layers

    def segments(self):
        """[(first layer, number of layers, hidden size, directions)] of the runs of layers of
        equal sizes and directions."""
        out = []
        for l, (H, D) in enumerate(zip(self.layer_sizes, self.layer_dirs)):
            if out and out[-1][2:] == (H, D):
                out[-1] = (out[-1][0], out[-1][1] + 1, H, D)
            else:
                out.append((l, 1, H, D))
        return out

    def _check_head_hidden(self):
        try:
            layers = tuple((int(u), str(a)) for u, a in self.head_hidden)
        except (TypeError, ValueError):
            raise ValueError(f"head_hidden must be ((units, activation), ...), "
                             f"got {self.head_hidden!r}") from None
        for (units, act), (u0, _) in zip(layers, self.head_hidden):
            if isinstance(u0, bool) or units != u0 or units < 1:
                raise ValueError(f"head_hidden: units must be positive integers, got {u0!r}")
            if act not in HEAD_ACTIVATIONS:
                raise ValueError(f"head_hidden: activation must be one of "
                                 f"{list(HEAD_ACTIVATIONS)}, got {act!r}")
        if layers and not self.output_size:
            raise ValueError("head_hidden needs an output layer: set output_size")
        object.__setattr__(self, "head_hidden", layers)        # hashable, comparable

    @property
    def fused_head(self):
        """True when the head (if any) is one linear layer, + sigmoid or not: the GRU kernels
        compute it; any other head runs after them (edgegru.heads)."""
        return not self.head_hidden and self.head_activation in _FUSED_HEAD

    @property
    def head_layers(self):
        """[(name prefix, units, activation)] of every dense layer of the head, in order."""
        if not self.output_size:
            return []
        return [(f"head{i}.", u, a) for i, (u, a) in enumerate(self.head_hidden)] \
            + [("head.", self.output_size, self.head_activation)]

    @property
    def gate_args(self):
        """The kernels' gate arguments: (hard_gates, gate_alpha, gate_beta as float32)."""
        return (self.gate_activation == "hard_sigmoid", np.float32(self.gate_alpha),
                np.float32(self.gate_beta))

    @property
    def num_directions(self):
        """The top layer's directions (its output is the stack's)."""
        return self.layer_dirs[-1]

    def layer_input_size(self, layer):
        return self.input_size if layer == 0 \
            else self.layer_sizes[layer - 1] * self.layer_dirs[layer - 1]

    def expected_shapes(self):
        """{array name: shape} of every weight this config needs (the native file's arrays)."""
        shapes = {}
        for l, (H, D) in enumerate(zip(self.layer_sizes, self.layer_dirs)):
            G = 3 * H
            for d in range(D):
                p = block_name(l, d)
                shapes[p + "w_ih"] = (G, self.layer_input_size(l))
                shapes[p + "w_hh"] = (G, H)
                shapes[p + "b_ih"] = (G,)
                shapes[p + "b_hh"] = (G,)
        width = self.hidden_size * self.num_directions
        for prefix, units, _ in self.head_layers:
            shapes[prefix + "weight"] = (units, width)
            shapes[prefix + "bias"] = (units,)
            width = units
        return shapes


def block_name(layer, direction):
    """Prefix of one layer/direction's arrays: ``l0.`` forward, ``l0.reverse.`` backward."""
    return f"l{layer}." + ("reverse." if direction else "")


@dataclasses.dataclass
class GRUWeights:
    """{name: float32 array} with the names and shapes of :meth:`GRUConfig.expected_shapes`."""
    arrays: dict

    @classmethod
    def random(cls, config, seed=0):
        """Drawn like PyTorch's default init, U(-1/sqrt(H), 1/sqrt(H)): for tests and benchmarks."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for name, shape in config.expected_shapes().items():
            fan = config.hidden_size * config.num_directions if name.startswith("head") \
                else shape[0] // 3
            arrays[name] = rng.uniform(-fan ** -0.5, fan ** -0.5, size=shape).astype(np.float32)
            if not config.bias and name.endswith(("b_ih", "b_hh")):
                arrays[name][...] = 0.0
        return cls(arrays)

    def check(self, config, source="the weights"):
        """Raise ModelFormatError naming what is missing, misshapen or not finite."""
        expected = config.expected_shapes()
        missing = [name for name in expected if name not in self.arrays]
        if missing:
            raise ModelFormatError(f"{source}: missing array(s) {', '.join(missing)}")
        unexpected = sorted(set(self.arrays) - set(expected))
        if unexpected:
            raise ModelFormatError(f"{source}: unexpected array(s) {', '.join(unexpected)} "
                                   f"for this configuration")
        for name, shape in expected.items():
            a = self.arrays[name]
            if a.shape != shape:
                raise ModelFormatError(f"{source}: array {name} has shape {a.shape}, "
                                       f"expected {shape}")
            if not np.isfinite(a).all():
                raise ModelFormatError(f"{source}: array {name} contains NaN or inf")


def recurrent_rounded(config, weights):
    """weights with each W_hh rounded to bfloat16 (as float32) if the config asks for it, else
    weights itself."""
    if config.recurrent_dtype != "bfloat16":
        return weights
    arrays = {name: kernels.from_bfloat16(kernels.to_bfloat16(a)) if name.endswith("w_hh")
              else a for name, a in weights.arrays.items()}
    for name, a in arrays.items():
        if not np.isfinite(a).all():        # within half a bfloat16 step of float32's largest
            raise ModelFormatError(f"array {name} does not fit bfloat16 (a weight rounds to "
                                   f"inf): keep it float32")
    return GRUWeights(arrays)


def recurrent_bfloat16(model, backend=None):
    """model with W_hh held in bfloat16 (recurrent_dtype "bfloat16", its weights rounded): a
    new Model of the same weights and meta, on ``backend`` (as :class:`Model`), as
    ``--weights-dtype bf16`` asks (edgegru convert and train)."""
    config = dataclasses.replace(model.config, recurrent_dtype="bfloat16")
    return Model(config, model.weights, meta=model.meta, backend=backend)


def pack_params(config, weights, block_columns=0):
    """The kernels' flat float32 parameter array (layout in :mod:`edgegru.kernels`), w_hh
    blocked for kernels with blocks of block_columns (kernels.RECURRENT_BLOCK_COLUMNS; the
    NumPy fallback's 0: never); with recurrent_dtype bfloat16, weights' W_hh must be rounded
    (recurrent_rounded)."""
    I, H, L, D = config.input_size, config.hidden_size, config.num_layers, config.num_directions
    O = config.output_size if config.fused_head else 0          # the other heads: edgegru.heads
    params = np.zeros(kernels.params_size(I, H, L, D, O), dtype=np.float32)
    a = weights.arrays
    for l in range(L):
        for d in range(D):
            name = block_name(l, d)
            w_ih, b_x, w_hh, b_hn, in_size = kernels.block_offsets(l, d, I, H, D)
            b_ih, b_hh = a[name + "b_ih"], a[name + "b_hh"]
            params[w_ih:b_x] = kernels.padded(a[name + "w_ih"].T, kernels.row_stride(H)).ravel()
            bx = b_ih.astype(np.float32).copy()
            bx[:2 * H] += b_hh[:2 * H]                 # r and z: the two biases simply add
            if config.reset_after:
                params[b_hn:b_hn + H] = b_hh[2 * H:]   # b_hn sits inside r * (...)
            else:
                bx[2 * H:] += b_hh[2 * H:]             # outside the product: folds into b_in
            params[b_x:b_x + 3 * H] = bx
            w = kernels.pack_recurrent(a[name + "w_hh"].T, block_columns,
                                       config.recurrent_dtype == "bfloat16")
            params[w_hh:w_hh + w.size] = w
    if O:
        w_head = kernels.head_offset(I, H, L, D)
        n = config.output_size * H * D
        params[w_head:w_head + n] = a["head.weight"].ravel()
        params[w_head + n:] = a["head.bias"]
    return params


_warned_slow = False


def _kernel_module(backend):
    global _warned_slow
    if backend is None:
        backend = "numba" if JIT else "numpy"
    if backend == "numba":
        if not JIT:
            raise ValueError("backend='numba' asked for, but numba is not available")
        return kernels
    if backend == "numpy":
        if not JIT and not _warned_slow:
            _warned_slow = True
            print("edgegru: numba is not available (or EDGEGRU_NO_JIT is set); running on the "
                  "plain NumPy fallback, which is much slower", file=sys.stderr)
        from edgegru import numpy_kernels
        return numpy_kernels
    raise ValueError(f"backend must be 'numba', 'numpy' or None, got {backend!r}")


class Model:
    """A GRU stack (+ optional head) with its own state, for streaming and sequences.

    >>> import numpy as np, edgegru
    >>> cfg = edgegru.GRUConfig(input_size=2, hidden_size=4)
    >>> model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg, seed=0))
    >>> model.step(np.zeros(2, np.float32)).shape
    (4,)
    >>> model.run(np.zeros((10, 2), np.float32)).shape
    (10, 4)
    """

    def __new__(cls, config, *args, **kwargs):
        # layers of different widths or directions: a chain of uniform stacks (_Tapered)
        tapered = config.hidden_sizes or config.layer_directions
        return super().__new__(_Tapered if cls is Model and tapered else cls)

    def __init__(self, config, weights, meta=None, backend=None):
        weights.check(config)
        weights = recurrent_rounded(config, weights)
        self.config = config
        self.weights = weights
        self.meta = dict(meta or {})      # free-form sections: preprocessing, scoring, provenance
        self._k = _kernel_module(backend)
        params = pack_params(config, weights, self._k.RECURRENT_BLOCK_COLUMNS)
        I, H, L, D = config.input_size, config.hidden_size, config.num_layers, config.num_directions
        # The GRU kernels compute a one-layer linear (+ sigmoid) head themselves; with any
        # other head they output the top layer (gru_out 0, width K) and edgegru.heads goes on.
        self._gru_out = config.output_size if config.fused_head else 0
        self._gru_width = self._gru_out or H * D
        self._head_act = _FUSED_HEAD.get(config.head_activation, kernels.HEAD_LINEAR)
        self._recurrent_bf16 = config.recurrent_dtype == "bfloat16"
        self._chain = None
        if not config.fused_head and config.output_size:
            self._chain, self._top = _chain_args(config, weights)
            self._head_step, self._head_rows = (heads.head_step, heads.head_rows) \
                if self._k is kernels else (heads.numpy_head_step, heads.numpy_head_rows)
        # Everything in one array, allocated once: the step kernel's [header | params | work |
        # x], the work being the run state [h (L*D, H) | step scratch (6H)], x a contiguous
        # copy of step()'s input. The sequence kernel gets views of params and h.
        P, W = params.size, L * D * H + 6 * H
        self._step_model = _aligned_zeros(kernels.step_model_size(P, W, I))
        kernels.write_step_header(self._step_model, I, H, L, self._gru_out,
                                  config.reset_after, *config.gate_args, self._head_act, P,
                                  self._recurrent_bf16)
        self._params = self._step_model[kernels.STEP_HEADER:kernels.STEP_HEADER + P]
        self._params[:] = params
        self._h = self._step_model[kernels.STEP_HEADER + P:][:L * D * H].reshape(L * D, H)
        self._workspaces = []           # the sequence kernel's, one per thread, grown on demand
        self._x_shape = (I,)
        self._out_shape = (self.output_size,)
        self._step = self._step_function()
        if type(self).step is Model.step:       # not a subclass's own step()
            self.step = self._step

    # -- sizes ----------------------------------------------------------------------------
    input_size = property(lambda self: self.config.input_size)
    hidden_size = property(lambda self: self.config.hidden_size)
    num_layers = property(lambda self: self.config.num_layers)
    num_directions = property(lambda self: self.config.num_directions)

    @property
    def output_size(self):
        c = self.config
        return c.output_size or c.hidden_size * c.num_directions

    def __repr__(self):
        c = self.config
        sizes = ",".join(map(str, c.hidden_sizes))
        dirs = (f" layer_directions={','.join(map(str, c.layer_directions))}"
                if c.layer_directions else " bidirectional" if c.bidirectional else "")
        return (f"<edgegru.Model input_size={c.input_size} "
                f"{f'hidden_sizes={sizes}' if sizes else f'hidden_size={c.hidden_size}'} "
                f"num_layers={c.num_layers}{dirs}"
                f"{' reverse' if c.reverse else ''} "
                f"{'reset_after' if c.reset_after else 'reset_before'} "
                f"{'hard_sigmoid gates ' if c.gate_activation == 'hard_sigmoid' else ''}"
                f"output_size={self.output_size}"
                f"{' sequence-to-one' if c.head_on == 'last' else ''}"
                f"{' W_hh bfloat16' if c.recurrent_dtype == 'bfloat16' else ''}>")

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self):
        """A copy of the hidden state, shape (num_layers * num_directions, hidden_size)."""
        return self._h.copy()

    @state.setter
    def state(self, value):
        value = np.asarray(value)
        if value.shape != self._h.shape:
            raise ValueError(f"state must have shape {self._h.shape} "
                             f"(num_layers * num_directions, hidden_size), got {value.shape}")
        self._h[...] = value

    def reset(self):
        """Zero the hidden state."""
        self._h[...] = 0.0

    # -- running --------------------------------------------------------------------------
    def step(self, x, out=None):
        """One time step: x (input_size,) -> (output_size,). Updates the state.

        With ``out`` (a float32 array of shape (output_size,)) nothing is allocated. A float32
        or float64 x is read where it is (a row or a column of a larger array too); other
        arrays and sequences of numbers are converted to float32 first.
        """
        return self._step(x, out)

    def _step_function(self):
        # step() itself, a closure made once per model, which __init__ also sets as the
        # model's own `step`: model.step(x, out) then calls it without a bound method, and it
        # reads closure variables, which cost less than attributes on a path this short. Its
        # kernel, gru_step_strided, reads x of any strides and checks its length, so a
        # one-dimensional float32 or float64 array goes to it as it is after two checks (an
        # array of more dimensions would not fit the kernel's argument); anything else takes
        # slow(), which converts or explains. out is checked once, and an
        # x that comes twice in a row is too: a loop over the same buffers checks nothing.
        model, shape = self._step_model, self._out_shape
        k32 = k64 = same = None         # the kernels for float32 and float64 x, x_same's one
        out_checked = out_view = x_same = x_view = x_last = _NONE

        def step(x, out=None):
            nonlocal x_same, x_view, same, x_last
            if x is x_same and out is out_checked:
                same(out_view, x_view, model)
                return out
            if type(x) is not _ndarray or x.ndim != 1:
                return slow(x, out)
            dtype = x.dtype
            kernel = k32 if dtype is _F32 else k64 if dtype is _F64 else None
            if kernel is None:
                return slow(x, out)
            if out is out_checked:
                if kernel(out_view, x, model):
                    if x is x_last:             # views: reshaping x or out cannot matter
                        x_same, x_view, same = x, x.view(), kernel
                    x_last = x
                    return out
            elif out is None:
                y = np.empty(shape, _F32)
                if kernel(y, x, model):
                    return y
            return slow(x, out)

        def slow(x, out):
            nonlocal k32, k64, out_checked, out_view
            x = self._check_step_input(x)
            if k32 is None:             # the first call: the kernels' entry points
                k32, k64 = self._step_entry(_F32), self._step_entry(_F64)
            if out is None:
                out = target = np.empty(shape, _F32)
            elif out is out_checked:
                target = out_view
            else:
                self._check_out(out)
                out_checked, out_view = out, out.view()
                target = out_view
            k32(target, x, model)
            return out

        step.__doc__ = Model.step.__doc__
        return step

    def _check_out(self, out):
        if not (type(out) is _ndarray and out.dtype is _F32 and out.shape == self._out_shape
                and out.flags.carray):
            raise ValueError(f"out must be a writeable, contiguous float32 array of shape "
                             f"{self._out_shape}")

    def _step_entry(self, dtype):
        # gru_step_strided's compiled entry point (compiled now, or loaded from numba's cache)
        # for an x of this dtype and any strides, with the head past the fused one when there
        # is one. Calling it directly skips numba's dispatcher, which costs more than the H=64
        # step itself; that is safe because x's dtype and dimensions and out are checked.
        self._refuse_step()
        x = np.empty(4, dtype)[::2]                 # typed as of any strides
        out = np.empty(self._out_shape, _F32)
        kernel = self._k.gru_step_strided
        if self._chain is None:
            return self._k.entry_point(kernel, (out, x, self._step_model))
        return self._chained_step(self._k.entry_point(kernel, (self._top, x, self._step_model)),
                                  out)

    def _chained_step(self, gru, out):
        # A head past the fused one: the GRU step into the top layer's buffer, then the head
        # on it, each through its compiled entry point.
        top, chain = self._top, self._chain
        head = self._k.entry_point(self._head_step, (out, top) + chain)

        def step(out, x, model):
            if not gru(top, x, model):
                return False
            head(out, top, *chain)
            return True
        return step

    def _refuse_step(self):
        if self.config.bidirectional:
            raise ValueError("step() needs a unidirectional model: a bidirectional layer reads "
                             "the whole sequence, so use run() on the sequence instead")
        if self.config.reverse:
            raise ValueError("step() needs a forward model: a reverse GRU reads the sequence "
                             "from its end, so use run() on the whole sequence instead")

    def stepper(self, x, out):
        """A function of no arguments that does ``step(x, out=out)`` with these two buffers,
        reading whatever ``x`` holds at the time of the call, with no checks per call.

        For the tightest loops: fill ``x`` in place (``x[:] = reading``, or have a driver write
        into it), call, read ``out``. ``x`` and ``out`` are checked once, here: float32,
        contiguous, shapes (input_size,) and (output_size,), ``out`` writeable. The function
        keeps views of both, so reshaping them afterwards cannot confuse it. It returns True
        (step()'s kernel's: x has input_size values).

        >>> import numpy as np, edgegru
        >>> cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=1)
        >>> model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
        >>> x, y = np.zeros(2, np.float32), np.zeros(1, np.float32)
        >>> step = model.stepper(x, y)
        >>> x[:] = [0.5, -1.0]
        >>> step()
        True
        >>> y.shape
        (1,)
        """
        self._check_out(out)
        if not (type(x) is _ndarray and x.dtype is _F32 and x.shape == self._x_shape
                and x.flags.c_contiguous):
            raise ValueError(f"x must be a contiguous float32 array of shape {self._x_shape} "
                             f"(it is read in place at every call)")
        x, out = x.view(), out.view()         # our own array objects over the same memory
        return functools.partial(self._step_entry(_F32), out, x, self._step_model)

    def compile(self):
        """Compile the kernels step() and run() use now (or load them from numba's cache),
        instead of on the first call; the state is left alone. Returns {kernel: seconds}.

        The kernels' argument types do not depend on the sizes, so what this compiles serves
        every model. Nothing to do on the NumPy fallback.
        """
        if self._k is not kernels:
            return {}
        c = self.config
        times = {}
        t = time.perf_counter()
        if not (c.bidirectional or c.reverse):
            self._step_entry(_F32)
            self._step_entry(_F64)
            times["step"] = time.perf_counter() - t
            t = time.perf_counter()
        L, D, H = c.num_layers, c.num_directions, c.hidden_size
        args = (np.empty((1, 1, self._gru_width), np.float32),
                np.empty((1, 1, c.input_size), np.float32), np.empty((L * D, 1, H), np.float32),
                self._params, _aligned_zeros(0), c.input_size, H, L, D, self._gru_out,
                c.reset_after) \
            + c.gate_args + (self._head_act, self._recurrent_bf16)
        kernels.entry_point(kernels.gru_sequences, args)       # run() then finds it compiled
        times["sequence"] = time.perf_counter() - t
        # the deeper heads' kernels, for every model: edgegru compile builds the ahead-of-time
        # module from what this process compiled, and the next model may need them
        t = time.perf_counter()
        chain = self._chain or (np.zeros(2, np.float32), np.array([[1, 1, 0]], np.int64),
                                np.float32(0), np.float32(0), np.zeros(2, np.float32))
        one = np.zeros(1, np.float32)
        kernels.entry_point(heads.head_step, (one, one) + chain)
        kernels.entry_point(heads.head_rows, (one.reshape(1, 1), one.reshape(1, 1)) + chain)
        times["head"] = time.perf_counter() - t
        return times

    def _check_step_input(self, x):
        self._refuse_step()
        x = _as_float32(x, "x")
        if x.shape != self._x_shape:
            raise ValueError(f"x must have shape ({self.input_size},) (input_size), "
                             f"got {x.shape}; for a sequence of shape (T, {self.input_size}) "
                             f"use run()")
        return x

    def run(self, X, h0=None, return_state=False, all_steps=None, lengths=None, threads=1):
        """A whole sequence, or a batch of independent sequences.

        - X (T, input_size) -> Y (T, output_size): continues from ``state`` and updates it.
        - X (B, T, input_size) -> Y (B, T, output_size): B independent sequences (PyTorch's
          ``batch_first=True``), each starting from ``h0`` (num_layers * num_directions, B,
          hidden_size), zeros by default; ``state`` is left alone. With ``return_state=True``
          the final states come back too, as ``(Y, h_n)`` with h_n shaped like h0.

        A sequence-to-one model (``config.head_on == "last"``) returns the last step's output
        only: (output_size,), or (B, output_size) for a batch; ``all_steps=True`` returns every
        step's, as above (and ``all_steps=False`` the last step's, whatever the model).

        ``lengths`` (B,) runs each sequence of a batch over its first ``lengths[b]`` steps only
        (ONNX's ``sequence_lens``): Y is zero past them, h_n is the state after them, and the
        last step's output is each sequence's own last (zeros for an empty one). A reverse
        model (``config.reverse``) reads each sequence from its end (its own end with lengths).

        ``threads=N`` splits a batch into N parts run at once, one thread each (the kernels
        release the GIL); the results are bitwise those of one thread.
        """
        X = _as_float32(X, "X")
        c = self.config
        if X.ndim not in (2, 3) or X.shape[-1] != c.input_size:
            raise ValueError(f"X must have shape (T, {c.input_size}) or (B, T, {c.input_size}) "
                             f"(input_size = {c.input_size}), got {X.shape}")
        L, D, H = c.num_layers, c.num_directions, c.hidden_size
        if X.ndim == 2:
            if h0 is not None:
                raise ValueError("h0 is for batched (B, T, I) input; for one sequence set "
                                 "model.state")
            Xb = X.reshape((1,) + X.shape)
            h = self._h.reshape(L * D, 1, H)      # a view: the kernel updates the state in place
        else:
            Xb = X
            state_shape = (L * D, X.shape[0], H)
            if h0 is None:
                h = np.zeros(state_shape, dtype=np.float32)
            else:
                h0 = _as_float32(h0, "h0")
                if h0.shape != state_shape:
                    raise ValueError(f"h0 must have shape {state_shape} "
                                     f"(num_layers * num_directions, B, hidden_size), "
                                     f"got {h0.shape}")
                h = h0.copy()
        B, T = Xb.shape[:2]
        all_steps = c.head_on == "all" if all_steps is None else bool(all_steps)
        if lengths is not None and not _full_lengths(lengths, B, T, X.ndim, c.input_size):
            Y = self._run_ragged(Xb, h, np.asarray(lengths), all_steps)
            return (Y, h) if return_state else Y
        if not all_steps and T == 0:
            raise ValueError("X has no time steps: the last step's output needs one at least")
        if c.reverse:                   # a forward GRU on the time-reversed sequence
            Xb = np.ascontiguousarray(Xb[:, ::-1])
        Y = np.empty((B, T, self._gru_width), dtype=np.float32)
        if T and B:
            parts = _parts(B, _threads(threads))
            if len(parts) == 1:
                self._sequences(Y, Xb, h, 0)
            else:
                self._sequences_in_threads(Y, Xb, h, parts)
        if c.reverse:
            Y = np.ascontiguousarray(Y[:, ::-1])
        Y = self._apply_head(Y, all_steps)
        if X.ndim == 2:
            return (Y[0], self.state) if return_state else Y[0]
        return (Y, h) if return_state else Y

    def _sequences(self, Y, X, h, slot):
        # the sequence kernel on a batch, with workspace number `slot` (one per thread)
        c = self.config
        B, T = X.shape[:2]
        need = kernels.sequence_workspace_size(B, T, c.hidden_size, c.num_directions)
        while len(self._workspaces) <= slot:
            self._workspaces.append(_aligned_zeros(0))
        if self._workspaces[slot].size < need:
            self._workspaces[slot] = _aligned_zeros(need)
        self._k.gru_sequences(Y, X, h, self._params, self._workspaces[slot], c.input_size,
                              c.hidden_size, c.num_layers, c.num_directions, self._gru_out,
                              c.reset_after, *c.gate_args, self._head_act,
                              self._recurrent_bf16)

    def _sequences_in_threads(self, Y, X, h, parts):
        # one part of the batch per thread; each part's state is a contiguous copy of its
        # columns of h (the kernel's signature, and so its compiled code, stay those of one
        # thread), written back when it is done
        hs = [np.ascontiguousarray(h[:, a:b]) for a, b in parts]
        with ThreadPoolExecutor(len(parts)) as pool:
            done = [pool.submit(self._sequences, Y[a:b], X[a:b], hs[i], i)
                    for i, (a, b) in enumerate(parts)]
            for future in done:
                future.result()
        for (a, b), part in zip(parts, hs):
            h[:, a:b] = part

    def _run_ragged(self, X, h, lengths, all_steps):
        # run() with lengths: each sequence alone over its own steps; h (L*D, B, H) in and out
        B, T = X.shape[:2]
        Y = np.zeros((B, T, self.output_size) if all_steps else (B, self.output_size),
                     np.float32)
        for b, n in enumerate(lengths):
            if n:
                y, h_n = self.run(X[b:b + 1, :n], h0=h[:, b:b + 1], return_state=True,
                                  all_steps=True)
                if all_steps:
                    Y[b, :n] = y[0]
                else:
                    Y[b] = y[0, -1]
                h[:, b] = h_n[:, 0]
        return Y

    def _apply_head(self, Y, all_steps):
        # Y (B, T, gru width) from the GRU kernels -> (B, T, O), or (B, O) for the last step
        if not all_steps:
            Y = np.ascontiguousarray(Y[:, -1])
        if self._chain is None:
            return Y
        out = np.empty(Y.shape[:-1] + (self.output_size,), np.float32)
        if out.size:
            self._head_rows(out.reshape(-1, self.output_size), Y.reshape(-1, Y.shape[-1]),
                            *self._chain)
        return out


class _Tapered(Model):
    """A stack whose layers differ in width or directions (``config.hidden_sizes``,
    ``config.layer_directions``): each run of layers of one width and direction count is a
    uniform Model on the fused kernels (a segment), the top one with the head, and
    each segment's output is the next one's input. ``state`` and ``h0`` are lists, one array
    per segment, shaped as a uniform model's."""

    def __init__(self, config, weights, meta=None, backend=None):
        weights.check(config)
        weights = recurrent_rounded(config, weights)
        self.config, self.weights, self.meta = config, weights, dict(meta or {})
        segments = config.segments()
        self._segments = []
        for i, (first, n, H, D) in enumerate(segments):
            top = i == len(segments) - 1
            below = {} if top else dict(output_size=0, head_hidden=(), head_activation="linear",
                                        head_on="all")
            cfg = dataclasses.replace(config, input_size=config.layer_input_size(first),
                                      hidden_size=H, num_layers=n, hidden_sizes=(),
                                      layer_directions=(), bidirectional=D == 2, **below)
            arrays = {block_name(l - first, d) + kind: weights.arrays[block_name(l, d) + kind]
                      for l in range(first, first + n) for d in range(D)
                      for kind in ("w_ih", "w_hh", "b_ih", "b_hh")}
            if top:
                arrays.update({k: a for k, a in weights.arrays.items() if k.startswith("head")})
            self._segments.append(Model(cfg, GRUWeights(arrays), backend=backend))
        self._k = self._segments[0]._k
        self._bufs = [np.zeros(seg.output_size, np.float32) for seg in self._segments[:-1]]

    @property
    def state(self):
        """A copy of the hidden state: [(layers * directions, hidden size)] per segment."""
        return [seg.state for seg in self._segments]

    @state.setter
    def state(self, value):
        if not isinstance(value, (list, tuple)) or len(value) != len(self._segments):
            raise ValueError(f"state must be a list of {len(self._segments)} arrays, one per "
                             f"run of layers of one width and direction count, as model.state gives")
        for seg, v in zip(self._segments, value):
            seg.state = v

    def reset(self):
        for seg in self._segments:
            seg.reset()

    def step(self, x, out=None):
        for seg, buf in zip(self._segments, self._bufs):
            x = seg.step(x, out=buf)
        return self._segments[-1].step(x, out=out)

    def stepper(self, x, out):
        steps = [seg.stepper(a, b) for seg, a, b in zip(
            self._segments, [x] + self._bufs, self._bufs + [out])]

        def step():
            for s in steps:
                s()
        return step

    def compile(self):
        times = {}
        for seg in self._segments:
            for what, seconds in seg.compile().items():
                times[what] = times.get(what, 0.0) + seconds
        return times

    def run(self, X, h0=None, return_state=False, all_steps=None, lengths=None, threads=1):
        n = len(self._segments)
        if h0 is not None and (not isinstance(h0, (list, tuple)) or len(h0) != n):
            raise ValueError(f"h0 must be a list of {n} arrays, one per run of layers of one "
                             f"width and direction count: (layers * directions, B, hidden "
                             f"size) each")
        states = []
        for i, seg in enumerate(self._segments):
            top = i == n - 1
            X, h = seg.run(X, h0=None if h0 is None else h0[i], return_state=True,
                           all_steps=all_steps if top else True, lengths=lengths,
                           threads=threads)
            states.append(h)
        return (X, states) if return_state else X


def _threads(threads):
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a whole number from 1, got {threads!r}")
    return int(threads)


def _parts(B, threads):
    """[(start, stop)]: B sequences in at most `threads` contiguous parts of near-equal size."""
    n = min(B, threads)
    cuts = [B * i // n for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _full_lengths(lengths, B, T, ndim, I):
    """Check run()'s lengths; True when every sequence runs over all T steps."""
    lengths = np.asarray(lengths)
    if ndim != 3 or lengths.shape != (B,) or lengths.dtype.kind not in "iu" \
            or ((lengths < 0) | (lengths > T)).any():
        raise ValueError(f"lengths must be {B} integers in 0..{T}, one per sequence of a "
                         f"batch X (B, T, {I}), got {lengths!r}")
    return bool((lengths == T).all())


def _chain_args(config, weights):
    """The head kernels' arguments after (y, x): (weights, layers, alpha, beta, scratch), and
    the buffer of the top layer's output that step() runs the head on."""
    a = weights.arrays
    layers = config.head_layers
    flat, table, scratch = heads.pack([a[p + "weight"] for p, _, _ in layers],
                                      [a[p + "bias"] for p, _, _ in layers],
                                      [act for _, _, act in layers])
    top = _aligned_zeros(config.hidden_size * config.num_directions)
    return (flat, table, np.float32(config.head_alpha), np.float32(config.head_beta),
            np.zeros(scratch, np.float32)), top


def _aligned_zeros(n, align=64):
    """float32 zeros starting on a cache-line boundary: numpy only promises 16 bytes, and the
    kernels' vector loads run measurably slower (H=64: up to 25 %) when the weight rows straddle
    cache lines, which then depends on where malloc happened to put the array."""
    raw = np.zeros(n + align // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip:skip + n]


def _as_float32(a, name):
    """float32, C-contiguous; float64 and other real numbers are converted, not rejected."""
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise ValueError(f"{name} must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)
