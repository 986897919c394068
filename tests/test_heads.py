"""Heads past one linear layer (edgegru.heads) and sequence-to-one models (head_on="last"):
against the float64 reference, step == run bitwise, the native file, and what stays as it was."""
import json
import os

import numpy as np
import pytest

import edgegru
from edgegru import GRUConfig, GRUWeights, Model
import naive

BACKENDS = ["numba", "numpy"] if edgegru.JIT else ["numpy"]
DATA = os.path.join(os.path.dirname(__file__), "data", "formats")

CONFIGS = {
    "mlp2": dict(input_size=3, hidden_size=8, num_layers=2, output_size=2,
                 head_hidden=((5, "relu"),)),
    "mlp3": dict(input_size=3, hidden_size=8, output_size=1,
                 head_hidden=((7, "tanh"), (4, "hard_sigmoid")), head_activation="sigmoid"),
    "tanh_out": dict(input_size=4, hidden_size=6, output_size=3, head_activation="tanh"),
    "last": dict(input_size=3, hidden_size=8, num_layers=2, output_size=1, head_on="last"),
    "last_mlp": dict(input_size=3, hidden_size=8, output_size=2, head_on="last",
                     head_hidden=((4, "relu"),), head_activation="hard_sigmoid",
                     head_alpha=0.2),
    "last_nohead": dict(input_size=3, hidden_size=5, head_on="last"),
    "last_bidir": dict(input_size=3, hidden_size=5, bidirectional=True, output_size=2,
                       head_on="last", head_hidden=((3, "relu"),)),
}


def make(name, backend, seed=0):
    cfg = GRUConfig(**CONFIGS[name])
    weights = GRUWeights.random(cfg, seed=seed)
    for key, a in weights.arrays.items():         # biases big enough that relu cuts some off
        if key.startswith("head") and key.endswith("bias"):
            a[...] = np.random.default_rng(seed).uniform(-1, 1, a.shape)
    return Model(cfg, weights, backend=backend)


def sequence(T=200, I=3, seed=1):
    return np.random.default_rng(seed).standard_normal((T, I)).astype(np.float32) * 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_run_matches_the_float64_reference(name, backend):
    model = make(name, backend)
    X = sequence(I=model.input_size)
    ref, h_ref = naive.gru(model.config, model.weights.arrays, X)
    Y = model.run(X)
    assert Y.shape == ((model.output_size,) if model.config.head_on == "last"
                       else (len(X), model.output_size))
    assert np.abs(Y - ref).max() <= 1e-5
    assert np.abs(model.state - h_ref).max() <= 1e-5


