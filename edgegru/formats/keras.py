"""Keras files: GRU layers and optional Dense layers after them. Needs h5py.

Read: the ``.keras`` zip (Keras 3, and Keras 2.13+ / tf_keras), the bare ``.weights.h5`` of Keras
3, and the legacy HDF5 files of Keras 2 / tf.keras / standalone Keras (``model.save("m.h5")``,
and ``model.save_weights("w.h5")``).

All knowledge of Keras' GRU layout is in :func:`gru_arrays`. A Keras GRU with ``units=H`` on
``I`` inputs stores (``keras/src/layers/rnn/gru.py``), gate order z | r | h in the columns::

    kernel             (I, 3H)     x @ kernel
    recurrent_kernel   (H, 3H)     h @ recurrent_kernel
    bias               (2, 3H)     [input_bias, recurrent_bias]   reset_after=True (default)
                       (3H,)       input bias only                reset_after=False
    z = sigmoid(x Wz + bz + h Uz + b'z)     r = sigmoid(x Wr + br + h Ur + b'r)
    hh = tanh(x Wh + bh + r * (h Uh + b'h))      reset_after=True:  edgegru reset_after
    hh = tanh(x Wh + bh + (r * h) Uh)            reset_after=False: edgegru reset_before
    h = z * h_prev + (1 - z) * hh                the same update as PyTorch and edgegru

so ``w_ih = kernel.T``, ``w_hh = recurrent_kernel.T`` with the blocks reordered to r | z | n,
``b_ih`` / ``b_hh`` the two bias rows (``b_hh = 0`` for reset_after=False). A ``Dense`` layer
stores ``kernel (K, O)`` and ``bias (O,)``: ``head.weight = kernel.T``.

Inside the ``.keras`` zip, ``config.json`` describes the layers and ``model.weights.h5`` holds
``layers/<name>/cell/vars/{0,1,2}`` (kernel, recurrent kernel, bias) per GRU,
``layers/<name>/{forward,backward}_layer/cell/vars/*`` per Bidirectional GRU and
``layers/<name>/vars/{0,1}`` per Dense, where ``<name>`` is the snake-cased class name made
unique in layer order (``gru``, ``gru_1``...), not the layer's own name.

A legacy HDF5 file keeps the layers under ``model_weights`` (a weights-only file: at the root),
listed in order by the attribute ``layer_names``; each layer's group lists its arrays in order in
``weight_names`` (kernel, recurrent_kernel, bias; a Bidirectional layer the forward three, then
the backward three), and the full-model file has the configuration as JSON in the attribute
``model_config``. Layer groups are named by the layers' own names.

Read: a chain of ``GRU`` / ``Bidirectional(GRU, merge_mode="concat")`` layers, all of one variant
(their units may differ: ``GRU(16, return_sequences=True), GRU(8)``), then optionally ``Dense`` layers (linear, relu, tanh, sigmoid or hard_sigmoid
activations: the head); ``InputLayer`` and ``Dropout`` (a no-op at inference) are skipped.
Refused with a message: other activations, ``go_backwards``, other layers, Dense layers between
GRUs. A last GRU with ``return_sequences=False`` makes a sequence-to-one model
(``head_on="last"``): the Dense layers then read its last step, as in Keras.

``recurrent_activation="hard_sigmoid"`` (the gates; standalone Keras' default before 2.3) is read
as the Keras version that saved the file defines it (``keras_version`` in the file): Keras 1 and
2 (and tf.keras) ``clip(0.2 x + 0.5, 0, 1)``, Keras 3 ``relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0,
1)``. A file that does not say which version wrote it is refused rather than guessed.

A bare ``.weights.h5`` (or a legacy weights-only ``.h5``) holds no configuration: the defaults
are assumed (tanh / sigmoid, a linear head; for ``.weights.h5`` layers in the order of their
names, for a legacy file in its recorded order), which the model's provenance says. The
``.keras`` file is the one to ship when it exists.
"""
import contextvars
import functools
import io
import json
import re
import zipfile

import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.formats.arrays import Allowance
from edgegru.model import GRUConfig, GRUWeights, Model, block_name

_SKIPPED = {"InputLayer", "Dropout"}
_ASSUMED = "no configuration in the file: assumed tanh/sigmoid GRUs and a linear head"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ModelFormatError("reading Keras files needs the h5py package: "
                               "pip install 'edgegru[keras]'") from None
    return h5py


# What the load in progress may still allocate (compressed zip entries and HDF5 datasets can
# declare far more than the file holds): set by load_model, charged by _array.
_ALLOWANCE = contextvars.ContextVar("edgegru_keras_allowance", default=None)


