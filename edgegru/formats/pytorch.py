"""PyTorch state dicts (``nn.GRU`` / ``nn.GRUCell``, optional ``nn.Linear`` head) -> Model.

All knowledge of PyTorch's GRU layout is here. For layer k (``_reverse`` for the backward
direction of a bidirectional layer), with any prefix such as ``gru.``::

    weight_ih_l{k}[_reverse]   (3H, in_k)   rows: r | z | n   (in_0 = input_size, else H * dirs)
    weight_hh_l{k}[_reverse]   (3H, H)      rows: r | z | n
    bias_ih_l{k}[_reverse]     (3H,)        absent when bias=False
    bias_hh_l{k}[_reverse]     (3H,)        absent when bias=False

``nn.GRUCell`` writes the same arrays without the ``_l{k}`` suffix. PyTorch's GRU is the
reset-after variant: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``. The gate order r | z | n
is already edgegru's, so the blocks are taken as they are. A head is an ``nn.Linear``:
``{prefix}weight (O, H * dirs)`` and ``{prefix}bias (O,)``, or a chain of them with
activations between, named by the caller (``head=["fc1", "relu", "fc2"]``): a state dict holds
no trace of parameterless modules (``nn.ReLU``), so the activations of a deeper head, in an
``nn.Sequential`` or not, cannot be read from it and are never guessed.
"""
import dataclasses
import re

import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.model import GRUConfig, GRUWeights, Model, block_name

_GRU_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)"
                      r"(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?$")


