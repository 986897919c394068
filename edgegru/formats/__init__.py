"""Model files in and out. One module per format, each turning a file into the same Model.

- :mod:`edgegru.formats.native`: edgegru's own ``.npz`` (what :func:`save` writes)
- :mod:`edgegru.formats.pytorch`: PyTorch state dicts (``from_state_dict``)
- :mod:`edgegru.formats.torch_pt`: ``.pt`` / ``.pth`` files of a state dict, read without torch
- :mod:`edgegru.formats.safetensors`: ``.safetensors`` of a state dict
- :mod:`edgegru.formats.arrays`: ``.npz`` of state-dict arrays; the textbook layout (``from_arrays``)
- :mod:`edgegru.formats.onnx`: ONNX graphs of GRU nodes and a linear head (needs ``onnx``)
- :mod:`edgegru.formats.keras`: Keras ``.keras`` / ``.weights.h5`` / legacy ``.h5`` (needs ``h5py``)

:func:`load` recognises the format from the file's content (the extension only breaks ties)
and takes a path or the file's bytes; :func:`save` writes edgegru's own file (the only format
written).
"""
import dataclasses
import hashlib
import io
import os
import zipfile

import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.formats import native

FORMATS = ("native", "pytorch", "safetensors", "npz-state-dict", "onnx", "keras")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_EXTENSIONS = {".pt": "pytorch", ".pth": "pytorch", ".bin": "pytorch", ".onnx": "onnx",
               ".safetensors": "safetensors", ".keras": "keras", ".h5": "keras",
               ".hdf5": "keras"}


def load(source, backend=None, format=None, head=None, head_on=None, layers=None):
    """A :class:`~edgegru.Model` from a model file (a path, or its bytes).

    format: one of :data:`FORMATS` to skip detection. head: for state-dict formats, which
    ``nn.Linear`` is the head, or a list naming a deeper one (see
    :func:`edgegru.from_state_dict`). head_on: ``"last"`` or ``"all"`` to override what the
    file says (a state dict says nothing: ``"all"``); None keeps it. layers: for state dicts
    with several GRU modules making one stack, their prefixes bottom first.
    """
    data, name = _read(source)
    try:
        fmt = format or detect(data, name)
        if fmt not in FORMATS:
            raise ModelFormatError(f"unknown format {fmt!r}: expected one of "
                                   f"{', '.join(FORMATS)}")
        if fmt == "native":
            return native.load(name, backend=backend, data=data)
        model = _load_foreign(fmt, data, name, backend, head, layers)
        if head_on is not None and head_on != model.config.head_on:
            model = _with_head_on(model, head_on, backend)
    except ModelFormatError as exc:
        message = " ".join(str(exc).split())            # one line, and short: parsers' own
        if len(message) > 300:                          # messages can quote whole headers
            message = message[:297] + "..."
        raise ModelFormatError(message) from None
    source_info = model.meta.setdefault("provenance", {}).setdefault("source", {})
    source_info.update({"format": source_info.get("format", fmt),
                        "file": os.path.basename(name), "sha256": sha256(data)})
    return model


def save(model, path):
    """Write ``model`` to ``path`` as edgegru's own ``.npz``, atomically (a reader never sees
    half a file); :func:`load` reads it back.

    >>> import edgegru, tempfile, os
    >>> cfg = edgegru.GRUConfig(input_size=2, hidden_size=3)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> edgegru.save(edgegru.Model(cfg, edgegru.GRUWeights.random(cfg)), path)
    >>> edgegru.load(path).config == cfg
    True
    """
    native.save(model, path)


def _with_head_on(model, head_on, backend):
    from edgegru.model import Model
    try:
        config = dataclasses.replace(model.config, head_on=head_on)
    except ValueError as exc:
        raise ModelFormatError(str(exc)) from None
    return Model(config, model.weights, meta=model.meta, backend=backend)


