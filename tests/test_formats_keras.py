"""Keras import: .keras and .weights.h5 files saved by Keras 3.15 (PyTorch backend) and Keras'
own outputs on a seeded input (tests/data/formats, made by tools/make_format_fixtures.py)."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("h5py")
import edgegru  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "formats")


@pytest.fixture(scope="session")
def expected():
    with np.load(os.path.join(DATA, "expected.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("file,key", [
    ("keras_gru2.keras", "keras_gru2"),                        # GRU, GRU, Dense (reset_after)
    ("keras_gru2.weights.h5", "keras_gru2"),                   # the same, weights only
    ("keras_bidir_reset_before.keras", "keras_bidir_reset_before"),  # Bidirectional, sigmoid
])
def test_keras_files_match_keras(file, key, expected):
    model = edgegru.load(os.path.join(DATA, file))
    assert np.abs(model.run(expected[key + ".X"]) - expected[key + ".Y"]).max() <= 1e-5


def test_bare_weights_file_says_what_it_assumed():
    model = edgegru.load(os.path.join(DATA, "keras_gru2.weights.h5"))
    assert "assumed" in model.meta["provenance"]["source"]["notes"]


def test_hard_sigmoid_is_refused_with_the_fix():
    with pytest.raises(edgegru.ModelFormatError,
                       match="recurrent_activation 'hard_sigmoid' is not supported.*retrain"):
        edgegru.load(os.path.join(DATA, "keras_hard_sigmoid.keras"))


def _with_config(change):
    with zipfile.ZipFile(os.path.join(DATA, "keras_gru2.keras")) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    config = json.loads(entries["config.json"])
    change(config["config"]["layers"])
    entries["config.json"] = json.dumps(config).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("change,match", [
    (lambda layers: layers[-1]["config"].update(activation="relu"),
     "Dense activation 'relu' is not supported"),
    (lambda layers: layers[1].update(class_name="LSTM"), r"\(LSTM\) is not supported"),
    (lambda layers: layers[1]["config"].update(go_backwards=True), "go_backwards"),
    (lambda layers: layers[1]["config"].update(reset_after=False),
     r"bias has shape \(2, 48\), expected \(48,\)"),
])
def test_unsupported_keras_layers_are_named(change, match):
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.load(_with_config(change))