def to_numpy(value, key="array"):
    """A torch tensor (without importing torch) or array-like -> float32 numpy array."""
    if hasattr(value, "detach"):                          # torch.Tensor, any device or dtype
        value = value.detach().cpu()
        if hasattr(value, "float"):
            value = value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise ModelFormatError(f"state dict entry {key} is not an array ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise ModelFormatError(f"state dict entry {key} has dtype {arr.dtype}, expected floats")
    return np.ascontiguousarray(arr, dtype=np.float32)


def from_state_dict(state_dict, head=None, prefix=None, meta=None, backend=None, head_on="all",
                    layers=None):
    """A :class:`~edgegru.Model` from a PyTorch ``state_dict`` (torch tensors or numpy arrays).

    head: None finds a lone ``nn.Linear`` of the right shape; a key prefix (``"fc"`` or
    ``"fc."``) picks one; False means no head; a list names a deeper head in order, Linear
    prefixes and activations (``["fc1", "relu", "fc2"]``, ``["mlp.0", "tanh", "mlp.2",
    "sigmoid"]``; activations: relu, tanh, sigmoid, hardsigmoid, identity). prefix: which GRU,
    when the dict holds several that are not one stack. layers: the GRU modules' prefixes,
    bottom first, when several make one stack (``["gru1", "gru2"]``; without it, several GRUs
    are stacked in the order of their keys, if their sizes chain so). head_on: ``"last"`` for a
    model whose head reads the last step only (``fc(out[:, -1])``), which a state dict cannot
    say: ``run`` then returns that.
    """
    if not hasattr(state_dict, "keys"):
        raise ModelFormatError(f"expected a state dict (a mapping of names to tensors), "
                               f"got {type(state_dict).__name__}")
    keys = [k for k in state_dict.keys() if isinstance(k, str)]
    found = {}  # prefix -> {(kind, layer, direction): key}
    for key in keys:
        m = _GRU_KEY.match(key)
        if m:
            layer = -1 if m["layer"] is None else int(m["layer"])    # -1: a GRUCell
            found.setdefault(m["prefix"], {})[(m["kind"], layer, int(bool(m["reverse"])))] = key
    if prefix is not None:
        prefix = prefix if prefix == "" or prefix.endswith(".") else prefix + "."
        if prefix not in found:
            raise ModelFormatError(f"no GRU weights under prefix {prefix!r}; "
                                   f"found: {_prefix_list(found)}")
        found = {prefix: found[prefix]}
    if not found:
        raise ModelFormatError("no GRU weights in the state dict: expected keys such as "
                               "'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0' "
                               "(any prefix, '_reverse' for a backward direction)")
    config, arrays, order = _stack(state_dict, found, layers)
    gru_prefix = order[-1]
    width = config.hidden_size * config.num_directions
    if isinstance(head, (list, tuple)):
        chain = _chain(head)
    else:
        head_prefix = _find_head(state_dict, keys, gru_prefix, head, width)
        chain = [] if head_prefix is None else [(head_prefix, "linear")]
    head_prefix = [p for p, _ in chain] or None
    if head_prefix and len(head_prefix) == 1:
        head_prefix = head_prefix[0]
    if head_on not in ("all", "last"):
        raise ModelFormatError(f"head_on must be 'all' or 'last', got {head_on!r}")
    config = dataclasses.replace(config, head_on=head_on, **_chain_arrays(state_dict, chain,
                                                                          width, arrays))
    weights = GRUWeights(arrays)
    weights.check(config, source="state dict")
    info = {"source": {"format": "pytorch-state-dict",
                       "gru_prefix": gru_prefix if len(order) == 1 else order,
                       "head_prefix": head_prefix}}
    return Model(config, weights, meta={"provenance": info, **(meta or {})}, backend=backend)


def _stack(sd, found, layers):
    """(config, arrays, prefixes bottom first) of the GRU modules making the stack: the one
    found, those named by ``layers``, or all in the order of their keys if their sizes chain."""
    if layers is not None:
        order = [p if p == "" or p.endswith(".") else p + "." for p in layers]
        missing = [p for p in order if p not in found]
        if missing or not order:
            raise ModelFormatError(f"layers: no GRU weights under {missing or 'no prefix'}; "
                                   f"found: {_prefix_list(found)}")
    else:
        order = list(found)                     # the order of the keys: of the modules
    parts = [_gru_arrays(sd, p, found[p]) for p in order]
    first = parts[0][0]
    for (below, _), (above, _), p in zip(parts, parts[1:], order[1:]):
        if above.input_size != below.hidden_size * below.num_directions:
            if layers is None:
                raise ModelFormatError(
                    f"the state dict holds several GRUs ({_prefix_list(found)}) that do not "
                    f"stack in the order of their keys; name the stack, bottom first, with "
                    f"layers=[...] (edgegru convert --layers a,b), or pick one with prefix=")
            raise ModelFormatError(f"layers: GRU {p!r} takes {above.input_size} inputs"
                                   f"{', bidirectional' if above.bidirectional else ''}, the "
                                   f"layer below gives {below.hidden_size * below.num_directions}")
    arrays, sizes, dirs = {}, [], []
    for config, part in parts:
        for name, a in part.items():            # l{k}. -> l{k + layers below}.
            layer, rest = name[1:].split(".", 1)
            arrays[f"l{int(layer) + len(sizes)}.{rest}"] = a
        sizes += [config.hidden_size] * config.num_layers
        dirs += [config.num_directions] * config.num_layers
    config = dataclasses.replace(first, num_layers=len(sizes), hidden_size=sizes[-1],
                                 hidden_sizes=tuple(sizes), layer_directions=tuple(dirs),
                                 bidirectional=dirs[-1] == 2 if len(set(dirs)) == 1 else True,
                                 bias=any(c.bias for c, _ in parts))
    return config, arrays, order


def _gru_arrays(sd, prefix, entries):
    cell = any(layer == -1 for _, layer, _ in entries)
    if cell:
        if len({layer for _, layer, _ in entries}) > 1:
            raise ModelFormatError(f"{prefix or 'the state dict'}: mixes GRUCell keys "
                                   f"(weight_ih) with GRU keys (weight_ih_l0)")
        entries = {(kind, 0, d): key for (kind, _, d), key in entries.items()}
    layers = sorted({layer for _, layer, _ in entries})
    num_layers = len(layers)
    if layers != list(range(num_layers)):
        raise ModelFormatError(f"{prefix}: GRU layers {layers} are not numbered 0..{num_layers - 1}")
    bidirectional = any(d for _, _, d in entries)
    D = 2 if bidirectional else 1
    has_bias = any(kind.startswith("bias") for kind, _, _ in entries)
    kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if has_bias else ())

    def key_of(kind, l, d):
        if cell:
            return prefix + kind
        return f"{prefix}{kind}_l{l}" + ("_reverse" if d else "")

    for l in range(num_layers):
        for d in range(D):
            missing = [key_of(k, l, d) for k in kinds if (k, l, d) not in entries]
            if missing:
                raise ModelFormatError(f"missing key(s) {', '.join(missing)}")
    w_hh0 = to_numpy(sd[key_of("weight_hh", 0, 0)], key_of("weight_hh", 0, 0))
    w_ih0 = to_numpy(sd[key_of("weight_ih", 0, 0)], key_of("weight_ih", 0, 0))
    if w_hh0.ndim != 2 or w_hh0.shape[0] != 3 * w_hh0.shape[1] or w_hh0.shape[1] == 0:
        raise ModelFormatError(f"{key_of('weight_hh', 0, 0)} has shape {w_hh0.shape}, "
                               f"expected (3*H, H)")
    if w_ih0.ndim != 2 or w_ih0.shape[1] == 0:
        raise ModelFormatError(f"{key_of('weight_ih', 0, 0)} has shape {w_ih0.shape}, "
                               f"expected (3*H, input_size)")
    H = w_hh0.shape[1]
    config = GRUConfig(input_size=w_ih0.shape[1], hidden_size=H, num_layers=num_layers,
                       bidirectional=bidirectional, reset_after=True, bias=has_bias)
    arrays = {}
    for l in range(num_layers):
        in_size = config.layer_input_size(l)
        for d in range(D):
            name = block_name(l, d)
            expect = {"weight_ih": (3 * H, in_size), "weight_hh": (3 * H, H),
                      "bias_ih": (3 * H,), "bias_hh": (3 * H,)}
            for kind, ours in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"),
                               ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
                if kind not in kinds:
                    arrays[name + ours] = np.zeros(expect[kind], np.float32)
                    continue
                key = key_of(kind, l, d)
                a = to_numpy(sd[key], key)
                if a.shape != expect[kind]:
                    raise ModelFormatError(f"{key} has shape {a.shape}, expected {expect[kind]}")
                arrays[name + ours] = a       # r | z | n already: edgegru's gate order
    return config, arrays


