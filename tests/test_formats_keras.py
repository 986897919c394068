"""Keras import: .keras and .weights.h5 files saved by Keras 3.15 (PyTorch backend) and Keras'
own outputs on a seeded input (tests/data/formats, made by tools/make_format_fixtures.py)."""
import dataclasses
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
    ("keras_hard_sigmoid.keras", "keras_hard_sigmoid"),        # hard_sigmoid gates (Keras 3)
    ("keras3_legacy_hard_sigmoid.h5", "keras3_legacy_hard_sigmoid"),  # legacy HDF5, functional,
])                                                             # 2 Bidirectional, reset_before
def test_keras_files_match_keras(file, key, expected):
    model = edgegru.load(os.path.join(DATA, file))
    assert np.abs(model.run(expected[key + ".X"]) - expected[key + ".Y"]).max() <= 1e-5


@pytest.fixture(scope="session")
def expected_keras2():
    with np.load(os.path.join(DATA, "expected_keras2.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("file,key,alpha", [          # saved by tf_keras 2.21 (Keras 2)
    ("keras2_hard_sigmoid.h5", "keras2_hard_sigmoid", 0.2),   # legacy HDF5, reset_after=False
    ("keras2_hard_sigmoid.keras", "keras2_hard_sigmoid_keras", 0.2),  # Keras 2's .keras zip
    ("keras2_gru2_sigmoid.h5", "keras2_gru2_sigmoid", None),  # 2 GRUs + Dense(sigmoid)
    ("keras2_bidir.h5", "keras2_bidir", 0.2),                 # Bidirectional, hard_sigmoid
    ("keras2_weights_only.h5", "keras2_weights_only", None),  # save_weights: no config
])
def test_keras2_files_match_keras2(file, key, alpha, expected_keras2):
    model = edgegru.load(os.path.join(DATA, file))
    assert model.config.gate_alpha == alpha if alpha else \
        model.config.gate_activation == "sigmoid"
    Y = model.run(expected_keras2[key + ".X"])
    if file == "keras2_weights_only.h5":
        # no configuration: a linear head is assumed (and said); this one had a sigmoid
        assert "assumed" in model.meta["provenance"]["source"]["notes"]
        Y = 1 / (1 + np.exp(-Y.astype(np.float64)))
    assert np.abs(Y - expected_keras2[key + ".Y"]).max() <= 1e-5


def test_bare_weights_file_says_what_it_assumed():
    model = edgegru.load(os.path.join(DATA, "keras_gru2.weights.h5"))
    assert "assumed" in model.meta["provenance"]["source"]["notes"]


def test_hard_sigmoid_follows_the_keras_version_that_wrote_the_file(expected):
    """Keras 3 defines hard_sigmoid as relu6(x + 3) / 6, Keras 2 as clip(0.2 x + 0.5): the file's
    keras_version decides, and the logistic sigmoid or the other slope would be far off."""
    path = os.path.join(DATA, "keras_hard_sigmoid.keras")
    model = edgegru.load(path)
    c = model.config
    assert (c.gate_activation, c.gate_alpha, c.gate_beta) == ("hard_sigmoid", 1 / 6, 0.5)
    assert "Keras 3.15.1" in model.meta["provenance"]["source"]["notes"]
    X, Y = expected["keras_hard_sigmoid.X"], expected["keras_hard_sigmoid.Y"]
    for other in (dict(gate_alpha=0.2), dict(gate_activation="sigmoid")):
        wrong = edgegru.Model(dataclasses.replace(c, **other), model.weights)
        assert np.abs(wrong.run(X) - Y).max() > 1e-3
    # the same file claiming Keras 2 runs the Keras 2 formula; claiming nothing is refused
    keras2 = edgegru.load(_with_metadata(path, {"keras_version": "2.15.0"}))
    assert keras2.config.gate_alpha == 0.2
    with pytest.raises(edgegru.ModelFormatError, match="does not say which Keras version"):
        edgegru.load(_with_metadata(path, None))


def _rezipped(path, edit):
    """The bytes of the zip at path with edit(entries) applied to its {name: bytes}."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    edit(entries)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _with_metadata(path, metadata):
    def edit(entries):
        if metadata is None:
            del entries["metadata.json"]
        else:
            entries["metadata.json"] = json.dumps(metadata).encode()
    return _rezipped(path, edit)


def test_legacy_h5_is_read_in_its_recorded_layer_order():
    model = edgegru.load(os.path.join(DATA, "keras3_legacy_hard_sigmoid.h5"))
    c = model.config
    assert (c.num_layers, c.bidirectional, c.reset_after, c.head_activation) == \
        (2, True, False, "sigmoid")
    source = model.meta["provenance"]["source"]
    assert source["format"] == "keras-legacy-h5" and source["keras_version"] == "3.15.1"


def _with_config(change):
    def edit(entries):
        config = json.loads(entries["config.json"])
        change(config["config"]["layers"])
        entries["config.json"] = json.dumps(config).encode()
    return _rezipped(os.path.join(DATA, "keras_gru2.keras"), edit)


@pytest.mark.parametrize("change,match", [
    (lambda layers: layers[-1]["config"].update(activation="gelu"),
     "activation 'gelu' is not supported"),
    (lambda layers: layers.insert(2, layers.pop()), "Dense layers after the GRU layers"),
    (lambda layers: layers[1].update(class_name="LSTM"), r"\(LSTM\) is not supported"),
    (lambda layers: layers[1]["config"].update(go_backwards=True), "go_backwards"),
    (lambda layers: layers[1]["config"].update(reset_after=False),
     r"bias has shape \(2, 48\), expected \(48,\)"),
])
def test_unsupported_keras_layers_are_named(change, match):
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.load(_with_config(change))
