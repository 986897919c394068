"""AnomalyScorer: score_many equals score_one row by row, missing values, state, errors."""
import numpy as np
import pytest

import edgegru
from conftest import make_model

COLUMNS = ["temperature", "vibration", "current"]


def make_scorer(backend=None, warmup=3, threshold=4.0, **kw):
    if backend:
        kw["backend"] = backend
    model = make_model(input_size=3, hidden_size=16, num_layers=2, output_size=3, **kw)
    model.meta["preprocessing"] = {"columns": COLUMNS, "mean": [40.0, 2.0, 10.0],
                                   "std": [2.0, 0.5, 3.0]}
    model.meta["scoring"] = {"residual_std": [0.3, 0.5, 0.4], "smoothing": 0.3,
                             "threshold": threshold, "warmup": warmup}
    return edgegru.AnomalyScorer.from_model(model)


def rows(T=200, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([40.0, 2.0, 10.0]) + rng.standard_normal((T, 3)) * [2.0, 0.5, 3.0]


def test_score_many_equals_score_one(backend):
    X = rows()
    X[[5, 50, 51, 120], [0, 1, 2, 0]] = np.nan      # missing values, two in a row
    X[80] = np.nan                                 # a whole row missing
    a, b = make_scorer(backend), make_scorer(backend)
    one = np.array([a.score_one(x) for x in X])
    many, contrib = b.score_many(X, explain=True)
    assert np.array_equal(one, many)
    assert np.allclose(contrib.sum(axis=1), many)
    assert np.array_equal(a.contributions, contrib[-1])
    for key in ("hidden", "forecast", "smoothed", "rows_seen"):
        assert np.array_equal(a.state[key], b.state[key])


def test_chunks_of_score_many_equal_one_call():
    X = rows(300)
    a, b = make_scorer(), make_scorer()
    whole = a.score_many(X)
    parts = np.concatenate([b.score_many(X[i:j]) for i, j in ((0, 1), (1, 7), (7, 150), (150, 300))])
    assert np.array_equal(whole, parts)


def test_warmup_rows_score_zero_then_positive():
    scorer = make_scorer(warmup=5)
    s = scorer.score_many(rows(20))
    assert (s[:5] == 0).all() and (s[5:] > 0).all()


def test_dict_rows_and_missing_key():
    scorer = make_scorer()
    x = dict(zip(COLUMNS, [41.0, 2.5, 9.0]), extra="ignored")
    s1 = scorer.score_one(x)
    scorer.reset()
    assert scorer.score_one([41.0, 2.5, 9.0]) == s1
    with pytest.raises(ValueError, match="lacks column.*vibration"):
        scorer.score_one({"temperature": 1.0, "current": 2.0})
    with pytest.raises(ValueError, match="row must have 3 values"):
        scorer.score_one([1.0, 2.0])


def test_state_round_trip_resumes_exactly():
    X = rows(100)
    a = make_scorer()
    expected = a.score_many(X)
    b = make_scorer()
    b.score_many(X[:40])
    saved = {k: np.array(v) for k, v in b.state.items()}
    c = make_scorer()
    c.state = saved
    assert np.array_equal(c.score_many(X[40:]), expected[40:])
    with pytest.raises(ValueError, match="does not fit"):
        c.state = {**saved, "forecast": np.zeros(5)}


def test_a_spike_scores_high_and_reset_forgets():
    scorer = make_scorer(warmup=1)
    X = rows(60)
    X[40, 1] += 20 * 0.5 * 0.5 * 10       # a large jump in one channel
    s, contrib = scorer.score_many(X, explain=True)
    assert s[40] > 5 * np.median(s[10:40])
    assert np.argmax(contrib[40]) == 1     # explain names the sensor that moved
    scorer.reset()
    assert scorer.state["rows_seen"] == 0 and scorer.score_one(X[0]) == 0.0


def test_model_without_scoring_metadata_is_refused(tmp_path):
    model = make_model(input_size=3, hidden_size=8, output_size=3)
    model.save(tmp_path / "plain.npz")
    with pytest.raises(edgegru.ModelFormatError, match="not a scoring model"):
        edgegru.AnomalyScorer.load(tmp_path / "plain.npz")


def test_load_from_file(tmp_path):
    scorer = make_scorer()
    scorer.model.save(tmp_path / "m.npz")
    loaded = edgegru.AnomalyScorer.load(tmp_path / "m.npz")
    X = rows(50)
    assert np.array_equal(loaded.score_many(X), scorer.score_many(X))
    assert loaded.columns == COLUMNS and loaded.threshold == 4.0