def _find_head(sd, keys, gru_prefix, head, width):
    if head is False:
        return None
    if head is not None and head is not True:
        p = head if head == "" or head.endswith(".") else head + "."
        inside = sorted(int(k[len(p):-len(".weight")]) for k in keys
                        if re.fullmatch(re.escape(p) + r"\d+\.weight", k))
        if p + "weight" not in sd and inside:
            raise ModelFormatError(_name_it(f"{p!r} is an nn.Sequential", [f"{p}{i}"
                                                                           for i in inside]))
        if p + "weight" not in sd:
            raise ModelFormatError(f"no head under prefix {p!r}: expected key {p}weight")
        w = to_numpy(sd[p + "weight"], p + "weight")
        if w.ndim != 2 or w.shape[1] != width:
            raise ModelFormatError(f"{p}weight has shape {w.shape}, expected (output_size, "
                                   f"{width}) to sit on the GRU's output")
        return p
    candidates = []
    for key in keys:
        if not (key == "weight" or key.endswith(".weight")) or key.startswith(gru_prefix + "weight"):
            continue
        shape = getattr(sd[key], "shape", None)
        if shape is not None and len(shape) == 2 and shape[1] == width:
            candidates.append(key[:-len("weight")])
    if len(candidates) > 1:
        raise ModelFormatError(f"several possible heads ({', '.join(c + 'weight' for c in candidates)}): "
                               f"choose one with head='<prefix>' or none with head=False")
    if head is True and not candidates:
        raise ModelFormatError(f"no nn.Linear head of shape (O, {width}) in the state dict")
    if candidates:
        chain = _following(sd, keys, gru_prefix, candidates[0])
        if len(chain) > 1:
            raise ModelFormatError(_name_it("the head looks deeper than one nn.Linear", chain))
    return candidates[0] if candidates else None


