"""ONNX: ``GRU`` nodes (stacked, any direction) and a head of dense layers -> Model. Needs ``onnx``.

All knowledge of ONNX's GRU is in :func:`gru_layer`. An ONNX GRU node (opset 1-22) has inputs
``X, W, R, B, sequence_lens, initial_h`` and outputs ``Y, Y_h``, with D = num_directions::

    W (D, 3H, I)   rows z | r | h           R (D, 3H, H)   rows z | r | h
    B (D, 6H)      [Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h]  (optional, zeros)
    X (T, B, I), Y (T, D, B, H), Y_h (D, B, H)     with layout=0 (time-major)
    X (B, T, I), Y (B, T, D, H), Y_h (B, D, H)     with layout=1 (batch-major)
    z = sigmoid(Wz x + Rz h + Wbz + Rbz)    r = sigmoid(Wr x + Rr h + Wbr + Rbr)
    n = tanh(Wh x + Rh (r * h) + Rbh + Wbh)          linear_before_reset=0: edgegru reset_before
    n = tanh(Wh x + r * (Rh h + Rbh) + Wbh)          linear_before_reset=1: reset_after (PyTorch)
    h = (1 - z) * n + z * h                          the same update as edgegru's

so the translation is a reordering of the gate blocks, z | r | h -> r | z | n, with
``w_ih = W``, ``w_hh = R``, ``b_ih = Wb``, ``b_hh = Rb``. ``direction="bidirectional"`` puts the
backward weights at index 1, like edgegru's ``reverse`` blocks. ``activations`` may make the
gates ``HardSigmoid`` (``min(max(alpha x + beta, 0), 1)``, defaults 0.2 and 0.5, alpha and beta
from ``activation_alpha/beta`` as onnxruntime consumes them: the first values, which a
bidirectional node must use for both directions); any other activation and ``clip`` are
refused.

**Whole graphs** (:func:`load_model`): the graph must be one sequence input -> GRU nodes in a
chain -> optionally the last time step (``Gather`` index -1 or ``Slice [-1:]`` on the time
axis: a sequence-to-one model, ``head_on="last"``) -> optionally a head of dense layers, each a
``MatMul`` or ``Gemm`` by a constant, an optional ``Add`` of a constant bias and an optional
``Relu``, ``Tanh``, ``Sigmoid`` or ``HardSigmoid`` -> one output. The shape plumbing exporters write around
them (``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Reshape`` of the directions into features,
``Shape``/``Gather``/``Concat``/``ConstantOfShape``/``Slice`` making a zero ``initial_h``,
``Constant``, ``Identity``, ``Cast``, and ``Mul``/``Add``/``Sub`` of shapes) is followed by what
it does to each tensor's axes, not by node names; shapes computed from the sequence's keep the
sizes edgegru knows (directions, widths) and mark the batch and time as known at run time only. Any other computing op, or an attribute edgegru cannot honour, is refused with the
node and the op named. The converted model takes ``(B, T, I)`` (or ``(T, I)``) whatever the
graph's layout. A ``direction="reverse"`` GRU is a forward GRU run on the time-reversed
sequence, its output reversed back: a stack of them (``GRUConfig(reverse=True)``) runs
whole sequences, and ``step`` refuses it as it refuses bidirectional ones.

**Run-time inputs.** ``initial_h`` and ``sequence_lens`` are inputs of the node, not weights:
in a graph, ``initial_h`` must be absent or constant zeros (edgegru starts from zeros, or from
``model.run(X, h0=...)`` / ``model.state``) and ``sequence_lens`` must be absent. To run a
single node with its run-time inputs (ONNX's node tests do), use :class:`GRUNode`: ``initial_h``
becomes ``h0`` and each batch element runs over its own length, with ``Y`` zero past it.
"""
import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.formats.arrays import Allowance
from edgegru.model import GRUConfig, GRUWeights, Model, block_name

_GRU_ATTRIBUTES = {"hidden_size", "direction", "layout", "linear_before_reset", "activations",
                   "activation_alpha", "activation_beta", "clip", "output_sequence"}
_HEAD_OPS = {"MatMul", "Gemm", "Add", "Relu", "Tanh", "Sigmoid", "HardSigmoid"}
_PLUMBING = {"Constant", "Identity", "Cast", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat",
             "Slice", "Transpose", "Reshape", "ConstantOfShape", "Expand", "Mul", "Add", "Sub"}
# A size only known at run time (batch, time) inside a shape computed from the sequence's
# (Shape, Slice, Mul, Concat): exporters compute Reshape targets such as [T, B, D * H] so.
_UNKNOWN = np.int64(-(1 << 62))


