"""AnomalyScorer's drift test (the consistency section's "drift" part, which edgegru train
writes for channels the others explain only roughly): against a plain NumPy loop,
score_one == score_many, a slow drift caught before it ends and forgotten when it ends,
GroupScorer, state round trip, old states, and refusals."""
import numpy as np
import pytest

import edgegru
from conftest import assert_resumes, assert_scores_with_missing_values, make_model

C = 3
LAGS, DEGREE = 2, 2
P = 1 + LAGS * (C - 1) * DEGREE
# channel b = c - a (in normalised units), so b's slow departures from that can be tested
COEF = np.zeros((1, P))
COEF[0, 1], COEF[0, 3] = -1.0, 1.0         # features: 1, a, a^2, c, c^2 (this row), then lag 1
ALPHAS = (0.05, 0.3, 0.002)                # slow, fast, baseline
DRIFT = {"channels": ["b"], "coef": COEF.tolist(), "residual_std": [0.1],
         "smoothing": ALPHAS[0], "fast_smoothing": ALPHAS[1], "baseline_smoothing": ALPHAS[2],
         "std": [0.2], "fast_std": [0.5], "weight": 2.0}


def make_scorer(backend="numba" if edgegru.JIT else "numpy", warmup=3, threshold=9.0):
    model = make_model(backend, input_size=C, hidden_size=8, output_size=C)
    model.meta["preprocessing"] = {"columns": ["a", "b", "c"], "mean": [0.0, 0.0, 0.0],
                                   "std": [1.0, 1.0, 1.0]}
    model.meta["scoring"] = {
        "residual_std": [1.0, 1.0, 1.0], "smoothing": 1.0, "threshold": threshold,
        "warmup": warmup, "combine": "max",
        # no channel for the consistency term itself: the drift test alone
        "consistency": {"channels": [], "lags": LAGS, "degree": DEGREE, "coef": [],
                        "residual_std": [], "smoothing": 0.3, "ewma_std": [], "weight": 1.0,
                        "drift": dict(DRIFT)}}
    return edgegru.AnomalyScorer.from_model(model)


def data(T=300, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, (T, C))
    X[:, 1] = X[:, 2] - X[:, 0] + rng.normal(0.0, 0.1, T)
    return X


def naive_scores(scorer, X):
    """The docstring's formula in float64, one row at a time (forecasts from the model)."""
    Z = ((X - scorer.mean) / scorer.std).astype(np.float32).astype(np.float64)
    scorer.model.reset()
    F = scorer.model.run(Z.astype(np.float32)).astype(np.float64)
    scorer.model.reset()
    out, base, u, v, prev = np.zeros(len(X)), 0.0, 0.0, 0.0, Z[0]
    for t in range(len(X)):
        feats = [1.0]
        for row in (Z[t], prev):
            for c in (0, 2):
                feats += [row[c] ** p for p in range(1, DEGREE + 1)]
        q = (Z[t, 1] - np.dot(COEF[0], feats)) / 0.1
        g = max(ALPHAS[2], 1.0 / (t + 1))
        base = (1 - g) * base + g * q
        u = (1 - ALPHAS[0]) * u + ALPHAS[0] * (q - base)
        v = (1 - ALPHAS[1]) * v + ALPHAS[1] * (q - base)
        prev = Z[t]
        if t < scorer.warmup:
            continue
        e = Z[t] - F[t - 1]
        a = e * e
        if u * v > 0:
            a[1] = max(a[1], 2.0 * min(abs(u) / 0.2, abs(v) / 0.5) ** 2)
        out[t] = a.max()
    return out


def test_matches_the_formula_and_score_one(backend):
    X = data()
    X[150:250, 1] += np.linspace(0.0, 0.6, 100)      # so the term counts, not only e^2
    a = make_scorer(backend)
    many, contrib = a.score_many(X, explain=True)
    assert np.allclose(many, naive_scores(a, X), rtol=1e-5, atol=1e-6)
    b = make_scorer(backend)
    assert np.array_equal(np.array([b.score_one(x) for x in X]), many)
    assert np.array_equal(contrib.max(axis=1), many)


