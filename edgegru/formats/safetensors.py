"""``.safetensors`` files (Hugging Face), read with NumPy only.

Layout (https://github.com/huggingface/safetensors, "Format")::

    8 bytes      N, unsigned 64-bit little-endian: the header's length
    N bytes      a UTF-8 JSON object {"<tensor name>": {"dtype": "F32", "shape": [3, 4],
                 "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
    the rest     the byte buffer; offsets are relative to its start, data is little-endian
                 and C-contiguous

The names are the state dict's (``gru.weight_ih_l0``...), so the arrays go through
:func:`edgegru.from_state_dict` like any PyTorch state dict.
"""
import json

import numpy as np

from edgegru.errors import ModelFormatError

# safetensors dtype -> NumPy dtype (BF16 is read as uint16 and widened to float32)
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_MAX_HEADER = 100 << 20          # the reference implementation's own limit


def looks_like(data):
    """Cheap content test: a plausible header length followed by '{'."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def read_state_dict(data, name="<bytes>"):
    """The bytes of a ``.safetensors`` file -> {name: NumPy array}, every offset checked."""
    if len(data) < 8:
        raise ModelFormatError(f"{name}: too short for a safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _MAX_HEADER):
        raise ModelFormatError(f"{name}: safetensors header length {n} is larger than the "
                               f"file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{name}: the safetensors header is not valid JSON "
                               f"({str(exc)[:100]})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{name}: the safetensors header is not a JSON object")
    buffer = memoryview(data)[8 + n:]
    arrays = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(entry, dict) and entry.get("dtype") in _DTYPES
                and _ints(entry.get("shape")) and _ints(entry.get("data_offsets"))
                and len(entry["data_offsets"]) == 2):
            raise ModelFormatError(f"{name}: safetensors entry {key!r:.60} must be "
                                   f"{{dtype: one of {sorted(_DTYPES)}, shape: [ints], "
                                   f"data_offsets: [begin, end]}}, got {str(entry)[:100]}")
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.float64)) if shape else 1
        if not 0 <= begin <= end <= len(buffer) or end - begin != count * dtype.itemsize:
            raise ModelFormatError(f"{name}: safetensors entry {key!r:.60} of shape {shape} "
                                   f"({entry['dtype']}) has data_offsets [{begin}, {end}], "
                                   f"which do not fit the {len(buffer)}-byte buffer")
        a = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape)
        if entry["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)   # bf16 = a float32's high half
        arrays[key] = a
    return arrays


def _ints(value):
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62 for v in value)