def _following(sd, keys, gru_prefix, first):
    """The Linear prefixes from ``first`` on, each the one layer taking the previous one's
    output (its weight's columns), while there is exactly one."""
    shapes = {k[:-len("weight")]: getattr(sd[k], "shape", ()) for k in keys
              if k.endswith("weight") and not k.startswith(gru_prefix + "weight")}
    shapes = {p: shape for p, shape in shapes.items() if len(shape) == 2}
    chain = [first]
    while len(chain) <= len(shapes):
        after = [p for p, shape in shapes.items() if shape[1] == shapes[chain[-1]][0]
                 and p not in chain]
        if len(after) != 1:
            break
        chain.append(after[0])
    return [p.rstrip(".") for p in chain]


def _name_it(what, linears):
    spelled = ", ".join(repr(p) for p in linears)
    between = ", '<activation>', ".join(repr(p) for p in linears)
    return (f"{what} (Linear layers {spelled}): a state dict does not record the activations "
            f"between and after them; name the head in order, e.g. head=[{between}] "
            f"(activations: relu, tanh, sigmoid, hardsigmoid, identity)")


_TORCH_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                      "hardsigmoid": "hard_sigmoid", "hard_sigmoid": "hard_sigmoid",
                      "identity": "linear", "linear": "linear"}


def _chain(spec):
    """["fc1", "relu", "fc2"] -> [("fc1.", "relu"), ("fc2.", "linear")]."""
    chain = []
    for item in spec:
        if not isinstance(item, str) or not item:
            raise ModelFormatError(f"head: expected Linear prefixes and activation names, "
                                   f"got {item!r}")
        act = _TORCH_ACTIVATIONS.get(item.lower().replace("nn.", ""))
        if act is None:
            chain.append((item if item.endswith(".") else item + ".", "linear"))
        elif not chain or chain[-1][1] != "linear":
            raise ModelFormatError(f"head: activation {item!r} must follow a Linear prefix")
        else:
            chain[-1] = (chain[-1][0], act)
    if not chain:
        raise ModelFormatError("head: the list names no Linear layer")
    return chain


def _chain_arrays(sd, chain, width, arrays):
    """Put the head's arrays into ``arrays`` under edgegru's names; the config fields."""
    units = []
    for i, (p, act) in enumerate(chain):
        name = "head." if i == len(chain) - 1 else f"head{i}."
        if p + "weight" not in sd:
            raise ModelFormatError(f"no Linear layer under prefix {p!r}: expected key "
                                   f"{p}weight")
        w = to_numpy(sd[p + "weight"], p + "weight")
        if w.ndim != 2 or w.shape[1] != width:
            raise ModelFormatError(f"{p}weight has shape {w.shape}, expected (units, {width}) "
                                   f"to take the {'GRU' if i == 0 else 'previous layer'}'s "
                                   f"output")
        b = to_numpy(sd[p + "bias"], p + "bias") if p + "bias" in sd \
            else np.zeros(w.shape[0], np.float32)
        if b.shape != (w.shape[0],):
            raise ModelFormatError(f"{p}bias has shape {b.shape}, expected ({w.shape[0]},)")
        arrays[name + "weight"], arrays[name + "bias"] = w, b
        width = w.shape[0]
        units.append((width, act))
    if not chain:
        return {}
    return {"output_size": width, "head_activation": chain[-1][1],
            "head_hidden": tuple(units[:-1])}


def _prefix_list(found):
    return ", ".join(repr(p) for p in sorted(found)) or "none"
