"""Seeded fuzzing of every importer: mutated valid files either load or raise ModelFormatError,
in one sentence, and nothing hangs (each load runs under a 10 s alarm).

Two kinds of mutation: raw bytes (flip, overwrite a run, truncate, delete, insert), and, for the
zip-based formats, the same mutations applied to one entry before the zip is rebuilt with valid
checksums, so the mutation reaches the pickle, JSON, HDF5 or .npy parser behind the zip.
"""
import io
import os
import signal
import zipfile

import numpy as np
import pytest

import edgegru

DATA = os.path.join(os.path.dirname(__file__), "data", "formats")
CASES_PER_FILE = 1000
# file, zip entries worth mutating (by name ending; None: not a zip), module it needs
FILES = [
    ("gru2_linear.pt", ["/data.pkl", "/byteorder"], None),
    ("grucell.pt", ["/data.pkl"], None),
    ("gru2_linear.safetensors", None, None),
    ("gru2_linear_state_dict.npz", ["gru.weight_ih_l0.npy", "fc.bias.npy"], None),
    ("native", ["__meta__.npy", "l0.w_ih.npy"], None),
    # sequence-to-one with a 3-layer head: head_on, head_hidden, head_alpha in the metadata
    ("native_mlp_last", ["__meta__.npy", "head0.weight.npy"], "onnx"),
    ("native_tapered", ["__meta__.npy", "l2.w_ih.npy"], None),           # hidden_sizes
    ("native_bidir_middle", ["__meta__.npy", "l1.reverse.w_ih.npy"], None),   # layer_directions
    ("../shapes/mlp3_last.onnx", None, "onnx"),
    ("../shapes/keras_last_mlp.keras", ["config.json"], "h5py"),
    ("gru2_linear.onnx", None, "onnx"),
    ("gru_bidir.onnx", None, "onnx"),
    ("keras_gru2.keras", ["config.json", "model.weights.h5"], "h5py"),
    ("keras_gru2.weights.h5", None, "h5py"),
    ("keras_bidir_reset_before.keras", ["config.json"], "h5py"),
    ("keras2_hard_sigmoid.h5", None, "h5py"),                 # legacy HDF5 (tf_keras 2.21)
    ("keras2_weights_only.h5", None, "h5py"),
]


def _mutate(data, rng):
    b = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:                                              # flip a few bytes
        for _ in range(rng.integers(1, 9)):
            b[rng.integers(len(b))] = rng.integers(256)
    elif kind == 1:                                            # overwrite a run
        p = rng.integers(len(b))
        n = rng.integers(1, 65)
        b[p:p + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:                                            # truncate
        b = b[:rng.integers(len(b))]
    elif kind == 3:                                            # delete a run
        p = rng.integers(len(b))
        del b[p:p + rng.integers(1, 100)]
    else:                                                      # insert a run
        p = rng.integers(len(b) + 1)
        b[p:p] = rng.integers(0, 256, rng.integers(1, 65), dtype=np.uint8).tobytes()
    return bytes(b)


def _rezip(data, suffix, rng):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entry = next(n for n in entries if n.endswith(suffix))
    entries[entry] = _mutate(entries[entry], rng) if entries[entry] else b""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in entries.items():
            z.writestr(name, blob)
    return buf.getvalue()


def _timeout(signum, frame):
    raise TimeoutError("a load took more than 10 s")


@pytest.mark.parametrize("file,entries,needs", FILES, ids=[f[0] for f in FILES])
def test_mutated_files_load_or_raise_model_format_error(file, entries, needs, tmp_path):
    if needs:
        pytest.importorskip(needs)
    if file.startswith("native"):
        source = {"native": "gru2_linear.pt", "native_mlp_last": "../shapes/mlp3_last.onnx",
                  "native_tapered": "../shapes/tapered.pt",
                  "native_bidir_middle": "../shapes/bidir_middle.pt"}[file]
        edgegru.save(edgegru.load(os.path.join(DATA, source)), tmp_path / "m.npz")
        data = (tmp_path / "m.npz").read_bytes()
    else:
        data = open(os.path.join(DATA, file), "rb").read()
    rng = np.random.default_rng(sum(map(ord, file)))
    outcomes = {"loaded": 0, "refused": 0}
    previous = signal.signal(signal.SIGALRM, _timeout)
    try:
        for i in range(CASES_PER_FILE):
            if entries and i % 2:
                blob = _rezip(data, entries[rng.integers(len(entries))], rng)
            else:
                blob = _mutate(data, rng)
            signal.alarm(10)
            try:
                edgegru.load(blob)
                outcomes["loaded"] += 1
            except edgegru.ModelFormatError as exc:
                outcomes["refused"] += 1
                assert "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["refused"] > CASES_PER_FILE // 10, outcomes     # the mutations bite
