"""edgegru's own model file: one ``.npz``, read with ``allow_pickle=False``.

It holds the weights under the names of :meth:`edgegru.GRUConfig.expected_shapes` (gate order
r | z | n, PyTorch-shaped) and one JSON string, ``__meta__``::

    {"format": "edgegru", "format_version": 1,
     "config": {"input_size": 4, "hidden_size": 64, "num_layers": 2, "bidirectional": false,
                "reset_after": true, "bias": true, "output_size": 4,
                "head_activation": "linear", "gate_order": "rzn"},
     "preprocessing": {...}, "scoring": {...}, "provenance": {...}}   # free-form, optional

A model whose gates use ``hard_sigmoid`` (see :class:`edgegru.GRUConfig`) adds
``"gate_activation": "hard_sigmoid", "gate_alpha": 0.2, "gate_beta": 0.5`` to the config and is
written as format_version 2, so that an edgegru from before version 2 refuses the file instead of
running it with the logistic sigmoid; every other model is still written as version 1.

A model whose head is more than one linear (+ sigmoid) layer, or that returns the last step
only (see :class:`edgegru.GRUConfig`), adds ``"head_on": "last"``, ``"head_hidden": [[32,
"relu"], ...]`` (the arrays ``head0.weight``, ``head0.bias``, ... of those layers), a
``head_activation`` among relu, tanh and hard_sigmoid, and ``"head_alpha"``, ``"head_beta"``
(the head's hard sigmoid), a stack that reads the sequence backwards (ONNX
``direction="reverse"``) ``"reverse": true``, layers of different widths ``"hidden_sizes":
[16, 8]`` (bottom first; ``hidden_size`` is the top's) and of different directions
``"layer_directions": [1, 2, 1]`` (``bidirectional`` is then true), as it needs, and is written
as format_version 3, which an edgegru from before refuses rather than running it with another
head or direction.

A model whose recurrent weights are held in bfloat16 (``GRUConfig(recurrent_dtype="bfloat16")``,
``edgegru convert --weights-dtype bf16``) adds ``"recurrent_dtype": "bfloat16"`` and stores each
``w_hh`` as uint16, the bfloat16 bits (half the bytes); it is written as format_version 4, which
an edgegru from before refuses rather than misreading those arrays. Every other model is written
as before, byte for byte.

Unknown versions, missing or extra arrays, wrong shapes and non-finite weights are refused with a
:class:`~edgegru.errors.ModelFormatError` that names the file and the problem.
"""
import io
import json
import os
import zipfile

import numpy as np

from edgegru import kernels
from edgegru.errors import ModelFormatError
from edgegru.formats.arrays import Allowance
from edgegru.model import GRUConfig, GRUWeights, Model
from edgegru.npzfile import write_npz_atomically

FORMAT = "edgegru"
FORMAT_VERSION = 4              # the newest version this edgegru reads and writes
_READS = (1, 2, 3, 4)
META_KEY = "__meta__"
_CONFIG_KEYS = {  # key: (type, required)
    "input_size": (int, True), "hidden_size": (int, True), "num_layers": (int, True),
    "bidirectional": (bool, True), "reset_after": (bool, True), "bias": (bool, False),
    "output_size": (int, True), "head_activation": (str, False),
    "gate_activation": (str, False), "gate_alpha": (float, False), "gate_beta": (float, False),
    "reverse": (bool, False), "hidden_sizes": (list, False), "layer_directions": (list, False),
    "head_on": (str, False), "head_hidden": (list, False), "head_alpha": (float, False),
    "head_beta": (float, False), "recurrent_dtype": (str, False),
}


def save(model, path):
    """Write ``model`` to ``path`` atomically (a reader never sees half a file)."""
    c = model.config
    config = {"input_size": c.input_size, "hidden_size": c.hidden_size,
              "num_layers": c.num_layers, "bidirectional": c.bidirectional,
              "reset_after": c.reset_after, "bias": c.bias, "output_size": c.output_size,
              "head_activation": c.head_activation, "gate_order": "rzn"}
    version = 1
    if c.gate_activation != "sigmoid":
        config.update(gate_activation=c.gate_activation, gate_alpha=float(c.gate_alpha),
                      gate_beta=float(c.gate_beta))
        version = 2
    if c.head_on != "all" or not c.fused_head or c.reverse or c.hidden_sizes \
            or c.layer_directions:
        config.update(head_on=c.head_on, head_hidden=[list(layer) for layer in c.head_hidden],
                      head_alpha=float(c.head_alpha), head_beta=float(c.head_beta),
                      reverse=c.reverse, hidden_sizes=list(c.hidden_sizes))
        if c.layer_directions:
            config["layer_directions"] = list(c.layer_directions)
        version = 3
    bf16 = c.recurrent_dtype == "bfloat16"
    if bf16:
        config.update(recurrent_dtype=c.recurrent_dtype)
        version = 4
    meta = {"format": FORMAT, "format_version": version, "config": config}
    meta.update({k: v for k, v in model.meta.items() if k not in meta})
    arrays = {name: kernels.to_bfloat16(a) if bf16 and name.endswith("w_hh")
              else np.ascontiguousarray(a, dtype=np.float32)
              for name, a in model.weights.arrays.items()}
    arrays[META_KEY] = np.array(json.dumps(meta, indent=1, sort_keys=True))
    # mkstemp makes the file owner-only (0600); a model file is for reading by whoever runs it
    # (a service user, say), so give it the mode open() would have: 0666 less the umask
    umask = os.umask(0)
    os.umask(umask)
    write_npz_atomically(path, arrays, mode=0o666 & ~umask)


