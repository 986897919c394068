"""AnomalyScorer with "combine": "max" and a whitening matrix (what edgegru train writes):
against a plain NumPy loop, score_one == score_many, GroupScorer, and refusals."""
import numpy as np
import pytest

import edgegru
from edgegru.scoring import GroupScorer
from conftest import make_model

C = 3
W = np.array([[1.2, -0.3, 0.1], [-0.3, 1.1, -0.2], [0.1, -0.2, 1.05]])


def make_scorer(smoothing=0.5, whitening=W, combine="max", warmup=3):
    model = make_model(input_size=C, hidden_size=8, output_size=C)
    model.meta["preprocessing"] = {"columns": ["a", "b", "c"], "mean": [1.0, 2.0, 3.0],
                                   "std": [0.5, 2.0, 1.0]}
    model.meta["scoring"] = {"residual_std": [0.3, 0.5, 0.4], "smoothing": smoothing,
                             "threshold": 9.0, "warmup": warmup, "combine": combine}
    if whitening is not None:
        model.meta["scoring"]["whitening"] = np.asarray(whitening).tolist()
    return edgegru.AnomalyScorer.from_model(model)


def naive_scores(scorer, X):
    """The docstring's formula, one row at a time in float64 (forecasts from the model)."""
    Z = ((X - scorer.mean) / scorer.std).astype(np.float32)
    scorer.model.reset()
    F = scorer.model.run(Z).astype(np.float64)
    Wm = np.eye(C) if scorer.whitening is None else scorer.whitening
    a, out = np.zeros(C), np.zeros(len(X))
    for t in range(scorer.warmup, len(X)):
        e = Wm @ ((Z[t] - F[t - 1]) / scorer.residual_std)
        if scorer.combine == "max":
            a = (1 - scorer.smoothing) * a + scorer.smoothing * e * e
            out[t] = a.max()
        else:
            a = (1 - scorer.smoothing) * a + scorer.smoothing * e * e / C
            out[t] = a.sum()
    scorer.model.reset()
    return out


@pytest.mark.parametrize("combine,whitening", [("max", W), ("max", None), ("sum", W)])
def test_matches_the_formula_and_score_one(combine, whitening):
    X = np.random.default_rng(1).normal([1.0, 2.0, 3.0], [0.5, 2.0, 1.0], (120, C))
    X[60, 1] += 20.0                                   # a spike in channel b
    a = make_scorer(combine=combine, whitening=whitening)
    many, contrib = a.score_many(X, explain=True)
    assert np.allclose(many, naive_scores(a, X), rtol=1e-5)   # float32 normalisation
    b = make_scorer(combine=combine, whitening=whitening)
    assert np.array_equal(np.array([b.score_one(x) for x in X]), many)
    if combine == "max":
        assert np.array_equal(contrib.max(axis=1), many)
        assert contrib[60].argmax() == 1               # the contributions still name the channel


def test_group_scorer_uses_the_same_formula():
    X = np.random.default_rng(2).normal([1.0, 2.0, 3.0], [0.5, 2.0, 1.0], (80, C))
    keys = ["p1", "p2"] * 40
    group = GroupScorer(make_scorer())
    got = group.score_many(keys, X)
    for key in ("p1", "p2"):
        rows = [i for i, k in enumerate(keys) if k == key]
        assert np.array_equal(got[rows], make_scorer().score_many(X[rows]))


def test_bad_whitening_or_combine_is_refused():
    with pytest.raises(edgegru.ModelFormatError, match="whitening must be a finite 3 x 3"):
        make_scorer(whitening=np.eye(2))
    with pytest.raises(edgegru.ModelFormatError, match="whitening"):
        make_scorer(whitening=[[np.nan] * 3] * 3)
    with pytest.raises(edgegru.ModelFormatError, match="combine must be 'sum' or 'max'"):
        make_scorer(combine="mean")