def _onnx(name=None):
    try:
        import onnx
    except ImportError:
        raise ModelFormatError(f"{name + ': ' if name else ''}reading ONNX files needs the onnx "
                               f"package: pip install 'edgegru[onnx]'") from None
    return onnx


# -- one GRU node ---------------------------------------------------------------------------
def gru_attributes(node):
    """{name: value} of a GRU node, refusing what edgegru cannot run."""
    onnx = _onnx()
    where = f"node {node.name or '(unnamed)'} (GRU)"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    unknown = sorted(set(attrs) - _GRU_ATTRIBUTES)
    if unknown:
        raise ModelFormatError(f"{where}: unsupported attribute(s) {', '.join(unknown)}")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelFormatError(f"{where}: direction {direction!r} is not forward, reverse or "
                               f"bidirectional")
    D = 2 if direction == "bidirectional" else 1
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    gates = {a.lower() for a in acts[0::2]}
    if acts and (len(acts) != 2 * D or {a.lower() for a in acts[1::2]} != {"tanh"}
                 or len(gates) != 1 or gates - {"sigmoid", "hardsigmoid"}):
        raise ModelFormatError(f"{where}: activations {acts} are not supported; edgegru runs "
                               f"Sigmoid or HardSigmoid gates (the same in both directions) "
                               f"and a Tanh candidate")
    if "clip" in attrs:
        raise ModelFormatError(f"{where}: attribute clip is not supported (edgegru runs the "
                               f"unclipped activations)")
    gate = {"gate_activation": "sigmoid"}
    params = {k: list(attrs.get("activation_" + k, [])) for k in ("alpha", "beta")}
    if gates == {"hardsigmoid"}:
        gate = {"gate_activation": "hard_sigmoid", "gate_alpha": 0.2, "gate_beta": 0.5}
        for k, values in params.items():
            if len(set(values)) > 1 and D == 2:
                raise ModelFormatError(f"{where}: activation_{k} {values}: the two directions' "
                                       f"HardSigmoid would differ (edgegru runs one gate "
                                       f"activation per model)")
            if values:
                gate["gate_" + k] = float(values[0])
    elif params["alpha"] or params["beta"]:
        raise ModelFormatError(f"{where}: activation_alpha/beta are given, but no activation "
                               f"of this node takes them")
    layout = attrs.get("layout", 0)
    lbr = attrs.get("linear_before_reset", 0)
    if layout not in (0, 1) or lbr not in (0, 1):
        raise ModelFormatError(f"{where}: layout={layout}, linear_before_reset={lbr}: each "
                               f"must be 0 or 1")
    return {"direction": direction, "D": D, "layout": layout, "reset_after": bool(lbr),
            "hidden_size": attrs.get("hidden_size"), "gate": gate}


def gru_layer(W, R, B, layer, attrs, where):
    """One GRU node's weights -> edgegru arrays for ``layer`` (gate order z|r|h -> r|z|n)."""
    W, R = _float32(W, where + " W"), _float32(R, where + " R")
    D = attrs["D"]
    if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 3 * R.shape[2] or R.shape[2] == 0:
        raise ModelFormatError(f"{where}: R has shape {R.shape}, expected ({D}, 3*H, H)")
    H = R.shape[2]
    if attrs["hidden_size"] is not None and attrs["hidden_size"] != H:
        raise ModelFormatError(f"{where}: hidden_size={attrs['hidden_size']} but R has shape "
                               f"{R.shape}")
    if W.ndim != 3 or W.shape[:2] != (D, 3 * H) or W.shape[2] == 0:
        raise ModelFormatError(f"{where}: W has shape {W.shape}, expected ({D}, {3 * H}, "
                               f"input_size)")
    B = np.zeros((D, 6 * H), np.float32) if B is None else _float32(B, where + " B")
    if B.shape != (D, 6 * H):
        raise ModelFormatError(f"{where}: B has shape {B.shape}, expected ({D}, {6 * H})")
    order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]               # rows z | r | h -> r | z | n
    arrays = {}
    for d in range(D):
        p = block_name(layer, d)
        arrays[p + "w_ih"] = W[d][order]
        arrays[p + "w_hh"] = R[d][order]
        arrays[p + "b_ih"] = B[d, :3 * H][order]
        arrays[p + "b_hh"] = B[d, 3 * H:][order]
    return arrays, W.shape[2], H