def load_model(data, name="<bytes>", backend=None):
    """The bytes of a ``.keras`` zip, a ``.weights.h5`` or a legacy ``.h5`` file -> Model."""
    h5py = _h5py()
    allowance = Allowance(len(data), name)
    token = _ALLOWANCE.set(allowance)
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for entry in ("config.json", "model.weights.h5"):
                    if entry in z.namelist():
                        allowance.take(z.getinfo(entry).file_size, f"entry {entry}")
                config = json.loads(z.read("config.json").decode("utf-8"))
                weights = z.read("model.weights.h5")
                version = _metadata_version(z)
            layers = _layers_from_config(config, name)
            fmt = "keras"
        else:
            weights, layers, version, fmt = data, None, None, "keras-weights-h5"
        with h5py.File(io.BytesIO(weights), "r") as f:
            if fmt == "keras-weights-h5" and ("model_weights" in f or "layer_names" in f.attrs):
                fmt = "keras-legacy-h5"
                version = _text(f.attrs.get("keras_version"))
                root = f["model_weights"] if "model_weights" in f else f
                if "model_config" in f.attrs:
                    layers = _layers_from_config(json.loads(_text(f.attrs["model_config"])),
                                                 name, legacy=True)
                else:
                    layers = _layers_from_legacy_weights(root, name)
                read_vars = functools.partial(_legacy_vars, root)
            else:
                if layers is None:
                    layers = _layers_from_weights(f, name)
                read_vars = functools.partial(_keras3_vars, f)
            config, arrays, notes = _read(read_vars, layers, name, version)
            if fmt == "keras-weights-h5":
                notes.append("layers taken in the order of their names")
    except ModelFormatError:
        raise
    except Exception as exc:        # zipfile, JSON, h5py (OSError, KeyError...) on a bad file
        raise ModelFormatError(f"{name}: not a readable Keras file ({type(exc).__name__}: "
                               f"{str(exc)[:120]})") from None
    finally:
        _ALLOWANCE.reset(token)
    w = GRUWeights(arrays)
    w.check(config, source=name)
    source = {"format": fmt, "keras_version": version, "notes": "; ".join(notes) or None}
    return Model(config, w, meta={"provenance": {"source": source}}, backend=backend)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else None if value is None \
        else str(value)


def _metadata_version(z):
    # metadata.json: {"keras_version": "3.15.1", "date_saved": ...}; written by every Keras that
    # writes .keras files, but a hand-made zip may lack it
    try:
        return str(json.loads(z.read("metadata.json").decode("utf-8"))["keras_version"])
    except (KeyError, ValueError, TypeError):
        return None


def _keras3_vars(f, path, part):
    # The variables of one layer of a Keras 3 weights file: {"0": kernel, ...}
    return f[path + {"cell": "/cell/vars", "dense": "/vars", "forward_layer":
                     "/forward_layer/cell/vars", "backward_layer": "/backward_layer/cell/vars"}[part]]


