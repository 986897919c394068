"""PyTorch ``.pt`` / ``.pth`` files (``torch.save(model.state_dict(), path)``), read without torch.

What ``torch.save`` writes (PyTorch >= 1.6, torch/serialization.py ``_save``) is a zip archive
whose entries all sit under one top folder (``archive/`` in recent versions)::

    archive/data.pkl          the pickled object: a dict of tensors (pickle protocol 2)
    archive/data/0, data/1..  one raw storage each, the tensors' bytes
    archive/byteorder         "little" or "big" (absent in old files: little)
    archive/.format_version, .storage_alignment, version, .data/serialization_id: not needed

Inside ``data.pkl`` a tensor is ``torch._utils._rebuild_tensor_v2(storage, storage_offset,
size, stride, requires_grad, backward_hooks[, metadata])`` where ``storage`` is a persistent id
``("storage", torch.FloatStorage, key, location, numel)`` naming ``data/<key>``; a tensor may be a
strided view of a larger storage. ``nn.Parameter`` wraps one in
``torch._utils._rebuild_parameter(tensor, requires_grad, hooks)``; hooks and the state dict's own
``_metadata`` are ``collections.OrderedDict``.

The unpickler here resolves only those globals, to stand-ins that build NumPy arrays;
:meth:`_StateDictUnpickler.find_class` raises for anything else *before* it can run, so a
file that asks for ``os.system`` (or a whole pickled ``nn.Module``) is refused, never executed.
Storage dtypes: float32, float16, bfloat16, float64 (integers are read too, for buffers such as
``num_batches_tracked``, and then ignored by the GRU mapping).
"""
import io
import pickle
import re
import zipfile

import numpy as np

from edgegru.errors import ModelFormatError
from edgegru.formats.arrays import Allowance

# torch.<Name>Storage -> NumPy dtype (bfloat16 is read as uint16 and widened, see _as_float32)
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
# The pickle protocol-2 bytes of torch's legacy MAGIC_NUMBER (files written before PyTorch 1.6).
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_RESAVE = "re-save only the weights in PyTorch with torch.save(model.state_dict(), path)"
_MAX_ELEMENTS = 1 << 28      # no tensor in a GRU state dict comes near 268M elements


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: just the element type."""
    def __init__(self, name):
        self.name = name
        self.code = _STORAGE_DTYPES[name]


class _Tensor:
    """What _rebuild_tensor_v2 returns: the array view, built after unpickling."""
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


def is_torch_zip(names):
    """True when a zip's entry names look like ``torch.save`` output (``<top>/data.pkl``)."""
    return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names)


def read_state_dict(data, name="<bytes>"):
    """The bytes of a ``.pt`` zip -> {key: NumPy array} (nested dicts flattened with ``.``)."""
    if data.startswith(LEGACY_MAGIC):
        raise ModelFormatError(f"{name}: a legacy PyTorch file (written before PyTorch 1.6, "
                               f"not a zip archive); {_RESAVE} using PyTorch >= 1.6")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelFormatError(f"{name}: not a readable PyTorch zip archive ({exc})") from None
    tops = {n.split("/", 1)[0] for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)}
    if any(n.endswith("/constants.pkl") for n in names):
        raise ModelFormatError(f"{name}: a TorchScript archive (torch.jit.save), not a state "
                               f"dict; {_RESAVE}")
    if len(tops) != 1:
        raise ModelFormatError(f"{name}: expected one '<folder>/data.pkl' entry in the PyTorch "
                               f"archive, found {len(tops)}")
    top = tops.pop()
    try:
        byteorder = _read_entry(archive, f"{top}/byteorder", len(data), name, required=False)
        byteorder = "little" if byteorder is None else byteorder.decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise ModelFormatError(f"{name}: unknown byteorder record {byteorder!r} "
                                   f"(expected 'little' or 'big')")
        pickled = _read_entry(archive, f"{top}/data.pkl", len(data), name)
        unpickler = _StateDictUnpickler(io.BytesIO(pickled), archive, top, byteorder, name,
                                        len(data))
        obj = unpickler.load()
    except ModelFormatError:
        raise
    except RecursionError:
        raise ModelFormatError(f"{name}: data.pkl is nested too deeply") from None
    except MemoryError:
        raise ModelFormatError(f"{name}: data.pkl asks for more memory than a state dict "
                               f"needs") from None
    except Exception as exc:  # pickle.UnpicklingError, EOFError, zlib.error, struct.error...
        raise ModelFormatError(f"{name}: corrupt PyTorch file ({type(exc).__name__}: {exc})") \
            from None
    flat = {}
    _flatten(obj, "", flat, name)
    if not flat:
        raise ModelFormatError(f"{name}: the PyTorch file holds no tensors under string keys "
                               f"(got {type(obj).__name__}); {_RESAVE}")
    return flat