class GRUNode:
    """One ONNX GRU node with its weights, run with the node's own run-time inputs.

    ``run(X, sequence_lens, initial_h)`` returns ``(Y, Y_h)`` shaped as the node's outputs
    (see the module docstring): ``initial_h`` becomes ``h0`` and ``sequence_lens`` the
    ``lengths`` of :meth:`edgegru.Model.run`, each batch element running over its own length,
    ``Y`` being zero past it; a reverse-only node reads each from its own end.
    """

    def __init__(self, node, W, R, B=None, backend=None):
        self.attrs = gru_attributes(node)
        arrays, I, H = gru_layer(W, R, B, 0, self.attrs, f"node {node.name or '(unnamed)'}")
        D = self.attrs["D"]
        config = GRUConfig(input_size=I, hidden_size=H, bidirectional=D == 2,
                           reverse=self.attrs["direction"] == "reverse",
                           reset_after=self.attrs["reset_after"], **self.attrs["gate"])
        self.model = Model(config, GRUWeights(arrays), backend=backend)

    def run(self, X, sequence_lens=None, initial_h=None):
        layout, D, H = self.attrs["layout"], self.attrs["D"], self.model.hidden_size
        X = np.asarray(X, np.float32)
        Xb = X if layout else X.transpose(1, 0, 2)                  # (B, T, I)
        Bn, T = Xb.shape[:2]
        h0 = None if initial_h is None else np.asarray(initial_h, np.float32)
        if layout and initial_h is not None:
            h0 = h0.transpose(1, 0, 2)                                # (B, D, H) -> (D, B, H)
        lens = np.full(Bn, T) if sequence_lens is None else np.asarray(sequence_lens)
        Y, Y_h = self.model.run(Xb, h0=h0, lengths=lens, return_state=True, all_steps=True)
        Y = Y.reshape(Bn, T, D, H)
        if layout:
            return Y, Y_h.transpose(1, 0, 2)
        return Y.transpose(1, 2, 0, 3), Y_h


# -- whole graphs ----------------------------------------------------------------------------
class _Dyn:
    """A value computed from the input's shape (Shape and what follows): unknown here."""


class _FinalState(_Dyn):
    """A GRU node's Y_h: shape plumbing may carry it, a head may not read it."""


class _Fill:
    """A tensor of unknown (input-dependent) shape with every element equal to ``value``."""
    def __init__(self, value):
        self.value = value


class _Seq:
    """A tensor computed from the sequence input: its axes, by meaning, and how far along the
    chain it is (``stage``: the number of GRU layers applied, then "matmul", "bias", "sigmoid").
    Axes: B batch, T time, F features, D directions, H hidden, 1 a unit axis."""
    def __init__(self, axes, stage):
        self.axes, self.stage = tuple(axes), stage


def load_model(data, name="<bytes>", backend=None):
    """The bytes of an ``.onnx`` file -> Model (see the module docstring for what is read)."""
    onnx = _onnx(name)
    try:
        proto = onnx.load_from_string(bytes(data))
    except Exception as exc:           # google.protobuf DecodeError and friends
        raise ModelFormatError(f"{name}: not a readable ONNX file ({type(exc).__name__}: "
                               f"{str(exc)[:100]})") from None
    try:
        return _Graph(proto, name, Allowance(len(data), name)).model(backend)
    except ModelFormatError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            MemoryError) as exc:
        raise ModelFormatError(f"{name}: malformed ONNX graph ({type(exc).__name__}: "
                               f"{str(exc)[:120]})") from None


