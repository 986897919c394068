import os

import numpy as np
import pytest

# The suite tests the numba kernels (and the NumPy fallback): an ahead-of-time module that
# `edgegru compile` left in the package's __pycache__ must not stand in for them. tests/test_aot.py
# builds its own and runs it in child processes.
os.environ["EDGEGRU_AOT"] = "0"

import edgegru  # noqa: E402

# The kernels run both ways: compiled by numba, and on the plain NumPy fallback.
BACKENDS = ["numba", "numpy"] if edgegru.JIT else ["numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def make_model(backend="numba" if edgegru.JIT else "numpy", seed=0, **sizes):
    config = edgegru.GRUConfig(**sizes)
    return edgegru.Model(config, edgegru.GRUWeights.random(config, seed=seed), backend=backend)


def assert_resumes(make_scorer, X, cut):
    """A scorer stopped after row cut and restored from its state in a new one, and a
    GroupScorer of two interleaved streams restored the same way, give exactly the scores of
    uninterrupted scorers. Returns the first scorer and the first group (for their states)."""
    from edgegru.scoring import GroupScorer
    a = make_scorer()
    first = a.score_many(X[:cut])
    b = make_scorer()
    b.state = {k: np.array(v) for k, v in a.state.items()}
    assert np.array_equal(np.r_[first, b.score_many(X[cut:])], make_scorer().score_many(X))
    keys = ["p1", "p2"] * (len(X) // 2)
    group = GroupScorer(make_scorer())
    got = group.score_many(keys[:cut], X[:cut])
    restored = GroupScorer(make_scorer())
    restored.state = group.state
    got = np.r_[got, restored.score_many(keys[cut:], X[cut:])]
    for key in ("p1", "p2"):
        rows = [i for i, k in enumerate(keys) if k == key]
        assert np.array_equal(got[rows], make_scorer().score_many(X[rows]))
    return a, group


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# A scoring model for the stream and CLI tests (tests/test_stream.py, tests/test_run_cli.py):
# random GRU weights with the preprocessing/scoring metadata edgegru train writes, for the
# columns of examples/sensor.csv. Random weights make meaningless forecasts, so residual_std is
# wide: scores stay finite and modest, and the tests compare numbers, not detections.
SENSOR_COLUMNS = ["temperature", "vibration", "current", "pressure"]


def make_scoring_model(seed=0, hidden_size=16, warmup=3, threshold=3.0):
    model = make_model(input_size=4, hidden_size=hidden_size, output_size=4, seed=seed)
    model.meta["preprocessing"] = {"columns": SENSOR_COLUMNS, "mean": [32.4, 1.95, 8.95, 2.91],
                                   "std": [8.4, 0.38, 3.4, 1.0]}
    model.meta["scoring"] = {"residual_std": [1.5, 1.5, 1.5, 1.5], "smoothing": 0.3,
                             "threshold": threshold, "warmup": warmup}
    return model


@pytest.fixture(scope="session")
def scoring_model_path(tmp_path_factory):
    """Path of a small scoring model (.npz), saved once per test session."""
    path = tmp_path_factory.mktemp("scoring") / "model.npz"
    edgegru.save(make_scoring_model(), path)
    return path


def assert_scores_with_missing_values(make_scorer, X, old_keys):
    """Rows X with NaN and inf in them get finite scores, score_one row by row gives exactly
    score_many's, and a state saved before ``old_keys`` existed (those keys left out) still
    loads. Returns the scorer given that old state, and the state."""
    many = make_scorer().score_many(X)
    assert np.isfinite(many).all()
    b = make_scorer()
    assert np.array_equal(np.array([b.score_one(x) for x in X]), many)
    state = b.state
    for key in old_keys:
        del state[key]
    b.state = state
    return b, state
