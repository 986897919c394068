"""AnomalyScorer: score_many equals score_one row by row, missing values, state, errors."""
import numpy as np
import pytest

import edgegru
from conftest import make_model

COLUMNS = ["temperature", "vibration", "current"]


def make_scorer(backend=None, warmup=3, threshold=4.0, stuck_rows=None, **kw):
    if backend:
        kw["backend"] = backend
    model = make_model(input_size=3, hidden_size=16, num_layers=2, output_size=3, **kw)
    model.meta["preprocessing"] = {"columns": COLUMNS, "mean": [40.0, 2.0, 10.0],
                                   "std": [2.0, 0.5, 3.0]}
    model.meta["scoring"] = {"residual_std": [0.3, 0.5, 0.4], "smoothing": 0.3,
                             "threshold": threshold, "warmup": warmup}
    if stuck_rows is not None:
        model.meta["scoring"]["stuck_rows"] = stuck_rows
    return edgegru.AnomalyScorer.from_model(model)


def rows(T=200, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([40.0, 2.0, 10.0]) + rng.standard_normal((T, 3)) * [2.0, 0.5, 3.0]


def test_score_many_equals_score_one(backend):
    X = rows()
    X[[5, 50, 51, 120], [0, 1, 2, 0]] = np.nan      # missing values, two in a row
    X[80] = np.nan                                 # a whole row missing
    X[100:130, 2] = X[99, 2]                        # a stuck channel, with a gap in its run
    X[110, 2] = np.nan
    X[60, 1], X[61, 0] = 1e39, -np.inf             # imputed: beyond float32, and -inf
    a, b = make_scorer(backend, stuck_rows=6), make_scorer(backend, stuck_rows=6)
    one = np.array([a.score_one(x) for x in X])
    many, contrib = b.score_many(X, explain=True)
    assert np.array_equal(one, many)
    assert np.allclose(np.nansum(contrib, axis=1), many)
    assert np.array_equal(np.isnan(contrib[3:]), ~np.isfinite(X[3:]))   # missing, after warm-up
    assert np.array_equal(a.contributions, contrib[-1])
    stuck = np.delete(contrib[105:130, 2], 110 - 105)               # row 110: missing
    assert (stuck >= 2 * a.threshold).all()
    for key in ("hidden", "forecast", "smoothed", "rows_seen", "last", "repeats", "absent"):
        assert np.array_equal(a.state[key], b.state[key], equal_nan=key == "last")


def test_score_one_reads_rows_of_any_layout_and_dtype(backend):
    """float64 rows are read where they are (a column of rows too); float32 and integer rows
    are converted: all score as score_many scores the same values."""
    X = rows(40)
    Xi = np.round(X).astype(np.int32)
    X[12, 1] = np.nan
    X32 = X.astype(np.float32)
    wide = np.zeros((3, 2, 40))
    wide[:, 1] = X.T                                # rows as columns: strides (640,)
    a, b = make_scorer(backend), make_scorer(backend)
    one = [a.score_one(wide[:, 1, t]) for t in range(40)]
    one += [a.score_one(x) for x in X32] + [a.score_one(x) for x in Xi]
    many = b.score_many(np.concatenate([X, X32.astype(np.float64), Xi.astype(np.float64)]))
    assert np.array_equal(one, many)
    for bad in (np.zeros(4), np.zeros((1, 3)), np.zeros((3, 2))[:, 0][:2]):
        with pytest.raises(ValueError, match="row must have 3 values"):
            a.score_one(bad)
    assert a.state["rows_seen"] == 120


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
    X[35:50, 1] = X[34, 1]                          # stuck across the cut: the run resumes
    a = make_scorer(stuck_rows=10, threshold=50.0)
    expected = a.score_many(X)
    assert expected[44] > a.threshold and expected[43] < a.threshold
    b = make_scorer(stuck_rows=10, threshold=50.0)
    b.score_many(X[:40])
    saved = {k: np.array(v) for k, v in b.state.items()}
    assert saved["repeats"].tolist() == [0, 5, 0] and saved["last"][1] == X[34, 1]
    c = make_scorer(stuck_rows=10, threshold=50.0)
    c.state = saved
    assert np.array_equal(c.score_many(X[40:]), expected[40:])
    with pytest.raises(ValueError, match="does not fit"):
        c.state = {**saved, "forecast": np.zeros(5)}
    with pytest.raises(ValueError, match="does not fit"):
        c.state = {**saved, "repeats": np.zeros(2, np.int64)}
    with pytest.raises(ValueError, match="repeats must be non-negative integers"):
        c.state = {**saved, "repeats": np.array([0, -1, 0])}
    # a state saved before the stuck-sensor rule (no last, repeats) resumes with no run under way
    old = {k: v for k, v in saved.items() if k not in ("last", "repeats")}
    c.state = old
    assert np.isnan(c.state["last"]).all() and (c.state["repeats"] == 0).all()


def test_a_stuck_channel_alarms_after_stuck_rows_repeats_and_explain_names_it():
    X = rows(80, seed=3)
    X[40:70, 1] = X[39, 1]                          # row 40 is the first exact repeat
    X[55, 1] = np.nan                               # a missing value neither repeats nor ends it
    scorer = make_scorer(warmup=1, stuck_rows=8, threshold=50.0)
    s, contrib = scorer.score_many(X, explain=True)
    assert (s[40:47] < scorer.threshold).all()      # 7 repeats: not yet
    present = np.r_[47:55, 56:70]                   # row 55: missing, scored on the others
    assert (s[present] > scorer.threshold).all()    # from the 8th repeat on: stuck
    assert (contrib[present, 1] >= 2 * scorer.threshold).all()
    assert (contrib[present].argmax(axis=1) == 1).all()    # --explain names the stuck sensor
    assert np.isnan(contrib[55, 1])
    assert s[72] < scorer.threshold                  # it moved again: the run is over
    assert make_scorer(warmup=1, threshold=50.0).score_many(X)[50] < scorer.threshold   # rule off without it
    with pytest.raises(edgegru.ModelFormatError, match="stuck_rows must be a whole number from 1"):
        make_scorer(stuck_rows=0)


def test_group_scorer_counts_repeats_per_key():
    from edgegru.scoring import GroupScorer
    X = rows(120, seed=4)
    X[20:90, 0] = X[19, 0]          # key "a" (even rows) stays put: stuck; "b" moves on odd rows
    keys = ["a", "b"] * 60
    X[1::2, 0] = rows(60, seed=5)[:, 0]
    group = GroupScorer(make_scorer(stuck_rows=5, threshold=50.0))
    got = np.concatenate([group.score_many(keys[i:i + 7], X[i:i + 7]) for i in range(0, 120, 7)])
    for key in "ab":
        mine = np.array(keys) == key
        assert np.array_equal(got[mine], make_scorer(stuck_rows=5, threshold=50.0).score_many(X[mine]))
    assert (got[40:90:2] >= 100.0).all() and (got[41:90:2] < 50.0).all()   # a stuck, b not
    restored = GroupScorer(make_scorer(stuck_rows=5, threshold=50.0))
    restored.state = group.state
    assert np.array_equal(restored.state["repeats"], group.state["repeats"])


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
    edgegru.save(model, tmp_path / "plain.npz")
    with pytest.raises(edgegru.ModelFormatError, match="not a scoring model"):
        edgegru.AnomalyScorer.from_model(edgegru.load(tmp_path / "plain.npz"))


def test_load_from_file(tmp_path):
    scorer = make_scorer()
    edgegru.save(scorer.model, tmp_path / "m.npz")
    loaded = edgegru.AnomalyScorer.from_model(edgegru.load(tmp_path / "m.npz"))
    X = rows(50)
    assert np.array_equal(loaded.score_many(X), scorer.score_many(X))
    assert loaded.columns == COLUMNS and loaded.threshold == 4.0


@pytest.mark.parametrize("change,match", [
    ({"warmup": 1e30}, "warmup must be a whole number"),
    ({"warmup": 0}, "warmup must be a whole number"),
    ({"warmup": 2.5}, "warmup must be a whole number"),
    ({"threshold": float("nan")}, "threshold must be finite and positive"),
    ({"threshold": float("inf")}, "threshold must be finite and positive"),
    ({"threshold": -1.0}, "threshold must be finite and positive"),
    ({"threshold": "high"}, "threshold must be a number"),
    ({"smoothing": 0.0}, "smoothing must be in"),
    ({"stuck_rows": 2.5}, "stuck_rows must be a whole number"),
    ({"stuck_rows": 10 ** 12}, "stuck_rows must be a whole number"),
    ({"level": {"channels": ["current"], "smoothing": 0.1, "center": [0.0],
                "precision": [[float("nan")]], "weight": 1.0}}, "level precision must be a finite"),
    ({"level": {"channels": ["flow"], "smoothing": 0.1, "center": [0.0],
                "precision": [[1.0]], "weight": 1.0}}, "distinct columns"),
    ({"level": {"channels": ["current"], "smoothing": 0.1, "center": [0.0],
                "precision": [[1.0]], "weight": 0.0}}, "weight positive"),
])
def test_bad_scoring_metadata_is_refused_naming_the_field(change, match):
    model = make_scorer().model
    model.meta["scoring"].update(change)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.AnomalyScorer.from_model(model)


def test_run_refuses_a_threshold_that_never_flags(tmp_path):
    from edgegru.stream import score_stream
    import io
    with pytest.raises(edgegru.ModelFormatError, match="threshold must be finite"):
        score_stream(make_scorer(), io.BytesIO(b"temperature,vibration,current\n"), io.BytesIO(),
                     threshold=float("nan"))


def test_a_delta_forecaster_forecasts_the_row_plus_its_output():
    def delta_scorer():
        scorer = make_scorer(warmup=1)
        scorer.model.meta["scoring"]["forecast"] = "delta"
        return edgegru.AnomalyScorer.from_model(scorer.model)

    X = rows(60)
    X[20, 1] = np.nan                                # imputed from the forecast, then stepped
    one, many, bare = delta_scorer(), delta_scorer(), make_scorer().model   # same weights
    for t in range(len(X)):
        one.score_one(X[t])
        z = one._z0.copy()                           # the row the model read (imputed)
        assert np.array_equal(one._forecast, bare.step(z) + z)
    many_scores = many.score_many(X)
    again = delta_scorer()
    assert np.array_equal([again.score_one(x) for x in X], many_scores)
    assert not np.array_equal(make_scorer(warmup=1).score_many(X), many_scores)
    bad = make_scorer().model
    bad.meta["scoring"]["forecast"] = "diff"
    with pytest.raises(edgegru.ModelFormatError, match="forecast must be absolute or delta"):
        edgegru.AnomalyScorer.from_model(bad)


def test_save_state_and_load_state_resume_exactly_and_refuse_other_models(tmp_path):
    X = rows(80)
    a, b = make_scorer(), make_scorer()
    a.score_many(X[:40])
    a.save_state(tmp_path / "s.npz")
    b.load_state(tmp_path / "s.npz")
    assert np.array_equal(a.score_many(X[40:]), b.score_many(X[40:]))
    assert not list(tmp_path.glob("*.tmp"))
    other = make_scorer(threshold=9.0)                     # the threshold only decides
    other.load_state(tmp_path / "s.npz")
    changed = make_scorer()
    changed.model.meta["scoring"]["smoothing"] = 0.5
    changed = edgegru.AnomalyScorer.from_model(changed.model)
    with pytest.raises(ValueError, match="another model or calibration"):
        changed.load_state(tmp_path / "s.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a scorer state file"):
        b.load_state(tmp_path / "junk.npz")


def test_setting_the_threshold_moves_the_stuck_level_with_it():
    X = rows(60)
    X[20:60, 1] = X[19, 1]
    a, b = make_scorer(stuck_rows=5), make_scorer(stuck_rows=5)
    b.threshold = 40.0
    assert b.threshold == 40.0
    sa, sb = a.score_many(X), b.score_many(X)
    assert sa[40] >= 8.0 and sb[40] >= 80.0
    with pytest.raises(edgegru.ModelFormatError, match="finite and positive"):
        b.threshold = float("nan")


def test_group_scorer_over_threads_scores_as_one_thread():
    from edgegru.scoring import GroupScorer
    X = rows(150, seed=6)
    keys = [f"d{i % 5}" for i in range(150)]
    one, two = GroupScorer(make_scorer()), GroupScorer(make_scorer(), threads=2)
    for i in range(0, 150, 25):
        assert np.array_equal(one.score_many(keys[i:i + 25], X[i:i + 25]),
                              two.score_many(keys[i:i + 25], X[i:i + 25]))
    two.reset()
    assert two.threads == 2 and len(two) == 0


def test_a_scoring_section_of_another_version_is_refused_by_name():
    from conftest import make_model
    model = make_model(input_size=3, hidden_size=16, num_layers=2, output_size=3)
    model.meta["preprocessing"] = {"columns": COLUMNS, "mean": [40.0, 2.0, 10.0],
                                   "std": [2.0, 0.5, 3.0]}
    model.meta["scoring"] = {"residual_std": [0.3, 0.5, 0.4], "threshold": 4.0}
    assert edgegru.AnomalyScorer.from_model(model).threshold == 4.0     # no version: 1
    model.meta["scoring"]["version"] = 1
    assert edgegru.AnomalyScorer.from_model(model).threshold == 4.0
    model.meta["scoring"]["version"] = 2
    with pytest.raises(edgegru.ModelFormatError, match="scoring section is version 2; this "
                                                       "edgegru reads version 1"):
        edgegru.AnomalyScorer.from_model(model, source="m.npz")