def drift_part(X):
    """Channel b's contribution with the drift test minus without it (0 where the test adds
    nothing)."""
    with_test = make_scorer().score_many(X, explain=True)[1][:, 1]
    without = make_scorer()
    without.consistency = None
    drift = without._params.drift
    without._params = without._params._replace(drift=drift._replace(channel=drift.channel[:0]))
    return with_test - without.score_many(X, explain=True)[1][:, 1]


def test_a_slow_drift_is_caught_before_it_ends_and_forgotten_when_it_ends():
    X = data(400)
    X[150:300, 1] -= np.linspace(0.0, 0.6, 150)      # to 6 residual std of "b", then back
    s, contrib = make_scorer().score_many(X, explain=True)
    term = drift_part(X)
    assert term[:150].max() < 9.0                    # nothing before
    assert (term[250:300] > 9.0).all()               # over the threshold, 100 rows in
    assert (contrib[250:300].argmax(axis=1) == 1).all()      # --explain names the channel
    assert term[305:330].max() < 9.0                 # gone within a few rows of the end


def test_the_baseline_starts_where_the_stream_is():
    X = data(300)
    X[:, 1] += 0.5                                   # an offset all along: wear, not a drift
    assert drift_part(X).max() < 9.0


def test_state_round_trip_and_group_scorer():
    X = data(160)
    X[60:140, 1] += np.linspace(0.0, 0.5, 80)
    a, group = assert_resumes(make_scorer, X, cut=70)
    assert a.state["drift"].shape == (1, 3) and a.state["drift"][0, 0] != 0.0
    assert group.state["drift"].shape == (2, 1, 3)


def test_missing_values_and_old_states():
    X = data(120)
    X[30, 0] = np.nan
    X[40] = np.nan
    X[50, 1] = np.inf
    # a state saved before the drift test
    b, state = assert_scores_with_missing_values(make_scorer, X, ["drift"])
    assert (b.state["drift"] == 0.0).all() and np.isfinite(b.score_many(X)).all()
    with pytest.raises(ValueError, match="drift must be floats"):
        b.state = dict(state, drift=np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match="does not fit"):
        b.state = dict(state, drift=np.zeros((2, 3)))


@pytest.mark.parametrize("change,match", [
    ({"channels": ["d"]}, "drift channels"),
    ({"channels": ["b", "b"]}, "drift channels"),
    ({"coef": [[1.0, 2.0]]}, "drift coef must be a finite 1 x 9"),
    ({"smoothing": 0.0}, "must be in"),
    ({"baseline_smoothing": 1.5}, "must be in"),
    ({"weight": -1.0}, "weight positive"),
    ({"fast_std": [0.0]}, "drift fast_std must be finite and positive"),
    ({"std": [1.0, 2.0]}, "drift std has 2 values"),
])
def test_bad_drift_metadata_is_refused(change, match):
    model = make_scorer().model
    model.meta["scoring"]["consistency"]["drift"].update(change)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.AnomalyScorer.from_model(model)


def test_bad_drift_section_is_refused():
    model = make_scorer().model
    del model.meta["scoring"]["consistency"]["drift"]["fast_std"]
    with pytest.raises(edgegru.ModelFormatError, match="drift lacks 'fast_std'"):
        edgegru.AnomalyScorer.from_model(model)
    model.meta["scoring"]["consistency"]["drift"] = [1, 2]
    with pytest.raises(edgegru.ModelFormatError, match="must be a section"):
        edgegru.AnomalyScorer.from_model(model)


def test_calibration_computes_the_kernels_averages():
    from edgegru import calibrate

    X = data(100)
    X[40:90, 1] += np.linspace(0.0, 0.5, 50)
    scorer = make_scorer()
    Z = X.astype(np.float32).astype(np.float64)
    q = (Z[:, 1] - calibrate.consistency_features(Z, 1, LAGS, DEGREE) @ COEF[0]) / 0.1
    u, v = calibrate.drift_averages(q, ALPHAS)
    for t in range(len(X)):
        scorer.score_one(X[t])
        assert np.allclose(scorer.state["drift"][0, 1:], [u[t], v[t]], rtol=1e-9, atol=1e-12)
    term = calibrate.drift_statistic(u / 0.2, v / 0.5)
    assert term[0] == 0.0 and term[89] > 0.0