def _read_entry(archive, entry, archive_size, name, required=True):
    try:
        info = archive.getinfo(entry)
    except KeyError:
        if required:
            raise ModelFormatError(f"{name}: the PyTorch archive has no entry {entry}") from None
        return None
    if info.file_size > 8 * archive_size + (1 << 20):        # a zip bomb, or a lying header
        raise ModelFormatError(f"{name}: entry {entry} claims {info.file_size} bytes, more "
                               f"than the archive could hold")
    return archive.read(info)


def _flatten(obj, prefix, out, name):
    if isinstance(obj, _Tensor):
        out[prefix[:-1]] = obj.array
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                _flatten(value, prefix + key + ".", out, name)


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict of tensors and nothing else (see the module docstring)."""

    def __init__(self, file, archive, top, byteorder, name, archive_size):
        super().__init__(file)
        self.archive, self.top, self.name = archive, top, name
        self.byteorder = "<" if byteorder == "little" else ">"
        self.archive_size = archive_size
        self.allowance = Allowance(archive_size, name)
        self.storages = {}

    def find_class(self, module, qualname):
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("collections", "OrderedDict"): _OrderedDict,
        }
        if (module, qualname) in allowed:
            return allowed[(module, qualname)]
        if module == "torch" and qualname in _STORAGE_DTYPES:
            return _StorageType(qualname)
        what = f"{module}.{qualname}"
        if module.startswith("torch.nn") or module == "__main__":
            raise ModelFormatError(f"{self.name}: the file holds a whole pickled model "
                                   f"({what}), not a state dict; {_RESAVE}")
        if module.startswith("torch"):
            raise ModelFormatError(f"{self.name}: the file needs {what}, which a state dict of "
                                   f"float tensors does not use (quantized or sparse tensors, a "
                                   f"tensor subclass or a dtype edgegru does not read?); "
                                   f"{_RESAVE} after model.float()")
        raise ModelFormatError(f"{self.name}: refused to unpickle {what}: only a state dict of "
                               f"tensors is read, never arbitrary objects; {_RESAVE}")

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel), torch/serialization.py persistent_id
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and re.fullmatch(r"\d{1,9}", pid[2]) and isinstance(pid[4], int)
                and not isinstance(pid[4], bool) and 0 <= pid[4] <= _MAX_ELEMENTS):
            raise ModelFormatError(f"{self.name}: data.pkl refers to a storage as {pid!r:.80}, "
                                   f"expected ('storage', <type>, '<key>', <device>, <numel>)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            code = storage_type.code
            dtype = np.dtype(self.byteorder + ("u2" if code == "bf16" else code))
            raw = _read_entry(self.archive, f"{self.top}/data/{key}", self.archive_size,
                              self.name)
            if len(raw) < numel * dtype.itemsize:
                raise ModelFormatError(f"{self.name}: storage data/{key} holds {len(raw)} bytes, "
                                       f"expected {numel} x {dtype.itemsize}")
            array = np.frombuffer(raw, dtype=dtype, count=numel)
            self.storages[key] = (code, array)
        return self.storages[key]

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        if not (isinstance(storage, tuple) and len(storage) == 2):
            raise ModelFormatError(f"{self.name}: a tensor without a storage in data.pkl")
        code, flat = storage
        if not (_int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)
                and isinstance(storage_offset, int) and storage_offset >= 0
                and all(n >= 0 for n in size) and all(s >= 0 for s in stride)):
            raise ModelFormatError(f"{self.name}: a tensor with invalid size {size!r:.60}, "
                                   f"stride {stride!r:.60} or offset {storage_offset!r:.20}")
        count = int(np.prod(size, dtype=np.int64)) if size else 1
        if count and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= flat.size:
            raise ModelFormatError(f"{self.name}: a tensor of size {tuple(size)} (stride "
                                   f"{tuple(stride)}, offset {storage_offset}) reaches past its "
                                   f"storage of {flat.size} elements")
        if count > max(flat.size, 1 << 20):
            raise ModelFormatError(f"{self.name}: a tensor of size {tuple(size)} is larger "
                                   f"than its storage")
        # views of one storage (stride 0, overlapping) can add up to far more than the file
        self.allowance.take(count * max(flat.dtype.itemsize, 4), f"a tensor of size "
                            f"{tuple(size)}")
        if count == 0:
            array = np.zeros(size, dtype=flat.dtype)
        else:
            item = flat.dtype.itemsize
            array = np.lib.stride_tricks.as_strided(
                flat[storage_offset:], shape=tuple(size), strides=tuple(s * item for s in stride),
                writeable=False)
        return _Tensor(_as_float32(array) if code == "bf16" else np.array(array))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


class _OrderedDict(dict):
    """collections.OrderedDict for hooks and state dicts; takes the ``_metadata`` attribute."""


def _int_tuple(value):
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in value)


def _as_float32(bf16_bits):
    """bfloat16 bits (uint16) -> float32: they are the high half of a float32."""
    return (bf16_bits.astype(np.uint32) << 16).view(np.float32)