class _Graph:
    def __init__(self, proto, name, allowance):
        onnx = _onnx()
        self.name, self.numpy_helper = name, onnx.numpy_helper
        self.allowance = allowance
        self.helper = onnx.helper
        graph = proto.graph
        if not graph.node:
            raise ModelFormatError(f"{name}: the ONNX graph has no nodes")
        self.values = {}
        for init in graph.initializer:
            self.values[init.name] = self._tensor(init)
        inputs = [i.name for i in graph.input if i.name not in self.values]
        if len(inputs) != 1:
            raise ModelFormatError(f"{name}: the graph has {len(inputs)} run-time inputs "
                                   f"({', '.join(inputs)}); edgegru reads graphs with one: the "
                                   f"sequence (an initial state goes to model.run(X, h0=...))")
        self.input_name = inputs[0]
        # the input's first two axes ("a", "b") are named B and T by the first GRU's layout
        self.values[self.input_name] = _Seq(("a", "b", "F"), 0)
        self.input_layout = None
        self.layers, self.arrays, self.layouts = [], {}, []
        self.head = []                  # the head's layers: {weight, bias, activation}
        self.last_step = False          # the sequence was cut to its last step (Gather/Slice)
        for node in graph.node:
            self._node(node)
        self.outputs = [o.name for o in graph.output]

    def model(self, backend):
        seqs = [o for o in self.outputs if isinstance(self.values.get(o), _Seq)]
        if len(seqs) != 1:
            raise ModelFormatError(f"{self.name}: expected one graph output computed from the "
                                   f"sequence, found {len(seqs)} ({', '.join(self.outputs)})")
        if not self.layers:
            raise ModelFormatError(f"{self.name}: the graph has no GRU node")
        out = self.values[seqs[0]]
        if out.stage not in (len(self.layers), "matmul", "bias", "act"):
            raise ModelFormatError(f"{self.name}: output {seqs[0]} is computed by GRU layer "
                                   f"{out.stage} of {len(self.layers)}: the graph is not a chain")
        first = self.layers[0]
        reset_after = {layer["reset_after"] for layer in self.layers}
        if len(reset_after) > 1:
            raise ModelFormatError(f"{self.name}: the GRU nodes mix linear_before_reset 0 "
                                   f"and 1; edgegru runs one variant per model")
        if any(layer["gate"] != first["gate"] for layer in self.layers):
            raise ModelFormatError(f"{self.name}: the GRU nodes' gate activations differ "
                                   f"({[layer['gate'] for layer in self.layers]}); edgegru runs "
                                   f"one per model")
        reverse = {layer["reverse"] for layer in self.layers}
        if len(reverse) > 1:
            raise ModelFormatError(f"{self.name}: the GRU nodes mix reverse and other "
                                   f"directions; edgegru stacks forward and bidirectional "
                                   f"layers, or reverse ones only")
        dirs = tuple(layer["D"] for layer in self.layers)
        arrays = dict(self.arrays)
        config = GRUConfig(input_size=first["I"], hidden_size=self.layers[-1]["H"],
                           hidden_sizes=tuple(layer["H"] for layer in self.layers),
                           num_layers=len(self.layers), bidirectional=2 in dirs,
                           layer_directions=dirs, reverse=reverse.pop(),
                           reset_after=reset_after.pop(), **first["gate"],
                           head_on="last" if self.last_step else "all",
                           **self._head_config(arrays))
        weights = GRUWeights(arrays)
        weights.check(config, source=self.name)
        source = {"format": "onnx", "input_axes": self.input_layout,
                  "output": seqs[0], "output_axes": "".join(out.axes),
                  "ignored_outputs": [o for o in self.outputs if o != seqs[0]] or None}
        return Model(config, weights, meta={"provenance": {"source": source}}, backend=backend)

    def _head_config(self, arrays):
        """Put the head's arrays into ``arrays``; its GRUConfig fields."""
        if not self.head:
            return {}
        hard = {layer["alpha_beta"] for layer in self.head if "alpha_beta" in layer}
        if len(hard) > 1:
            raise ModelFormatError(f"{self.name}: the head's HardSigmoid nodes differ in alpha "
                                   f"and beta {sorted(hard)}; edgegru runs one per head")
        units = []
        for i, layer in enumerate(self.head):
            name = "head." if i == len(self.head) - 1 else f"head{i}."
            O = len(layer["weight"])
            arrays[name + "weight"] = layer["weight"]
            arrays[name + "bias"] = layer.get("bias", np.zeros(O, np.float32))
            units.append((O, layer.get("activation", "linear")))
        alpha, beta = hard.pop() if hard else (1 / 6, 0.5)
        return {"output_size": units[-1][0], "head_activation": units[-1][1],
                "head_hidden": tuple(units[:-1]), "head_alpha": alpha, "head_beta": beta}

    # -- one node at a time, in the graph's (topological) order -----------------------------
    def _node(self, node):
        where = f"{self.name}: node {node.name or '(unnamed)'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise ModelFormatError(f"{where}: operators of domain {node.domain!r} are not "
                                   f"supported")
        ins = []
        for i in node.input:
            if i == "":
                ins.append(None)
            elif i in self.values:
                ins.append(self.values[i])
            else:
                raise ModelFormatError(f"{where}: input {i!r} is used before it is computed")
        attrs = {a.name: self.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GRU":
            outs = self._gru(node, ins, where)
        elif node.op_type in _HEAD_OPS and any(isinstance(v, _FinalState) for v in ins):
            raise ModelFormatError(f"{where}: reads a GRU's final state (Y_h); edgegru's head "
                                   f"reads the sequence output Y: write fc(out[:, -1]) rather "
                                   f"than fc(h_n[-1]) (the same numbers for a forward GRU)")
        elif node.op_type in _HEAD_OPS and any(isinstance(v, _Seq) for v in ins):
            outs = [self._head(node.op_type, ins, attrs, where)]
        elif node.op_type in _PLUMBING:
            outs = [self._plumbing(node.op_type, ins, attrs, where)]
        else:
            raise ModelFormatError(f"{where}: op {node.op_type} is not supported; edgegru reads "
                                   f"GRU nodes, a head of dense layers (MatMul/Gemm, Add, "
                                   f"Relu/Tanh/Sigmoid/HardSigmoid), the last step (Gather/Slice) "
                                   f"and shape plumbing")
        for name, value in zip(node.output, outs):
            if name:
                self.values[name] = value

    def _gru(self, node, ins, where):
        ins = ins + [None] * (6 - len(ins))
        X, W, R, B, seq_lens, h0 = ins[:6]
        attrs = gru_attributes(node)
        for arg, label in ((W, "W"), (R, "R"), (B, "B")):
            if arg is not None and not isinstance(arg, np.ndarray):
                raise ModelFormatError(f"{where}: {label} must be a constant (an initializer), "
                                       f"not computed at run time")
        if seq_lens is not None:
            raise ModelFormatError(f"{where}: sequence_lens is set; edgegru runs every batch "
                                   f"element over the whole sequence (run shorter sequences "
                                   f"separately)")
        if not (h0 is None or isinstance(h0, _Fill) and h0.value == 0
                or isinstance(h0, np.ndarray) and not h0.any()):
            raise ModelFormatError(f"{where}: initial_h is not constant zeros; edgegru takes an "
                                   f"initial state at run time (model.run(X, h0=...) or "
                                   f"model.state), not in the model file")
        k = len(self.layers)
        want = ("B", "T", "F") if attrs["layout"] else ("T", "B", "F")
        if not isinstance(X, _Seq) or X.stage != k or len(X.axes) != 3 or X.axes[2] != "F" \
                or (k == 0 and set(X.axes[:2]) != {"a", "b"}) or (k and X.axes != want):
            got = "a constant" if not isinstance(X, _Seq) else \
                f"axes {''.join(X.axes)} after {X.stage} layer(s)"
            raise ModelFormatError(f"{where}: X must be the previous layer's output (or the "
                                   f"graph input) as {''.join(want)}, got {got}")
        arrays, I, H = gru_layer(W, R, B, k, attrs, where)
        self.arrays.update(arrays)
        self.layers.append({"D": attrs["D"], "H": H, "I": I, "layout": attrs["layout"],
                            "reverse": attrs["direction"] == "reverse",
                            "reset_after": attrs["reset_after"], "gate": attrs["gate"]})
        if k == 0:                                  # the graph input's layout, for the record
            self.input_layout = "BTF" if X.axes[:2] == ("a", "b")[::1 if attrs["layout"]
                                                                 else -1] else "TBF"
        Y = _Seq(("B", "T", "D", "H") if attrs["layout"] else ("T", "D", "B", "H"), k + 1)
        return [Y, _FinalState()]                              # Y_h: not followed further

    def _head(self, op, ins, attrs, where):
        """The head: layers of MatMul/Gemm by a constant, an optional Add of a constant bias
        and an optional activation, one after another on the last GRU layer's output."""
        seq = next(v for v in ins if isinstance(v, _Seq))
        other = [v for v in ins if v is not seq]
        top = len(self.layers)
        if op in ("MatMul", "Gemm"):
            if not (seq.stage == top and top or seq.stage in ("matmul", "bias", "act")) \
                    or seq.axes[-1] != "F" or seq is not ins[0]:
                raise ModelFormatError(f"{where}: a head must multiply the last GRU layer's "
                                       f"output (features last) by a constant matrix")
            w = other[0] if other else None
            if not isinstance(w, np.ndarray) or w.ndim != 2:
                raise ModelFormatError(f"{where}: the head's matrix must be a constant 2-D "
                                       f"initializer")
            w = _float32(w, where)
            if op == "Gemm":
                if attrs.get("transA", 0):
                    raise ModelFormatError(f"{where}: Gemm with transA=1 is not supported")
                w = w.T if attrs.get("transB", 0) else w
                w = w * np.float32(attrs.get("alpha", 1.0))
            width = self._width(seq)
            if w.shape[0] != width:
                raise ModelFormatError(f"{where}: the head's matrix has shape {w.shape}, "
                                       f"expected ({width}, units)")
            self.head.append({"weight": np.ascontiguousarray(w.T)})     # (O, F)
            if op == "Gemm" and len(other) > 1 and other[1] is not None:
                self._head_bias(other[1] * np.float32(attrs.get("beta", 1.0)), where)
            return _Seq(seq.axes, "matmul")
        if op == "Add":
            if seq.stage != "matmul" or len(other) != 1:
                raise ModelFormatError(f"{where}: Add is read only as a head layer's bias, "
                                       f"right after its MatMul")
            self._head_bias(other[0], where)
            return _Seq(seq.axes, "bias")
        if seq.stage not in ("matmul", "bias"):
            raise ModelFormatError(f"{where}: {op} is read only as a head layer's activation, "
                                   f"after its MatMul/Gemm (edgegru's heads are dense layers, "
                                   f"each with an activation)")
        layer = self.head[-1]
        layer["activation"] = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid",
                               "HardSigmoid": "hard_sigmoid"}[op]
        if op == "HardSigmoid":
            layer["alpha_beta"] = (float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)))
        return _Seq(seq.axes, "act")

    def _width(self, seq):
        # the feature width of a tensor on the chain: a GRU layer's D * H, or a head layer's
        if isinstance(seq.stage, int):
            layer = self.layers[seq.stage - 1]
            return layer["D"] * layer["H"]
        return len(self.head[-1]["weight"])

    def _head_bias(self, b, where):
        O = len(self.head[-1]["weight"])
        if not isinstance(b, np.ndarray) or b.size != O or b.ndim > 1 and b.shape[-1] != O:
            raise ModelFormatError(f"{where}: the head's bias must be a constant of {O} "
                                   f"values")
        self.head[-1]["bias"] = _float32(b, where).reshape(O)

    def _plumbing(self, op, ins, attrs, where):
        if op == "Constant":
            return self._constant(attrs, where)
        x = ins[0] if ins else None
        consts = ins[1:]
        if any(isinstance(c, (_Seq, _Dyn, _Fill)) for c in consts) and op not in (
                "Concat", "ConstantOfShape", "Expand", "Mul", "Add", "Sub"):
            raise ModelFormatError(f"{where}: {op} with input-dependent parameters is not "
                                   f"supported")
        if isinstance(x, _Seq):
            return self._seq_plumbing(op, x, consts, attrs, where)
        if op == "Shape":
            return _Dyn()
        if op in ("Mul", "Add", "Sub") and any(isinstance(v, (_Dyn, _Fill)) for v in ins):
            return _Dyn()
        if op == "ConstantOfShape":
            value = attrs.get("value")
            v = float(self.numpy_helper.to_array(value).reshape(-1)[0]) if value is not None \
                else 0.0
            if isinstance(x, _Dyn) or _unknown(x):
                return _Fill(v)
            shape = _shape(x)
            self.allowance.take(4 * np.prod(shape, dtype=np.float64), f"{where}: "
                                f"ConstantOfShape {shape}")
            return np.full(shape, v, np.float32)
        if op == "Concat":
            if any(isinstance(v, _Seq) for v in ins):
                raise ModelFormatError(f"{where}: Concat of the sequence is not supported")
            if any(isinstance(v, (_Dyn, _Fill)) for v in ins):
                return _Dyn()
            return np.concatenate([np.atleast_1d(v) for v in ins], axis=attrs.get("axis", 0))
        if op == "Expand" and isinstance(x, np.ndarray) and (isinstance(ins[1], _Dyn)
                                                              or _unknown(ins[1])):
            if x.size and np.all(x == x.reshape(-1)[0]):
                return _Fill(float(x.reshape(-1)[0]))
            return _Dyn()
        if isinstance(x, (_Dyn, _Fill)):
            return x                   # a slice, reshape or transposition of it: still so
        if not isinstance(x, np.ndarray):
            raise ModelFormatError(f"{where}: missing input")
        if op == "Expand":            # the one op here whose result can outgrow its inputs
            c = np.asarray(consts[0]).reshape(-1) if consts and consts[0] is not None else []
            try:
                shape = np.broadcast_shapes(x.shape, tuple(int(s) for s in c))
            except (ValueError, TypeError, OverflowError):
                raise ModelFormatError(f"{where}: Expand of {x.shape} to {list(c)} does not "
                                       f"broadcast") from None
            self.allowance.take(x.dtype.itemsize * np.prod(shape, dtype=np.float64),
                                f"{where}: Expand to {tuple(shape)}")
        return _eval_constant(op, x, consts, attrs, where)

    def _constant(self, attrs, where):
        if "value" in attrs:
            return self.numpy_helper.to_array(attrs["value"])
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.array(attrs[key], dtype=dtype)
        raise ModelFormatError(f"{where}: Constant without a value, value_float(s) or "
                               f"value_int(s)")

    def _seq_plumbing(self, op, x, consts, attrs, where):
        axes = list(x.axes)
        if op in ("Identity", "Cast"):
            if op == "Cast" and attrs.get("to") not in (1, 10, 11):      # float, f16, double
                raise ModelFormatError(f"{where}: Cast of the sequence to a non-float type")
            return _Seq(axes, x.stage)
        if op == "Shape":
            return self._shape_of(x, attrs)
        if op == "Transpose":
            perm = attrs.get("perm", list(range(len(axes)))[::-1])
            if sorted(perm) != list(range(len(axes))):
                raise ModelFormatError(f"{where}: perm {perm} does not fit {len(axes)} axes")
            return _Seq([axes[p] for p in perm], x.stage)
        if op in ("Squeeze", "Unsqueeze"):
            which = consts[0] if consts and consts[0] is not None else attrs.get("axes")
            if which is None:
                raise ModelFormatError(f"{where}: {op} without axes is not supported on the "
                                       f"sequence")
            which = [int(a) for a in np.asarray(which).reshape(-1)]
            if op == "Squeeze":
                which = sorted({a % len(axes) for a in which}, reverse=True)
                for a in which:
                    if not (axes[a] == "1" or axes[a] == "D" and self._directions(x) == 1):
                        raise ModelFormatError(f"{where}: Squeeze of axis {a} ({axes[a]}), "
                                               f"which need not have size 1")
                    if axes[a] == "D":                 # one direction: H is the features
                        axes = ["F" if ax == "H" else ax for ax in axes]
                    del axes[a]
                return _Seq(axes, x.stage)
            for a in sorted(a % (len(axes) + len(which)) for a in which):
                axes.insert(a, "1")
            return _Seq(axes, x.stage)
        if op == "Reshape":
            return self._reshape(x, [int(s) for s in np.asarray(consts[0]).reshape(-1)], where)
        if op in ("Gather", "Slice"):
            return self._last_step(op, x, consts, attrs, where)
        raise ModelFormatError(f"{where}: {op} of the sequence is not supported")

    def _last_step(self, op, x, consts, attrs, where):
        """Gather index -1, or Slice [-1:], on the time axis: a sequence-to-one model
        (``fc(out[:, -1])``). Gather drops the axis, [-1] and Slice keep it with length 1."""
        axes = list(x.axes)
        if op == "Gather":
            index = np.asarray(consts[0])
            which = [attrs.get("axis", 0) % len(axes)]
            last = index.size == 1 and int(index.reshape(-1)[0]) == -1
        else:
            c = [None if v is None else np.asarray(v).reshape(-1) for v in consts]
            which = [int(a) % len(axes) for a in (c[2] if len(c) > 2 and c[2] is not None
                                                  else range(len(c[0])))]
            steps = c[3] if len(c) > 3 and c[3] is not None else [1] * len(which)
            last = len(which) == 1 and int(c[0][0]) == -1 and int(c[1][0]) >= 1 << 30 \
                and int(steps[0]) == 1
        if not (last and axes[which[0]] == "T" and isinstance(x.stage, int) and x.stage) \
                or self.last_step:
            picked = "".join(axes[a] for a in which if a < len(axes))
            raise ModelFormatError(f"{where}: {op} of the sequence (axes {''.join(axes)}, "
                                   f"taking axis {picked}) is not supported; edgegru reads "
                                   f"the last time step of a GRU's output (out[:, -1]) only")
        self.last_step = True
        if op == "Gather" and index.ndim == 0:
            del axes[which[0]]
        else:
            axes[which[0]] = "1"
        return _Seq(axes, x.stage)

    def _shape_of(self, x, attrs):
        """Shape of a tensor on the chain: the sizes edgegru knows (directions, hidden and
        feature widths, unit axes), _UNKNOWN for the batch and time."""
        sizes = {"1": 1}
        if isinstance(x.stage, int) and x.stage:
            layer = self.layers[x.stage - 1]
            sizes.update(D=layer["D"], H=layer["H"], F=self._width(x))
        elif x.stage:
            sizes["F"] = self._width(x)
        shape = np.array([sizes.get(a, _UNKNOWN) for a in x.axes], np.int64)
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return shape[start:end]

    def _reshape(self, x, shape, where):
        """Reshapes that only drop unit axes and merge directions into features, (D, H) -> F,
        forward first. Sizes of B and T may be written out (exporters bake in the traced ones):
        edgegru's model takes any B and T."""
        D = self._directions(x)
        axes = [a for a in x.axes if not (a == "1" or a == "D" and D == 1)]
        if axes[-2:] == ["D", "H"]:
            axes = axes[:-2] + ["F"]
        axes = ["F" if a == "H" and "D" not in axes else a for a in axes]
        width = self._width(x) if x.stage else None
        if len(shape) == len(axes) and axes[-1] == "F" and "D" not in axes \
                and (shape[-1] in (-1, width) or shape[-1] == 0 and x.axes[-1] == "F") \
                and sum(s == -1 for s in shape) <= 1 \
                and all(s >= -1 or s == _UNKNOWN for s in shape):
            return _Seq(axes, x.stage)
        raise ModelFormatError(f"{where}: Reshape of the sequence (axes {''.join(x.axes)}) to "
                               f"{shape} is not supported (only dropping unit axes and "
                               f"merging directions into features)")

    def _directions(self, x):
        return self.layers[x.stage - 1]["D"] if isinstance(x.stage, int) and x.stage else 1

    def _tensor(self, proto):
        if proto.data_location == 1 or proto.external_data:      # TensorProto.EXTERNAL
            raise ModelFormatError(f"{self.name}: initializer {proto.name!r} keeps its data in "
                                   f"another file (ONNX external data), which edgegru does not "
                                   f"read: save the model with its weights inside")
        self.allowance.take(8 * np.prod(list(proto.dims), dtype=np.float64),
                            f"initializer {proto.name!r} of shape {tuple(proto.dims)}")
        try:
            return self.numpy_helper.to_array(proto)
        except Exception as exc:
            raise ModelFormatError(f"{self.name}: initializer {proto.name!r} cannot be read "
                                   f"({type(exc).__name__}: {str(exc)[:80]})") from None