def _legacy_vars(root, layer_name, part):
    # The arrays of one layer of a legacy HDF5 file, in the order of its weight_names:
    # {"0": kernel, "1": recurrent_kernel, "2": bias}; a Bidirectional layer holds the forward
    # layer's arrays, then the backward layer's.
    group = root[layer_name]
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    arrays = [group[n] for n in names]
    if part == "forward_layer":
        arrays = arrays[:len(arrays) // 2]
    elif part == "backward_layer":
        arrays = arrays[len(arrays) // 2:]
    return {str(i): a for i, a in enumerate(arrays)}


def _layers_from_config(config, name, legacy=False):
    """A model config -> [(kind, where, layer config)] for the GRU / Bidirectional / Dense chain.

    ``where`` is the h5 path of the layer's group (Keras 3), or its name (legacy HDF5).
    """
    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential",
                                                                        "Functional", "Model"):
        raise ModelFormatError(f"{name}: the configuration does not describe a Sequential or "
                               f"Functional Keras model")
    layers = config["config"]
    if isinstance(layers, dict):
        layers = layers["layers"]           # Keras 2.0's Sequential config is the bare list
    used, out, previous = {}, [], None
    for layer in layers:
        cls, cfg = layer["class_name"], layer["config"]
        snake = _snake(cls)
        n = used.get(snake, 0)
        used[snake] = n + 1
        path = cfg["name"] if legacy else f"layers/{snake}" + (f"_{n}" if n else "")
        inbound = layer.get("inbound_nodes") or []
        if config["class_name"] != "Sequential" and inbound and previous is not None:
            if len(inbound) != 1 or _inputs(inbound[0]) != [previous]:
                raise ModelFormatError(f"{name}: layer {cfg.get('name')} does not take the "
                                       f"previous layer's output: edgegru reads a chain of "
                                       f"layers")
        previous = cfg.get("name")
        if cls in _SKIPPED:
            continue
        if cls not in ("GRU", "Bidirectional", "Dense"):
            raise ModelFormatError(f"{name}: layer {cfg.get('name')} ({cls}) is not supported; "
                                   f"edgegru reads GRU, Bidirectional(GRU) and one Dense head")
        out.append((cls, path, cfg))
    return out


def _inputs(node):
    """The names of the layers feeding one inbound node of a functional model's layer."""
    if isinstance(node, dict):          # Keras 3: {"args": [keras tensor config], "kwargs": ...}
        return [a.get("config", {}).get("keras_history", [None])[0] if isinstance(a, dict)
                else None for a in node.get("args", [])]
    return [item[0] if isinstance(item, list) and item else None    # Keras 2: [[name, 0, 0, {}]]
            for item in node]


def _layers_from_legacy_weights(root, name):
    """A legacy weights-only HDF5 file: the layers in their recorded order, told apart by the
    number of arrays (GRU 2-3, Bidirectional 4-6, Dense 1-2 of which the first is 2-D, the
    recurrent kernel's columns three times its rows)."""
    out = []
    for layer in (_text(n) for n in root.attrs["layer_names"]):
        arrays = list(_legacy_vars(root, layer, "all").values())
        shapes = [a.shape for a in arrays]
        if not arrays:
            continue
        gru = len(shapes) >= 2 and len(shapes[1]) == 2 and shapes[1][1] == 3 * shapes[1][0]
        if gru and len(arrays) in (2, 3):
            out.append(("GRU", layer, None))
        elif gru and len(arrays) in (4, 6):
            out.append(("Bidirectional", layer, None))
        elif len(arrays) in (1, 2) and len(shapes[0]) == 2:
            out.append(("Dense", layer, None))
        else:
            raise ModelFormatError(f"{name}: layer {layer} (arrays of shapes {shapes}) is not a "
                                   f"GRU, Bidirectional GRU or Dense layer")
    return out


def _layers_from_weights(f, name):
    groups = sorted(f["layers"].keys(), key=lambda g: (re.sub(r"_\d+$", "", g), _suffix(g)))
    kinds = {"gru": "GRU", "bidirectional": "Bidirectional", "dense": "Dense"}
    out = []
    for g in groups:
        kind = kinds.get(re.sub(r"_\d+$", "", g))
        if kind is None:
            if _has_vars(f["layers"][g]):
                raise ModelFormatError(f"{name}: layer group {g} is not supported (edgegru "
                                       f"reads gru, bidirectional and dense)")
            continue
        out.append((kind, f"layers/{g}", None))
    if {"GRU", "Bidirectional"} <= {k for k, _, _ in out}:
        raise ModelFormatError(f"{name}: GRU and Bidirectional layers in one .weights.h5: their "
                               f"order is not recorded; load the .keras file instead")
    out.sort(key=lambda item: item[0] == "Dense")                   # the head comes last
    return out


def _read(read_vars, layers, name, version):
    """read_vars(where, part) -> {"0": array, ...}: one layer's variables; version: the
    keras_version that wrote the file (None: unknown)."""
    notes = [] if layers and layers[0][2] is not None else [_ASSUMED]
    arrays, specs = {}, []
    recurrent = [item for item in layers if item[0] != "Dense"]
    if not recurrent:
        raise ModelFormatError(f"{name}: no GRU layer in the Keras model")
    dense = [item for item in layers if item[0] == "Dense"]
    if layers != recurrent + dense:
        raise ModelFormatError(f"{name}: edgegru reads Dense layers after the GRU layers, not "
                               f"between them")
    for k, (kind, path, cfg) in enumerate(recurrent):
        last = k == len(recurrent) - 1
        if kind == "GRU":
            spec = _gru_config(cfg, name, last, notes)
            arrays.update(gru_arrays(read_vars(path, "cell"), k, 0, spec, f"{name}: {path}"))
            spec["D"] = 1
        else:
            if cfg is not None and cfg.get("merge_mode", "concat") != "concat":
                raise ModelFormatError(f"{name}: Bidirectional merge_mode "
                                       f"{cfg.get('merge_mode')!r} is not supported (only concat)")
            inner = cfg and cfg.get("layer", {})
            if cfg is not None and inner.get("class_name") != "GRU":
                raise ModelFormatError(f"{name}: Bidirectional wraps {inner.get('class_name')}, "
                                       f"not GRU")
            spec = _gru_config(inner and inner["config"], name, last, notes)
            back = cfg and cfg.get("backward_layer")
            if back and (back.get("class_name") != "GRU" or
                         _gru_config(back["config"], name, last, [], backward=True) != spec):
                raise ModelFormatError(f"{name}: the backward layer of {path} differs from the "
                                       f"forward one")
            for d, side in enumerate(("forward_layer", "backward_layer")):
                arrays.update(gru_arrays(read_vars(path, side), k, d, spec,
                                         f"{name}: {path}/{side}"))
            spec["D"] = 2
        spec["H"] = arrays[block_name(k, 0) + "w_hh"].shape[1]
        spec["I"] = arrays[block_name(k, 0) + "w_ih"].shape[1]
        specs.append(spec)
    for key in ("reset_after", "use_bias", "gate"):
        if len({s[key] for s in specs}) > 1:
            raise ModelFormatError(f"{name}: the GRU layers differ in {key} "
                                   f"({[s[key] for s in specs]}); edgegru stacks layers that "
                                   f"differ in units and directions only")
    head = _dense_head(read_vars, dense, specs[-1]["H"] * specs[-1]["D"], arrays, name, version)
    s = specs[0]
    gate = {}
    if s["gate"] == "hard_sigmoid":
        major = _major(version)
        if major is None:
            raise ModelFormatError(f"{name}: recurrent_activation 'hard_sigmoid', but the file "
                                   f"does not say which Keras version wrote it, and Keras 2 and "
                                   f"3 define hard_sigmoid differently")
        alpha = 0.2 if major < 3 else 1 / 6
        gate = dict(gate_activation="hard_sigmoid", gate_alpha=alpha, gate_beta=0.5)
        notes.append(f"hard_sigmoid gates as Keras {version} defines them: "
                     f"clip({'0.2 x' if major < 3 else 'x / 6'} + 0.5, 0, 1)")
    config = GRUConfig(input_size=s["I"], hidden_size=specs[-1]["H"], num_layers=len(specs),
                       hidden_sizes=tuple(spec["H"] for spec in specs),
                       layer_directions=tuple(spec["D"] for spec in specs),
                       bidirectional=any(spec["D"] == 2 for spec in specs),
                       reset_after=s["reset_after"],
                       bias=s["use_bias"], head_on="last" if specs[-1]["last"] else "all",
                       **gate, **head)
    return config, arrays, notes


_DENSE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid")


def _dense_head(read_vars, dense, width, arrays, name, version):
    """The Dense layers' arrays into ``arrays`` (head0., ..., head.); the GRUConfig fields.
    A Dense layer stores ``kernel (K, units)`` and ``bias (units,)``."""
    units = []
    for i, (_, path, cfg) in enumerate(dense):
        activation = "linear" if cfg is None else cfg.get("activation", "linear")
        if activation not in _DENSE_ACTIVATIONS:
            raise ModelFormatError(f"{name}: Dense layer {cfg.get('name')} activation "
                                   f"{activation!r} is not supported (edgegru runs "
                                   f"{', '.join(_DENSE_ACTIVATIONS)})")
        vars_ = read_vars(path, "dense")
        kernel = _array(vars_, "0", f"{name}: {path} kernel")
        if kernel.ndim != 2 or kernel.shape[0] != width:
            raise ModelFormatError(f"{name}: {path} kernel has shape {kernel.shape}, expected "
                                   f"({width}, units)")
        width = kernel.shape[1]
        bias = _array(vars_, "1", f"{name}: {path} bias") if "1" in vars_ \
            else np.zeros(width, np.float32)
        if bias.shape != (width,):
            raise ModelFormatError(f"{name}: {path} bias has shape {bias.shape}, expected "
                                   f"({width},)")
        prefix = "head." if i == len(dense) - 1 else f"head{i}."
        arrays[prefix + "weight"], arrays[prefix + "bias"] = np.ascontiguousarray(kernel.T), bias
        units.append((width, activation))
    if not units:
        return {}
    head = {"output_size": width, "head_activation": units[-1][1],
            "head_hidden": tuple(units[:-1])}
    if any(act == "hard_sigmoid" for _, act in units):
        major = _major(version)
        if major is None:
            raise ModelFormatError(f"{name}: a Dense activation 'hard_sigmoid', but the file "
                                   f"does not say which Keras version wrote it, and Keras 2 and "
                                   f"3 define hard_sigmoid differently")
        head["head_alpha"] = 0.2 if major < 3 else 1 / 6
    return head


def _major(version):
    m = re.match(r"\s*(\d+)\.", version or "")
    return int(m.group(1)) if m else None


def _gru_config(cfg, name, last, notes, backward=False):
    """Check one GRU layer's config; {reset_after, use_bias} (None cfg: the defaults)."""
    if cfg is None:
        return {"reset_after": None, "use_bias": None,       # decided from the bias shape
                "gate": "sigmoid", "last": False}
    where = f"{name}: GRU layer {cfg.get('name')}"
    gate = cfg.get("recurrent_activation", "sigmoid")
    if gate not in ("sigmoid", "hard_sigmoid"):
        raise ModelFormatError(f"{where}: recurrent_activation {gate!r} is not supported "
                               f"(sigmoid or hard_sigmoid)")
    if cfg.get("activation", "tanh") != "tanh":
        raise ModelFormatError(f"{where}: activation {cfg.get('activation')!r} is not "
                               f"supported (only tanh)")
    if cfg.get("go_backwards", False) and not backward:
        raise ModelFormatError(f"{where}: go_backwards=True on its own is not supported (wrap "
                               f"the GRU in Bidirectional)")
    if not cfg.get("return_sequences", False) and not last:
        raise ModelFormatError(f"{where}: return_sequences=False on a GRU that feeds "
                               f"another GRU")
    # Keras versions from before reset_after existed (the reset came first) do not write it:
    # the bias shape decides then
    reset_after = cfg.get("reset_after")
    return {"reset_after": None if reset_after is None else bool(reset_after),
            "use_bias": bool(cfg.get("use_bias", True)), "gate": gate,
            "last": not cfg.get("return_sequences", False)}   # sequence-to-one


def gru_arrays(vars_, layer, direction, spec, where):
    """One Keras GRU cell's vars (kernel, recurrent_kernel[, bias]) -> edgegru arrays."""
    kernel = _array(vars_, "0", where + " kernel")
    recurrent = _array(vars_, "1", where + " recurrent_kernel")
    if recurrent.ndim != 2 or recurrent.shape[1] != 3 * recurrent.shape[0] \
            or recurrent.shape[0] == 0:
        raise ModelFormatError(f"{where}: recurrent_kernel has shape {recurrent.shape}, "
                               f"expected (units, 3*units)")
    H = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 3 * H or kernel.shape[0] == 0:
        raise ModelFormatError(f"{where}: kernel has shape {kernel.shape}, expected "
                               f"(input_size, {3 * H})")
    bias = _array(vars_, "2", where + " bias") if "2" in vars_ else None
    if spec["use_bias"] is None:
        spec["use_bias"] = bias is not None
    if spec["reset_after"] is None:
        spec["reset_after"] = bias is None or bias.ndim == 2
    if spec["use_bias"] != (bias is not None):
        raise ModelFormatError(f"{where}: use_bias={spec['use_bias']} but the bias is "
                               f"{'missing' if bias is None else 'present'}")
    expect = (2, 3 * H) if spec["reset_after"] else (3 * H,)
    if bias is None:
        bias = np.zeros(expect, np.float32)
    if bias.shape != expect:
        raise ModelFormatError(f"{where}: bias has shape {bias.shape}, expected {expect} "
                               f"(reset_after={spec['reset_after']})")
    b_ih, b_hh = (bias[0], bias[1]) if spec["reset_after"] else (bias, np.zeros(3 * H,
                                                                                np.float32))
    order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]            # columns z | r | h -> r | z | n
    p = block_name(layer, direction)
    return {p + "w_ih": np.ascontiguousarray(kernel.T[order]),
            p + "w_hh": np.ascontiguousarray(recurrent.T[order]),
            p + "b_ih": b_ih[order], p + "b_hh": b_hh[order]}


def _array(group, key, where):
    if key not in group:
        raise ModelFormatError(f"{where}: missing")
    dataset = group[key]
    if not hasattr(dataset, "dtype") or dataset.dtype.kind not in "fiu" or dataset.size > 1 << 24:
        raise ModelFormatError(f"{where}: expected a float array")
    allowance = _ALLOWANCE.get()
    if allowance is not None:       # a compressed dataset can declare far more than it holds
        allowance.take(dataset.size * max(dataset.dtype.itemsize, 4), where)
    a = dataset[()]
    return np.ascontiguousarray(a, dtype=np.float32)


def _has_vars(group):
    found = []
    group.visit(lambda n: found.append(n) if n.rsplit("/", 1)[-1].isdigit() else None)
    return bool(found)


def _snake(name):
    """keras.src.utils.naming.to_snake_case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _suffix(group_name):
    m = re.search(r"_(\d+)$", group_name)
    return int(m.group(1)) if m else 0