def is_native(path):
    """True when ``path`` is a zip holding a ``__meta__`` entry (cheap, reads the directory)."""
    try:
        with zipfile.ZipFile(path) as z:
            return META_KEY + ".npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _take_declared(allowance, npz, key):
    """Charge the size an entry's .npy header declares, before numpy allocates it: a
    compressed entry can declare far more than the file holds (a zip bomb)."""
    fmt = np.lib.format
    with npz.zip.open(key + ".npy") as f:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):       # 3.0 is for text field names, not floats
            raise ModelFormatError(f"{allowance.name}: array {key} is in .npy format version "
                                   f"{version[0]}.{version[1]}, expected 1.0 or 2.0")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    allowance.take(np.prod(shape, dtype=np.float64) * max(dtype.itemsize, 4),
                   f"array {key} of shape {shape}")


def load(path, backend=None, data=None):
    """Read a native model file (or its bytes, ``data``, named ``path``) into a Model."""
    name = os.fspath(path)
    try:
        allowance = Allowance(len(data) if data is not None else os.path.getsize(name), name)
        with np.load(name if data is None else io.BytesIO(data), allow_pickle=False) as npz:
            if META_KEY not in npz.files:
                raise ModelFormatError(f"{name}: not an edgegru model file (no {META_KEY} entry)")
            meta = _parse_meta(npz[META_KEY], name)
            config = _parse_config(meta.get("config"), name)
            arrays = {}
            for key in npz.files:
                if key == META_KEY:
                    continue
                _take_declared(allowance, npz, key)
                arrays[key] = _as_float32(npz[key], key, config, name)
    except ModelFormatError:
        raise
    except FileNotFoundError:
        raise ModelFormatError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{name}: is a directory, not a model file") from None
    except PermissionError:
        raise ModelFormatError(f"{name}: permission denied") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError,
            UnicodeDecodeError, NotImplementedError) as exc:  # zlib.error is a subclass of Exception
        raise ModelFormatError(f"{name}: not a readable .npz model file ({exc})") from None
    except Exception as exc:  # zlib.error, struct.error and friends from a corrupt zip
        raise ModelFormatError(f"{name}: corrupt .npz file ({type(exc).__name__}: {exc})") \
            from None
    weights = GRUWeights(arrays)
    weights.check(config, source=name)
    sections = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config")}
    return Model(config, weights, meta=sections, backend=backend)


def _as_float32(a, key, config, name):
    # a weight array as float32: a bfloat16 model's w_hh may be uint16, its bfloat16 bits
    bits = config.recurrent_dtype == "bfloat16" and key.endswith("w_hh")
    if bits and a.dtype == np.uint16:
        return kernels.from_bfloat16(a)
    if a.dtype.kind != "f":
        raise ModelFormatError(f"{name}: array {key} has dtype {a.dtype}, expected float32"
                               + (" or uint16 (bfloat16 bits)" if bits else ""))
    return a.astype(np.float32, copy=False)


def _parse_meta(entry, name):
    if entry.dtype.kind != "U" or entry.ndim != 0:
        raise ModelFormatError(f"{name}: {META_KEY} must be a JSON string")
    try:
        meta = json.loads(str(entry))
    except ValueError as exc:
        raise ModelFormatError(f"{name}: {META_KEY} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFormatError(f"{name}: {META_KEY} does not describe an edgegru model")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in _READS:
        raise ModelFormatError(f"{name}: format_version {version!r} is not supported by this "
                               f"edgegru (it reads versions {', '.join(map(str, _READS))}); "
                               f"upgrade edgegru or re-export the model")
    return meta


def _parse_config(raw, name):
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{name}: metadata has no 'config' section")
    kwargs = {}
    for key, (kind, required) in _CONFIG_KEYS.items():
        if key not in raw:
            if required:
                raise ModelFormatError(f"{name}: config is missing '{key}'")
            continue
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)) \
                or not isinstance(value, kind):
            raise ModelFormatError(f"{name}: config '{key}' must be {kind.__name__}, "
                                   f"got {value!r}")
        kwargs[key] = value
    if "head_hidden" in kwargs:
        hidden = kwargs["head_hidden"]
        if len(hidden) > 64 or not all(isinstance(layer, list) and len(layer) == 2
                                       and type(layer[0]) is int and 0 < layer[0] <= 1 << 20
                                       for layer in hidden):
            raise ModelFormatError(f"{name}: config 'head_hidden' must be a list of "
                                   f"[units, activation], got {str(hidden)[:80]}")
        kwargs["head_hidden"] = tuple(tuple(layer) for layer in hidden)
    if "hidden_sizes" in kwargs:
        sizes = kwargs["hidden_sizes"]
        if len(sizes) > 1024 or not all(type(h) is int and 0 < h <= 1 << 20 for h in sizes):
            raise ModelFormatError(f"{name}: config 'hidden_sizes' must be a list of sizes, "
                                   f"got {str(sizes)[:80]}")
        kwargs["hidden_sizes"] = tuple(sizes)
    if "layer_directions" in kwargs:
        dirs = kwargs["layer_directions"]
        if len(dirs) > 1024 or not all(type(d) is int and d in (1, 2) for d in dirs):
            raise ModelFormatError(f"{name}: config 'layer_directions' must be a list of 1 and "
                                   f"2, got {str(dirs)[:80]}")
        kwargs["layer_directions"] = tuple(dirs)
    if raw.get("gate_order", "rzn") != "rzn":
        raise ModelFormatError(f"{name}: gate_order {raw['gate_order']!r} is not 'rzn'")
    for key in ("input_size", "hidden_size", "num_layers", "output_size"):
        if not 0 <= kwargs[key] <= 1 << 20:
            raise ModelFormatError(f"{name}: config '{key}' = {kwargs[key]} is out of range")
    try:
        return GRUConfig(**kwargs)
    except ValueError as exc:
        raise ModelFormatError(f"{name}: {exc}") from None