def _unknown(shape):
    """True for a shape computed from the sequence's holding a run-time size."""
    return isinstance(shape, np.ndarray) and shape.dtype == np.int64 \
        and bool((shape == _UNKNOWN).any())


def _eval_constant(op, x, consts, attrs, where):
    """Shape plumbing on constants, in NumPy (the ops of :data:`_PLUMBING`)."""
    c = [np.asarray(v) if v is not None else None for v in consts]
    if op in ("Mul", "Add", "Sub"):
        a, b = np.asarray(x), c[0]
        with np.errstate(over="ignore"):
            value = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract}[op](a, b)
        if value.dtype == np.int64:           # a run-time size in, a run-time size out
            value = np.where((a == _UNKNOWN) | (b == _UNKNOWN), _UNKNOWN, value)
        return value
    if op in ("Identity", "Cast"):
        return x
    if op == "Shape":
        return np.array(x.shape, np.int64)
    if op == "Gather":
        return np.asarray(np.take(x, c[0].astype(np.int64), axis=attrs.get("axis", 0)))
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Unsqueeze":
        which = c[0] if c else attrs["axes"]
        for a in sorted(int(a) % (x.ndim + len(which)) for a in np.reshape(which, -1)):
            x = np.expand_dims(x, a)
        return x
    if op == "Squeeze":
        which = c[0] if c else attrs.get("axes")
        return np.squeeze(x, axis=None if which is None else
                          tuple(int(a) for a in np.reshape(which, -1)))
    if op == "Reshape":
        shape = [int(s) for s in c[0].reshape(-1)]
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Slice":
        starts, ends = c[0].reshape(-1), c[1].reshape(-1)
        axes = c[2].reshape(-1) if len(c) > 2 and c[2] is not None else range(len(starts))
        steps = c[3].reshape(-1) if len(c) > 3 and c[3] is not None else [1] * len(starts)
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return x[tuple(index)]
    if op == "Expand":
        return x * np.ones(tuple(int(s) for s in c[0].reshape(-1)), x.dtype)
    raise ModelFormatError(f"{where}: {op} on constants is not supported")


def _shape(x):
    shape = tuple(int(s) for s in np.asarray(x).reshape(-1))
    if any(s < 0 for s in shape) or np.prod(shape, dtype=np.float64) > 1 << 22:
        raise ModelFormatError(f"ConstantOfShape of shape {shape} is not a plausible state")
    return shape


def _float32(a, where):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: dtype {a.dtype}, expected floats")
    return np.ascontiguousarray(a, dtype=np.float32)
