"""tools/evaluate.py metrics against hand-worked examples, and tools/make_demo_data.py output."""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import evaluate as ev  # noqa: E402
import make_demo_data  # noqa: E402


def naive_roc_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_and_average_precision_on_a_known_example():
    # the example from scikit-learn's roc_auc_score / average_precision_score docs
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert ev.roc_auc(scores, labels) == pytest.approx(0.75)
    assert ev.average_precision(scores, labels) == pytest.approx(0.8333333333)


def test_auc_ties_perfect_and_degenerate():
    assert ev.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert ev.average_precision([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert ev.roc_auc([0, 1, 2, 3], [0, 0, 1, 1]) == 1.0
    assert ev.average_precision([0, 1, 2, 3], [0, 0, 1, 1]) == 1.0
    assert math.isnan(ev.roc_auc([0, 1], [0, 0]))
    assert math.isnan(ev.average_precision([0, 1], [0, 0]))


def test_roc_auc_matches_pairwise_count_with_ties_and_nan():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 40).astype(float)
    scores[[3, 7]] = np.nan  # NaN ranks lowest
    labels = rng.random(40) < 0.3
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    assert ev.roc_auc(scores, labels) == pytest.approx(naive_roc_auc(ranked, labels))


def test_count_runs():
    assert ev.count_runs([]) == 0
    assert ev.count_runs([0, 0, 0]) == 0
    assert ev.count_runs([1, 1, 0, 1, 0, 0, 1, 1, 1]) == 3
    assert ev.count_runs([0, 1, 1, 0]) == 1


def make_event(start, end, kind="level_shift", event_id=0):
    return ev.Event(event_id, start, end, kind, ("current",))


def alarms_at(n, rows):
    a = np.zeros(n, dtype=bool)
    a[list(rows)] = True
    return a


def test_false_alarm_runs_caught_events_and_delay():
    events = [make_event(40, 49, "spike", 0), make_event(70, 79, "stuck", 1)]
    # runs outside the windows 40..59 and 70..89: 5-7, 20, 62-63, 95 -> 4 false alarms;
    # 45 catches event 0 after 5 rows; 58-61 is cut at the window's end, 60-61 counts with 62-63
    alarms = alarms_at(100, [5, 6, 7, 20, 45, 58, 59, 60, 61, 62, 63, 95])
    m = ev.evaluate(alarms.astype(float), alarms, events, 100, grace=10)
    assert m["false_alarms"] == 4
    assert m["normal_rows"] == 100 - 20 - 20
    assert m["false_alarms_per_10k"] == pytest.approx(4e4 / 60)
    assert m["events_caught"] == 1 and m["missed_event_ids"] == [1]
    assert m["detection_delay_median"] == 5 and m["detection_delay_max"] == 5
    assert m["per_kind"] == {"spike": {"events": 1, "caught": 1, "rate": 1.0},
                             "stuck": {"events": 1, "caught": 0, "rate": 0.0}}
    assert m["event_rows"] == 20 and m["alarm_rows"] == 12


def test_grace_window_edge():
    events = [make_event(10, 19)]
    on_edge = ev.evaluate(np.zeros(50), alarms_at(50, [29]), events, 50, grace=10)
    assert on_edge["events_caught"] == 1 and on_edge["false_alarms"] == 0
    assert on_edge["detection_delay_max"] == 19
    past_edge = ev.evaluate(np.zeros(50), alarms_at(50, [30]), events, 50, grace=10)
    assert past_edge["events_caught"] == 0 and past_edge["false_alarms"] == 1
    no_grace = ev.evaluate(np.zeros(50), alarms_at(50, [20]), events, 50, grace=0)
    assert no_grace["events_caught"] == 0 and no_grace["false_alarms"] == 1


def test_evaluate_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one value per data row"):
        ev.evaluate(np.zeros(10), np.zeros(9, dtype=bool), [], 10)
    with pytest.raises(ValueError, match="same data"):
        ev.evaluate(np.zeros(10), np.zeros(10, dtype=bool), [make_event(5, 12)], 10)


def test_rolling_zscore_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1.0, 10.0, 0.1] + [0.0, 100.0, -5.0]
    x[30, 1] = np.nan
    window = 8
    got = ev.rolling_zscore(x, window)
    assert np.isnan(got[:window]).all()
    for i in range(window, 50):
        z = []
        for ch in range(3):
            past = x[i - window:i, ch]
            past = past[np.isfinite(past)]
            if np.isfinite(x[i, ch]):
                z.append(abs(x[i, ch] - past.mean()) / past.std())
        assert got[i] == pytest.approx(max(z), rel=1e-9)


