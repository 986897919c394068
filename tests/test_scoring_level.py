"""The level test: channels with a steady normal level, their EWMA'd values against it (T^2)."""
import numpy as np

import edgegru
from conftest import make_model
from edgegru.calibrate import CalibrationOptions, fit_level, level_averages, variance_ratio

COLUMNS = ["flow", "pressure", "temperature"]


def normal_rows(T, seed=0):
    """flow and pressure: noise around a steady level; temperature: a slow random walk."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, 3))
    X[:, 2] = np.cumsum(rng.standard_normal(T)) * 0.3
    return X


def make_scorer(X_normal):
    model = make_model(input_size=3, hidden_size=8, num_layers=1, output_size=3)
    model.meta["preprocessing"] = {"columns": COLUMNS, "mean": [0.0] * 3, "std": [1.0] * 3}
    model.meta["scoring"] = {"residual_std": [1e6] * 3, "threshold": 10.0, "warmup": 3}
    level, t2_max, ratio = fit_level(X_normal, X_normal, COLUMNS, CalibrationOptions())
    level["weight"] = 10.0 / (3.0 * t2_max)
    model.meta["scoring"]["level"] = level
    return edgegru.AnomalyScorer.from_model(model), ratio


def test_only_channels_with_a_steady_level_are_tested():
    ratio = variance_ratio(normal_rows(400))
    assert ratio[0] < 3 and ratio[1] < 3 and ratio[2] > 25
    scorer, _ = make_scorer(normal_rows(400))
    assert scorer.level["channels"] == ["flow", "pressure"]


def test_a_level_shift_alarms_names_its_channel_and_resumes_exactly():
    scorer, _ = make_scorer(normal_rows(400))
    X = normal_rows(300, seed=1)
    X[150:250, 0] -= 2.0                            # flow down by two sigma for 100 rows
    scores, contrib = scorer.score_many(X, explain=True)
    assert not (scores[:150] > scorer.threshold).any()
    assert (scores[170:250] > scorer.threshold).mean() > 0.9
    assert (np.nanargmax(contrib[170:250], axis=1) == 0).all()
    assert not (scores[280:] > scorer.threshold).any()        # over once the flow is back
    one = edgegru.AnomalyScorer.from_model(scorer.model)
    one.reset()                                     # the model (and its state) is shared
    assert np.array_equal([one.score_one(x) for x in X], scores)
    group = edgegru.scoring.GroupScorer(edgegru.AnomalyScorer.from_model(scorer.model))
    keys = ["a", "b"] * len(X)
    both = group.score_many(keys, np.repeat(X, 2, axis=0))
    assert np.array_equal(both[0::2], scores) and np.array_equal(both[1::2], scores)
    assert group.state["level"].shape == (2, 2)


def test_the_calibration_averages_are_the_scorers():
    X = normal_rows(200)
    X[50, 0] = np.nan                                # a missing value keeps its average
    scorer, _ = make_scorer(normal_rows(400))
    lv = scorer.level
    S = level_averages(X, X, [0, 1], np.asarray(lv["center"]), lv["smoothing"])
    for t in range(len(X)):
        scorer.score_one(X[t])
        assert np.array_equal(scorer.state["level"], S[t])
    assert S[50, 0] == S[49, 0]


def test_a_state_saved_under_other_level_settings_is_not_resumed():
    scorer, _ = make_scorer(normal_rows(400))
    other, _ = make_scorer(normal_rows(400, seed=5))
    assert scorer.fingerprint != other.fingerprint
    assert scorer.fingerprint == make_scorer(normal_rows(400))[0].fingerprint


def rebaselined(scorer, drop=30.0, settle=20):
    """A scorer of the same model (reset: the model's state is shared) whose level test takes
    a settled level as the new normal."""
    model = scorer.model
    model.meta["scoring"]["level"]["rebaseline"] = {"above": scorer.threshold, "drop": drop,
                                                    "settle": settle}
    out = edgegru.AnomalyScorer.from_model(model)
    out.reset()
    return out


def after_a_fault(seed=1):
    """Normal rows, a large fault on flow (rows 150-249), then flow settled 2.5 sigma lower."""
    X = normal_rows(500, seed=seed)
    X[150:250, 0] -= 40.0
    X[250:, 0] -= 2.5
    return X


def test_after_a_large_episode_the_settled_level_is_the_new_normal():
    plain, _ = make_scorer(normal_rows(400))
    X = after_a_fault()
    before = plain.score_many(X)
    assert (before[300:] > plain.threshold).mean() > 0.9       # the settled level alarms
    scorer = rebaselined(plain)
    scores = scorer.score_many(X)
    assert np.array_equal(scores[:270], before[:270])           # the same until it has settled
    assert (scores[160:250] > scorer.threshold).all()           # the fault itself alarms
    assert not (scores[300:] > scorer.threshold).any()          # the new level does not
    assert np.allclose(scorer.state["level_shift"], [-2.5, 0.0], atol=0.5)
    # each path gives the same numbers, and a state saved mid-episode resumes exactly
    one = edgegru.AnomalyScorer.from_model(scorer.model)
    one.reset()
    assert np.array_equal([one.score_one(x) for x in X], scores)
    one.reset()
    one.score_many(X[:275])
    saved = one.state
    assert saved["level_peak"][0] > 0 and saved["level_since"][0] >= 0
    resumed = edgegru.AnomalyScorer.from_model(scorer.model)
    resumed.state = saved
    assert np.array_equal(resumed.score_many(X[275:]), scores[275:])
    group = edgegru.scoring.GroupScorer(edgegru.AnomalyScorer.from_model(scorer.model))
    both = group.score_many(["a", "b"] * len(X), np.repeat(X, 2, axis=0))
    assert np.array_equal(both[0::2], scores) and np.array_equal(both[1::2], scores)


def test_a_fault_that_returns_to_normal_and_small_ones_are_not_rebaselined():
    scorer = rebaselined(make_scorer(normal_rows(400))[0])
    X = normal_rows(500, seed=2)
    X[150:250, 0] -= 40.0                       # back to normal afterwards: nothing to take
    X[350:450, 1] += 2.0                        # a small shift never falls to peak / drop
    scores = scorer.score_many(X)
    assert np.array_equal(scorer.state["level_shift"], [0.0, 0.0])
    assert (scores[370:450] > scorer.threshold).mean() > 0.9
    assert rebaselined(make_scorer(normal_rows(400))[0]).fingerprint != \
        make_scorer(normal_rows(400))[0].fingerprint