def _load_foreign(fmt, data, name, backend, head, layers=None):
    from edgegru.formats.pytorch import from_state_dict
    if fmt == "onnx":
        from edgegru.formats import onnx
        return onnx.load_model(data, name, backend=backend)
    if fmt == "keras":
        from edgegru.formats import keras
        return keras.load_model(data, name, backend=backend)
    if fmt == "pytorch":
        from edgegru.formats import torch_pt
        state_dict, label = torch_pt.read_state_dict(data, name), "pytorch-pt"
    elif fmt == "safetensors":
        from edgegru.formats import safetensors
        state_dict, label = safetensors.read_state_dict(data, name), "safetensors"
    else:
        from edgegru.formats import arrays
        state_dict, label = arrays.read_npz_state_dict(data, name), "npz-state-dict"
    try:
        model = from_state_dict(state_dict, head=head, backend=backend, layers=layers)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{name}: {exc}") from None
    model.meta["provenance"]["source"]["format"] = label
    return model


def detect(data, name="<bytes>"):
    """The format of a file's bytes, one of :data:`FORMATS`; ModelFormatError if none fits."""
    hint = _EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
        except Exception as exc:     # BadZipFile, truncated central directory, struct.error...
            raise ModelFormatError(f"{name}: a truncated or corrupt zip archive "
                                   f"({type(exc).__name__}: {exc})") from None
        from edgegru.formats import arrays, torch_pt
        if native.META_KEY + ".npy" in names:
            return "native"
        if torch_pt.is_torch_zip(names) or any(n.endswith("/constants.pkl") for n in names):
            return "pytorch"
        if {"config.json", "model.weights.h5"} <= names:
            return "keras"
        if arrays.is_plain_npz(names):
            return "npz-state-dict"
        raise ModelFormatError(f"{name}: a zip archive, but not one edgegru reads (entries: "
                               f"{', '.join(sorted(names)[:5])}{'...' if len(names) > 5 else ''})")
    if data.startswith(_HDF5_MAGIC):
        return "keras"
    from edgegru.formats import safetensors, torch_pt
    if data.startswith(torch_pt.LEGACY_MAGIC):
        return "pytorch"          # refused there with the re-save instructions
    if data[:1] == b"\x80":
        raise ModelFormatError(f"{name}: a Python pickle; edgegru never unpickles arbitrary "
                               f"files (it could run code): save a state dict with torch.save "
                               f"or safetensors instead")
    if safetensors.looks_like(data):
        return "safetensors"
    if hint == "onnx" or data[:1] == b"\x08":          # ModelProto field 1 (ir_version)
        return "onnx"
    if not data:
        raise ModelFormatError(f"{name}: the file is empty")
    raise ModelFormatError(f"{name}: not a model file edgegru can read (expected an edgegru "
                           f".npz, a PyTorch .pt state dict, .safetensors, .onnx, .keras, "
                           f".weights.h5 or a legacy Keras .h5)")