def test_rolling_zscore_flat_window_and_threshold():
    x = np.r_[np.ones(10), 1.0, 2.0][:, None]
    z = ev.rolling_zscore(x, window=5)
    assert z[10] == 0.0 and z[11] > 1e6 and np.isfinite(z[11])
    assert ev.calibrate_threshold(np.r_[np.nan, 1.0, 3.0, 2.0, 99.0], 4) == 3.0


def write_demo(directory, rows=3000, events=5, seed=0):
    data, labels = directory / "sensor.csv", directory / "labels.csv"
    assert make_demo_data.main(["--rows", str(rows), "--events", str(events), "--seed", str(seed),
                                "-o", str(data), "--labels", str(labels)]) == 0
    return data, labels


def test_make_demo_data_is_deterministic(tmp_path):
    first = write_demo(tmp_path / "a")
    second = write_demo(tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    other = write_demo(tmp_path / "c", seed=1)
    assert other[0].read_bytes() != first[0].read_bytes()


def test_make_demo_data_layout_and_labels_in_range(tmp_path):
    data, labels = write_demo(tmp_path)
    with open(data, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "temperature", "vibration", "current", "pressure"]
    assert len(rows) == 3001
    assert rows[1][0] == "2026-01-01T00:00:00" and rows[2][0] == "2026-01-01T00:01:00"
    events = ev.read_events(labels)
    assert len(events) == 5
    assert {e.kind for e in events} <= set(make_demo_data.KINDS)
    previous_end = math.ceil(0.4 * 3000) - 1  # the clean part has no event
    for e in events:
        assert previous_end < e.start_row <= e.end_row < 3000
        assert set(e.channels) <= set(make_demo_data.CHANNELS)
        previous_end = e.end_row
    with open(labels, newline="") as f:
        for label in csv.DictReader(f):
            assert label["start_timestamp"] == rows[int(label["start_row"]) + 1][0]
            assert label["end_timestamp"] == rows[int(label["end_row"]) + 1][0]


def test_make_demo_data_refuses_too_many_events(tmp_path, capsys):
    assert make_demo_data.main(["--rows", "1000", "--events", "30",
                                "-o", str(tmp_path / "d.csv"), "--labels", str(tmp_path / "l.csv")]) == 2
    assert "fewer --events" in capsys.readouterr().err


def test_command_line_with_baseline(tmp_path, capsys):
    data, labels = write_demo(tmp_path)
    _, values = ev.read_channels(data)
    scores = tmp_path / "scores.csv"
    scores.write_text("score\n" + "".join(f"{s}\n" for s in np.abs(values[:, 2] - 9.0)))
    capsys.readouterr()  # drop make_demo_data's message
    assert ev.main([str(scores), "--labels", str(labels), "--threshold", "3",
                    "--baseline", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"detector", "z-score baseline"}
    assert out["detector"]["threshold"] == 3 and out["detector"]["events"] == 5
    assert out["z-score baseline"]["false_alarms"] >= 0
    assert ev.main([str(scores), "--labels", str(labels), "--baseline", str(data)]) == 2
    assert "pass --threshold" in capsys.readouterr().err
    assert ev.main([str(scores), "--labels", str(labels), "--threshold", "3"]) == 0
    assert "events caught" in capsys.readouterr().out
