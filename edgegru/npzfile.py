"""edgegru's ``.npz`` files on disk: written atomically, read without unpickling.

Three files are written here: the model file (:mod:`edgegru.formats.native`), the scorer's
state (:meth:`edgegru.AnomalyScorer.save_state`, also what ``examples/pi_sensor.py`` keeps) and
``edgegru run --state`` (:mod:`edgegru.stream`). The two state files carry a format name, a
version and the scorer's fingerprint, written and checked by one pair of functions,
:func:`save_state` and :func:`load_state`; what each file adds (the run's position in its
input) goes alongside.
"""
import contextlib
import dataclasses
import os
import tempfile

import numpy as np

from edgegru.errors import EdgeGRUError


def write_npz_atomically(path, arrays, prefix="tmp", mode=None):
    """Write ``arrays`` as one ``.npz`` at ``path`` through a temporary file in the same
    directory (named ``prefix...tmp``, made with ``mode`` if given, else 0600), synced and
    renamed over it: a reader, or a power cut, sees the old file or the new one, never half of
    one. The temporary file is removed when anything fails."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=prefix,
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateFileError(EdgeGRUError, ValueError):
    """A state file that cannot be resumed from (another model, another version, not a state
    file at all): the message names the file and says what to do."""


@dataclasses.dataclass(frozen=True)
class StateKind:
    """One kind of state file: its format name and version, the key its fingerprint is stored
    under, and how messages name it."""
    format: str
    version: int
    fingerprint_key: str
    noun: str                    # "not <noun>"
    version_noun: str            # "<version_noun> 2 is not supported"
    other_model: str             # the message when the fingerprint differs


SCORER_STATE = StateKind("edgegru-scorer-state", 1, "fingerprint", "a scorer state file",
                         "scorer state version",
                         "saved with another model or calibration; delete it to start afresh")
RUN_STATE = StateKind("edgegru-state", 1, "model", "an edgegru state file",
                      "state format version",
                      "this state was saved with another model (or other scaling/columns); "
                      "delete it to start afresh")


def save_state(path, kind, fingerprint, state, extra=None, prefix=None):
    """Write a scorer's ``state`` (a dict of arrays) with ``kind``'s header and ``extra``
    arrays, atomically (:func:`write_npz_atomically`; temporary file named ``prefix...``)."""
    arrays = {"format": np.array(kind.format), "format_version": np.array(kind.version),
              kind.fingerprint_key: np.array(fingerprint)}
    arrays.update({k: np.asarray(v) for k, v in (extra or {}).items()})
    arrays.update({"state." + k: np.asarray(v) for k, v in state.items()})
    write_npz_atomically(path, arrays,
                         prefix=prefix or f".{os.path.basename(os.fspath(path))}.")


def load_state(path, kind, fingerprint):
    """(state dict, the file's other arrays) of a file :func:`save_state` wrote; a
    :class:`StateFileError` when it is not one of ``kind``, or was saved under another
    fingerprint."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read the state file: {why(exc)}") from None
    except Exception as exc:         # zip, npy and pickle errors alike: refuse the file
        raise StateFileError(f"{path}: not {kind.noun} ({_load_error(exc, path)})") from None
    if str(data.get("format", "")) != kind.format:
        raise StateFileError(f"{path}: not {kind.noun}")
    if int(data.get("format_version", -1)) != kind.version:
        raise StateFileError(f"{path}: {kind.version_noun} {data.get('format_version')} is not "
                             f"supported (this edgegru reads version {kind.version})")
    if str(data.get(kind.fingerprint_key)) != fingerprint:
        raise StateFileError(f"{path}: {kind.other_model}")
    state = {k[6:]: v for k, v in data.items() if k.startswith("state.")}
    return state, {k: v for k, v in data.items() if not k.startswith("state.")}


def _load_error(exc, path):
    """Why np.load refused a file, without numpy's advice to load it unsafely."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        head = b""
    if not head.startswith((b"PK\x03\x04", b"\x93NUMPY")):
        return "not an .npz archive"
    text = str(exc).split("\n")[0]
    if "allow_pickle" in text or "pickle" in text.lower():
        return "it holds pickled Python objects, which edgegru never loads"
    return text or exc.__class__.__name__


def why(exc):
    """An OSError as a few words (``No space left on device``), without Python's decoration."""
    return exc.strerror or str(exc) or exc.__class__.__name__