def _read(source):
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    name = os.fspath(source)
    try:
        with open(name, "rb") as f:
            return f.read(), name
    except FileNotFoundError:
        raise ModelFormatError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{name}: is a directory, not a model file") from None
    except OSError as exc:
        raise ModelFormatError(f"{name}: cannot read ({exc.strerror or exc})") from None


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def weights_sha256(model):
    """A checksum of the weights themselves: name, shape and float32 bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(model.weights.arrays):
        a = np.ascontiguousarray(model.weights.arrays[key], dtype="<f4")
        h.update(f"{key}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _weights_bytes(model):
    # the weights' dtype and bytes as stored (a bfloat16 model's W_hh: 2 bytes each)
    c = model.config
    bf16 = c.recurrent_dtype == "bfloat16"
    size = sum(int(a.size) * (2 if bf16 and name.endswith("w_hh") else 4)
               for name, a in model.weights.arrays.items())
    kind = "float32, W_hh bfloat16" if bf16 else "float32"
    return f"{kind}, {size} bytes"


def describe(model):
    """What ``edgegru info`` prints: {field: value}, plain data."""
    c = model.config
    count = sum(int(a.size) for name, a in model.weights.arrays.items()
                if c.bias or not name.endswith(("b_ih", "b_hh")))     # bias=False: zeros
    width, layers = c.hidden_size * c.num_directions, []
    for _, units, act in c.head_layers:
        layers.append(f"linear {width} -> {units}" + ("" if act == "linear" else f" + {act}"))
        width = units
    head = ", ".join(layers) or "none (output = top hidden state)"
    if any(act == "hard_sigmoid" for _, _, act in c.head_layers):
        head += f" (hard_sigmoid: clip({c.head_alpha:.6g} x + {c.head_beta:.6g}, 0, 1))"
    source = model.meta.get("provenance", {}).get("source", {})
    return {
        "variant": "reset_after (PyTorch)" if c.reset_after else "reset_before (Cho 2014)",
        "gates": "sigmoid" if c.gate_activation == "sigmoid" else
                 f"hard_sigmoid: clip({c.gate_alpha:.6g} x + {c.gate_beta:.6g}, 0, 1)",
        "input_size": c.input_size,
        "hidden_size": ", ".join(map(str, c.hidden_sizes)) + " (per layer, bottom first)"
                       if c.hidden_sizes else c.hidden_size, "num_layers": c.num_layers,
        "directions": ", ".join("bidirectional" if d == 2 else "unidirectional"
                                for d in c.layer_directions) + " (per layer, bottom first)"
                      if c.layer_directions else "bidirectional" if c.bidirectional else
                      "reverse (each sequence read from its end; run() only)" if c.reverse
                      else "unidirectional",
        "bias": c.bias, "head": head, "output_size": model.output_size,
        "head_on": "last step (sequence-to-one: run() returns the last step's output)"
                   if c.head_on == "last" else "every step",
        "parameters": count,
        "weights": _weights_bytes(model),
        "source": ", ".join(f"{k}={v}" for k, v in source.items() if v is not None) or "-",
        "weights_sha256": weights_sha256(model),
        **_scoring_summary(model.meta),
    }


def _scoring_summary(meta):
    """describe()'s lines on a scoring model: its channels, threshold and terms, and the data
    it was trained and calibrated on (what `edgegru calibrate` changes); {} for a bare network.
    Metadata is the file's own data: a field of an unexpected shape is left out, not an error."""
    lines = {}
    try:
        pre, sc = meta.get("preprocessing") or {}, meta.get("scoring") or {}
        provenance = meta.get("provenance") or {}
        if pre.get("columns"):
            lines["channels"] = ", ".join(map(str, pre["columns"]))
        if sc:
            terms = [f"forecast ({sc.get('forecast', 'absolute')})"]
            consistency = sc.get("consistency") or {}
            for name, term in (("consistency", consistency),
                               ("drift", consistency.get("drift") or {}),
                               ("level", sc.get("level") or {})):
                if term.get("channels"):
                    terms.append(f"{name} ({', '.join(map(str, term['channels']))})")
            if sc.get("stuck_rows"):
                terms.append(f"stuck sensor ({int(sc['stuck_rows'])} repeats)")
            lines["scoring"] = (f"threshold {float(sc['threshold']):.6g}, warm-up "
                                f"{int(sc['warmup'])} rows; {', '.join(terms)}")
        trained = provenance if provenance.get("tool") == "edgegru train" else {}
        for key, part in (("trained_on", trained), ("calibrated_on", provenance.get("calibration"))):
            data = (part or {}).get("data")
            if data:
                rows = (part.get("split") or {}).get("normal_rows")
                lines[key] = (f"{data.get('file')} (sha256 {str(data.get('sha256'))[:12]}...), "
                              f"{rows} normal rows")
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return lines
