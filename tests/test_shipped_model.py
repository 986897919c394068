"""weights/model.npz, the shipped model: it loads, carries its sections, and scores the example
data with the numbers weights/README.md documents (no torch needed)."""
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

import edgegru

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import evaluate  # noqa: E402

MODEL = ROOT / "weights" / "model.npz"
DOC = (ROOT / "weights" / "README.md").read_text()


@pytest.fixture(scope="module")
def scorer():
    return edgegru.AnomalyScorer.from_model(edgegru.load(MODEL))


def test_the_model_file_has_its_sections(scorer):
    model = scorer.model
    assert (model.input_size, model.hidden_size, model.num_layers, model.output_size) == (4, 32, 1, 4)
    assert scorer.columns == ["temperature", "vibration", "current", "pressure"]
    sc = model.meta["scoring"]
    assert sc["combine"] == "max" and np.array(sc["whitening"]).shape == (4, 4)
    assert sc["calibration"]["rows"] == 2400
    assert sc["stuck_rows"] == 5 and "stuck_rows" in DOC
    assert sc["consistency"]["channels"] == ["current", "pressure"] and "consistency" in DOC
    assert sc["consistency"]["drift"]["channels"] == ["vibration"] and "drift test" in DOC
    prov = model.meta["provenance"]
    assert prov["command"] == ("edgegru train examples/sensor.csv -o weights/model.npz "
                               "--train-rows 8000")
    assert prov["command"] in DOC
    data = (ROOT / "examples" / "sensor.csv").read_bytes()
    assert prov["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert f"{scorer.threshold:.2f}" in DOC


def test_the_state_dict_next_to_it_is_the_same_network():
    pt = edgegru.load(MODEL.with_suffix(".pt"))      # edgegru's torch-free .pt reader
    npz = edgegru.load(MODEL)
    assert pt.weights.arrays.keys() == npz.weights.arrays.keys()
    for name, a in npz.weights.arrays.items():
        assert np.array_equal(pt.weights.arrays[name], a)


@pytest.mark.parametrize("data,labels,caught,false_alarms", [
    ("sensor.csv", "sensor_labels.csv", 27, 0),
    ("sensor_heldout.csv", "sensor_heldout_labels.csv", 28, 0),
])
def test_detection_numbers_are_the_documented_ones(scorer, data, labels, caught, false_alarms):
    names, X = evaluate.read_channels(ROOT / "examples" / data)
    assert names == scorer.columns
    scorer.reset()
    scores = scorer.score_many(X)
    assert (scores[:scorer.warmup] == 0).all() and np.isfinite(scores).all()
    events = evaluate.read_events(ROOT / "examples" / labels)
    m = evaluate.evaluate(scores, scores > scorer.threshold, events, len(scores))
    assert (m["events_caught"], m["false_alarms"]) == (caught, false_alarms)
    assert f"**{caught}/30**" in DOC


def test_a_sensor_that_drops_out_is_a_dropout_not_an_alarm_storm(scorer):
    """Vibration empty for 1,000 rows: the others are scored as without the gap, the gap shows
    as NaN contributions, and once it is back the score is normal again at once."""
    X = np.genfromtxt(ROOT / "examples" / "sensor.csv", delimiter=",", skip_header=1,
                      max_rows=3000)[:, 1:]
    scorer.reset()
    plain, plain_contrib = scorer.score_many(X, explain=True)
    gap = X.copy()
    gap[1000:2000, 1] = np.nan
    scorer.reset()
    scores, contrib = scorer.score_many(gap, explain=True)
    assert not (plain > scorer.threshold).any() and not (scores > scorer.threshold).any()
    assert np.isnan(contrib[1000:2000, 1]).all() and not np.isnan(contrib[2000:, 1]).any()
    assert scores[2000:].max() <= 1.5 * plain[2000:].max()
    # the others still count during the gap: a fault on current is found there
    gap[1500:1520, 2] += 5 * np.nanstd(X[:, 2])
    scorer.reset()
    assert (scorer.score_many(gap)[1500:1520] > scorer.threshold).any()