def check_step_equals_run(model, X):
    """step() over X (T, I) gives run(X, all_steps=True) bitwise, and run(X) its last row for
    a sequence-to-one model; returns every step's output."""
    every = model.run(X, all_steps=True)
    model.reset()
    out = np.empty(model.output_size, np.float32)
    steps = np.array([model.step(x, out=out).copy() for x in X])
    assert np.array_equal(steps, every)
    model.reset()
    assert np.array_equal(model.run(X), every[-1] if model.config.head_on == "last" else every)
    return every


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if "bidir" not in n])
def test_step_equals_run_bitwise(name, backend):
    model = make(name, backend)
    X = sequence(I=model.input_size)
    every = check_step_equals_run(model, X)
    model.reset()
    x, y = np.zeros(model.input_size, np.float32), np.zeros(model.output_size, np.float32)
    step = model.stepper(x, y)
    for t in range(len(X)):
        x[:] = X[t]
        step()
    assert np.array_equal(y, every[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["mlp2", "last_mlp", "last_bidir"])
def test_batches_run_each_sequence_as_alone(name, backend):
    model = make(name, backend)
    Xb = np.stack([sequence(50, model.input_size, seed=s) for s in range(3)])
    Yb = model.run(Xb)
    for b in range(3):
        model.reset()
        assert np.array_equal(Yb[b], model.run(Xb[b]))
    last = model.run(Xb, all_steps=False)
    assert last.shape == (3, model.output_size)
    assert np.array_equal(last, model.run(Xb, all_steps=True)[:, -1])


def test_last_step_of_no_steps_is_refused():
    model = make("last", BACKENDS[0])
    with pytest.raises(ValueError, match="no time steps"):
        model.run(np.zeros((0, 3), np.float32))
    assert model.run(np.zeros((0, 3), np.float32), all_steps=True).shape == (0, 1)


def test_a_single_linear_head_stays_fused():
    # the GRU kernels compute linear and sigmoid heads themselves, as before this module
    for act in ("linear", "sigmoid"):
        cfg = GRUConfig(input_size=3, hidden_size=8, output_size=2, head_activation=act)
        assert cfg.fused_head and Model(cfg, GRUWeights.random(cfg))._chain is None
    assert not GRUConfig(**CONFIGS["tanh_out"]).fused_head


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_native_file_round_trip(name, tmp_path):
    model = make(name, BACKENDS[0])
    edgegru.save(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        meta = json.loads(str(z["__meta__"]))
    assert meta["format_version"] == 3            # what an older edgegru must refuse
    back = edgegru.load(tmp_path / "m.npz")
    assert back.config == model.config
    X = sequence(I=model.input_size)
    assert np.array_equal(back.run(X), model.run(X))


def test_plain_models_keep_their_file_version(tmp_path):
    cfg = GRUConfig(input_size=3, hidden_size=4, output_size=1, head_activation="sigmoid")
    edgegru.save(Model(cfg, GRUWeights.random(cfg)), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        meta = json.loads(str(z["__meta__"]))
    assert meta["format_version"] == 1 and "head_on" not in meta["config"]


@pytest.mark.parametrize("bad,match", [
    ({"head_on": "first"}, "head_on"),
    ({"head_hidden": [[0, "relu"]]}, "head_hidden"),
    ({"head_hidden": [[4, "gelu"]]}, "activation"),
    ({"head_hidden": "relu"}, "head_hidden"),
    ({"hidden_sizes": [16, "x"]}, "hidden_sizes"),
    ({"hidden_sizes": [5, 8]}, r"array l0.w_ih has shape \(24, 3\), expected \(15, 3\)"),
])
def test_native_file_refuses_bad_head_fields(bad, match, tmp_path):
    model = make("mlp2", BACKENDS[0])
    edgegru.save(model, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["__meta__"]))
    meta["config"].update(bad)
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.load(tmp_path / "bad.npz")


def test_scoring_refuses_a_sequence_to_one_model():
    cfg = GRUConfig(input_size=3, hidden_size=4, output_size=3, head_on="last")
    model = Model(cfg, GRUWeights.random(cfg))
    with pytest.raises(edgegru.ModelFormatError, match="last step only"):
        edgegru.AnomalyScorer(model, ["a", "b", "c"], [0] * 3, [1] * 3, [1] * 3, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_is_the_forward_stack_on_the_reversed_sequence(backend):
    cfg = GRUConfig(input_size=3, hidden_size=6, num_layers=2, output_size=2, reverse=True,
                    head_hidden=((4, "tanh"),))
    model = Model(cfg, GRUWeights.random(cfg, seed=3), backend=backend)
    X = sequence(I=3)
    ref, _ = naive.gru(cfg, model.weights.arrays, X[::-1])
    assert np.abs(model.run(X) - ref[::-1]).max() <= 1e-5
    with pytest.raises(ValueError, match="reverse"):
        model.stepper(np.zeros(3, np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="reverse is for unidirectional"):
        GRUConfig(input_size=3, hidden_size=6, reverse=True, bidirectional=True)


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_run_each_sequence_over_its_own_steps(reverse):
    cfg = GRUConfig(input_size=3, hidden_size=5, output_size=2, reverse=reverse)
    model = Model(cfg, GRUWeights.random(cfg, seed=4))
    Xb = np.stack([sequence(30, 3, seed=s) for s in range(3)])
    h0 = np.random.default_rng(5).standard_normal((1, 3, 5)).astype(np.float32)
    Y, h_n = model.run(Xb, h0=h0, lengths=[30, 12, 0], return_state=True)
    y1, h1 = model.run(Xb[1:2, :12], h0=h0[:, 1:2], return_state=True)
    assert np.array_equal(Y[1, :12], y1[0]) and not Y[1, 12:].any() and not Y[2].any()
    assert np.array_equal(h_n[:, 1], h1[:, 0]) and np.array_equal(h_n[:, 2], h0[:, 2])
    assert np.array_equal(Y[0], model.run(Xb[:1], h0=h0[:, :1])[0])
    last = model.run(Xb, h0=h0, lengths=[30, 12, 0], all_steps=False)
    assert np.array_equal(last[1], y1[0, -1]) and not last[2].any()
    with pytest.raises(ValueError, match="lengths must be 3 integers in 0..30"):
        model.run(Xb, lengths=[31, 1, 1])


TAPERED = [dict(hidden_sizes=(16, 16, 8), hidden_size=8, num_layers=3),
           dict(hidden_sizes=(6, 4), hidden_size=4, num_layers=2, bidirectional=True),
           dict(hidden_sizes=(6, 4), hidden_size=4, num_layers=2, reverse=True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sizes", TAPERED, ids=["3-layers", "bidirectional", "reverse"])
def test_tapered_stacks_match_the_float64_reference(sizes, backend):
    cfg = GRUConfig(input_size=3, output_size=2, head_hidden=((5, "relu"),), **sizes)
    model = Model(cfg, GRUWeights.random(cfg, seed=6), backend=backend)
    X = sequence(I=3)
    ref, _ = naive.gru(cfg, model.weights.arrays, X[::-1] if cfg.reverse else X)
    Y = model.run(X)
    assert np.abs(Y - (ref[::-1] if cfg.reverse else ref)).max() <= 1e-5
    if not (cfg.bidirectional or cfg.reverse):
        model.reset()
        out = np.empty(2, np.float32)
        assert np.array_equal(np.array([model.step(x, out=out).copy() for x in X]), Y)


def test_hidden_sizes_are_checked():
    assert GRUConfig(input_size=2, hidden_size=4, num_layers=2, hidden_sizes=(4, 4)) \
        == GRUConfig(input_size=2, hidden_size=4, num_layers=2)          # uniform: one way
    with pytest.raises(ValueError, match="the last one hidden_size"):
        GRUConfig(input_size=2, hidden_size=4, num_layers=2, hidden_sizes=(8, 2))
    with pytest.raises(ValueError, match="positive integers"):
        GRUConfig(input_size=2, hidden_size=4, num_layers=2, hidden_sizes=(0, 4))
