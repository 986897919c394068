"""AnomalyScorer's consistency model (what edgegru train writes for channels the others explain):
against a plain NumPy loop, score_one == score_many, GroupScorer, state round trip, missing
values, a persistent offset that accumulates, and refusals."""
import numpy as np
import pytest

import edgegru
from conftest import assert_resumes, assert_scores_with_missing_values, make_model

C = 3
LAGS, DEGREE = 2, 2
P = 1 + LAGS * (C - 1) * DEGREE
# channel c = a + b (in normalised units), so "c" is explained by the others
COEF = np.zeros((1, P))
COEF[0, 1], COEF[0, 3] = 1.0, 1.0          # features: 1, a, a^2, b, b^2 (this row), then lag 1


def make_scorer(backend="numba" if edgegru.JIT else "numpy", warmup=3, threshold=9.0):
    model = make_model(backend, input_size=C, hidden_size=8, output_size=C)
    model.meta["preprocessing"] = {"columns": ["a", "b", "c"], "mean": [0.0, 0.0, 0.0],
                                   "std": [1.0, 1.0, 1.0]}
    model.meta["scoring"] = {
        "residual_std": [1.0, 1.0, 1.0], "smoothing": 1.0, "threshold": threshold,
        "warmup": warmup, "combine": "max",
        "consistency": {"channels": ["c"], "lags": LAGS, "degree": DEGREE,
                        "coef": COEF.tolist(), "residual_std": [0.1], "smoothing": 0.3,
                        "ewma_std": [0.5], "weight": 2.0}}
    return edgegru.AnomalyScorer.from_model(model)


def data(T=150, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, (T, C))
    X[:, 2] = X[:, 0] + X[:, 1] + rng.normal(0.0, 0.1, T)
    return X


def naive_scores(scorer, X):
    """The docstring's formula in float64, one row at a time (forecasts from the model)."""
    Z = ((X - scorer.mean) / scorer.std).astype(np.float32).astype(np.float64)
    scorer.model.reset()
    F = scorer.model.run(Z.astype(np.float32)).astype(np.float64)
    scorer.model.reset()
    cons = scorer.consistency
    out, m, prev = np.zeros(len(X)), 0.0, Z[0]
    for t in range(len(X)):
        feats = [1.0]
        for row in (Z[t], prev):
            for c in (0, 1):
                feats += [row[c] ** p for p in range(1, DEGREE + 1)]
        q = (Z[t, 2] - np.dot(cons["coef"][0], feats)) / cons["residual_std"][0]
        m = 0.7 * m + 0.3 * q
        prev = Z[t]
        if t < scorer.warmup:
            continue
        e = scorer.residual_std ** -1 * (Z[t] - F[t - 1])
        a = e * e
        a[2] = max(abs(e[2] * q), cons["weight"] * (m / cons["ewma_std"][0]) ** 2)
        out[t] = a.max()
    return out


def test_matches_the_formula_and_score_one(backend):
    X = data()
    a = make_scorer(backend)
    many, contrib = a.score_many(X, explain=True)
    assert np.allclose(many, naive_scores(a, X), rtol=1e-5, atol=1e-6)
    b = make_scorer(backend)
    assert np.array_equal(np.array([b.score_one(x) for x in X]), many)
    assert np.array_equal(contrib.max(axis=1), many)


def test_a_persistent_offset_accumulates_and_explain_names_the_channel():
    X = data(200)
    X[100:160, 2] += 0.4                       # 4 residual std of "c", for 60 rows
    scorer = make_scorer()
    s, contrib = scorer.score_many(X, explain=True)
    baseline = make_scorer().score_many(data(200), explain=True)[1][:, 2]
    c = contrib[:, 2] - baseline
    assert c[104] > c[101] > 0                 # evidence builds over rows
    assert (contrib[105:160].argmax(axis=1) == 2).all()
    assert contrib[170:, 2].max() < contrib[110:160, 2].min()   # and goes when the offset does


def test_state_round_trip_and_group_scorer():
    a, _ = assert_resumes(make_scorer, data(120), cut=50)
    assert a.state["history"].shape == (LAGS - 1, C) and a.state["consistency"].shape == (1,)


def test_missing_values_and_old_states_give_finite_scores():
    X = data(80)
    X[30, 0] = np.nan
    X[40] = np.nan
    X[50, 2] = np.inf
    # a state saved before the consistency model
    b, _ = assert_scores_with_missing_values(make_scorer, X, ["history", "consistency"])
    assert np.isfinite(b.score_many(X)).all()


@pytest.mark.parametrize("change,match", [
    ({"channels": ["d"]}, "distinct columns"),
    ({"coef": [[1.0, 2.0]]}, "consistency coef must be a finite 1 x 9"),
    ({"lags": 0}, "lags must be a positive integer"),
    ({"smoothing": 0.0}, "smoothing must be in"),
    ({"ewma_std": [0.0]}, "ewma_std must be finite and positive"),
])
def test_bad_consistency_metadata_is_refused(change, match):
    model = make_scorer().model
    model.meta["scoring"]["consistency"].update(change)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.AnomalyScorer.from_model(model)


def test_calibration_builds_the_features_in_the_kernels_order():
    from edgegru import calibrate

    X = data(60)
    scorer = make_scorer()
    rng = np.random.default_rng(3)
    scorer._params.consistency.coef[:] = rng.normal(0.0, 0.3, (1, P))   # every feature counts
    coef = scorer._params.consistency.coef[0].copy()
    Z = X.astype(np.float32).astype(np.float64)
    q = (Z[:, 2] - calibrate.consistency_features(Z, 2, LAGS, DEGREE) @ coef) / 0.1
    expected = calibrate.ewma(q[:, None], 0.3)[:, 0]
    for t in range(len(X)):
        scorer.score_one(X[t])
        assert np.isclose(scorer.state["consistency"][0], expected[t], rtol=1e-9, atol=1e-12)
