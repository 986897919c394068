"""examples/pi_sensor.py on a simulated sensor: a score per reading, an anomaly reported with the
sensor that moved, and its state file carried over a restart."""
import csv
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_example():
    spec = importlib.util.spec_from_file_location("pi_sensor", ROOT / "examples" / "pi_sensor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pi_sensor_scores_reacts_and_resumes(scoring_model_path, tmp_path, capsys):
    with open(ROOT / "examples" / "sensor.csv", newline="") as f:
        rows = [row for _, row in zip(range(40), csv.DictReader(f))]
    rows[10]["vibration"] = "40.0"                 # a spike, 100 standard deviations
    replay = tmp_path / "replay.csv"
    with open(replay, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    state = tmp_path / "pi_sensor.npz"
    pi_sensor = load_example()
    args = ["--weights", str(scoring_model_path), "--replay", str(replay), "--interval", "0",
            "--state", str(state), "--verbose"]

    pi_sensor.main(args + ["--count", "40"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert sum(" score " in l and not l.startswith(("ANOMALY", "back")) for l in lines) == 40
    [alarm] = [l for l in lines if l.startswith("ANOMALY")]
    assert "mostly vibration (vibration=40)" in alarm
    assert lines.index(alarm) == 11                # right after the 11th reading's score
    assert any(l.startswith("back to normal") for l in lines)
    assert "40 readings, 1 anomalies" in err

    pi_sensor.main(args + ["--count", "5"])          # a restart continues the stream
    out, err = capsys.readouterr()
    assert f"resumed from {state}" in err
    with np.load(state) as f:
        assert int(f["state.rows_seen"]) == 45 and str(f["format"]) == "edgegru-scorer-state"
