"""Model files in and out. One module per format, each turning a file into the same Model.

- :mod:`edgegru.formats.native`: edgegru's own ``.npz`` (what ``Model.save`` writes)
- :mod:`edgegru.formats.pytorch`: PyTorch state dicts (``from_state_dict``)
"""
import os

from edgegru.errors import ModelFormatError
from edgegru.formats import native


def load(path, backend=None):
    """A :class:`~edgegru.Model` from a model file, recognised by its content."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ModelFormatError(f"{name}: no such file")
    if native.is_native(name):
        return native.load(name, backend=backend)
    raise ModelFormatError(f"{name}: not a model file edgegru can read (expected an edgegru "
                           f".npz written by Model.save or 'edgegru convert')")
