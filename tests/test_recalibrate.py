"""edgegru.calibrate.recalibrate and `edgegru calibrate`: a trained network fitted to another
machine or operating point with NumPy alone (no torch), on the shipped model and its data."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru import train
from edgegru.calibrate import recalibrate
from edgegru.cli import main
from edgegru.errors import TrainingError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "model.npz"
DATA = ROOT / "examples" / "sensor.csv"
NORMAL_ROWS = 8000          # the shipped model's --train-rows (weights/README.md)


@pytest.fixture(scope="module")
def shipped():
    return edgegru.load(SHIPPED)


@pytest.fixture(scope="module")
def sensor(shipped):
    return train.read_csv(DATA, shipped.meta["preprocessing"]["columns"]).X


def alarms(model, X):
    scorer = edgegru.AnomalyScorer.from_model(model)
    return scorer.score_many(X) > scorer.threshold


def write(path, names, X):
    lines = [",".join(names)] + [",".join(f"{v:.6g}" for v in row) for row in X]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibrating_a_model_on_its_own_normal_rows_gives_it_back(shipped):
    new = train.recalibrate_file(SHIPPED, DATA, train_rows=NORMAL_ROWS)
    assert new.meta["preprocessing"] == shipped.meta["preprocessing"]
    assert new.meta["scoring"] == shipped.meta["scoring"]
    for name, a in shipped.weights.arrays.items():
        assert np.array_equal(new.weights.arrays[name], a)
    done = new.meta["provenance"]["calibration"]
    assert done["tool"] == "edgegru calibrate" and done["model"] == "model.npz"
    assert done["split"] == {"normal_rows": NORMAL_ROWS, "train_rows": [0, 5600],
                             "calibration_rows": [5600, NORMAL_ROWS]}
    assert new.meta["provenance"]["command"] == shipped.meta["provenance"]["command"]


def test_the_network_follows_its_machine_to_another_operating_point(shipped, sensor):
    # the same machine read at another scale and offset, as another pump's sensors would be
    scale, offset = np.array([4.0, 0.5, 2.0, 8.0]), np.array([-30.0, 2.0, 7.5, 100.0])
    X = sensor[:12000] * scale + offset
    held_out = slice(NORMAL_ROWS, 12000)
    assert alarms(shipped, X[held_out]).mean() > 0.9         # all of it is new to the model
    moved = recalibrate(shipped, X[:NORMAL_ROWS])
    same = alarms(shipped, sensor[held_out])
    assert np.mean(alarms(moved, X[held_out]) != same) < 0.002
    assert moved.meta["scoring"]["threshold"] == pytest.approx(
        shipped.meta["scoring"]["threshold"], rel=1e-3)
    mean = np.array(moved.meta["preprocessing"]["mean"])
    assert mean == pytest.approx(np.array(shipped.meta["preprocessing"]["mean"]) * scale
                                 + offset)


def test_a_network_without_a_scoring_section_needs_to_be_told_what_it_forecasts():
    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=2)
    net = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg, seed=1))
    t = np.arange(400)
    X = np.column_stack([np.sin(t / 9), np.cos(t / 13)]) \
        + 0.1 * np.random.default_rng(0).standard_normal((400, 2))
    with pytest.raises(TrainingError, match="give forecast absolute or delta"):
        recalibrate(net, X, ["a", "b"])
    new = recalibrate(net, X, ["a", "b"], forecast="absolute")
    assert new.meta["preprocessing"]["columns"] == ["a", "b"]
    assert new.meta["scoring"]["threshold"] > 0 and "forecast" not in new.meta["scoring"]
    with pytest.raises(TrainingError, match="forecasts 2 channels from 2"):
        recalibrate(net, X[:, :1], ["a"], forecast="absolute")


def run_cli(args):
    result = CliRunner().invoke(main, ["calibrate"] + [str(a) for a in args])
    return result.exit_code, result.output


def test_the_command_maps_columns_keeps_the_model_options_and_writes_a_model(tmp_path, sensor):
    # another logger's names, in another order, with a column the model does not read
    X = sensor[:1000]
    data = write(tmp_path / "pump7.csv", ["amps", "bar", "rms", "degC", "rpm"],
                 np.column_stack([X[:, 2], X[:, 3], X[:, 1], X[:, 0], np.ones(len(X))]))
    out = tmp_path / "pump7.npz"
    code, text = run_cli([SHIPPED, data, "-o", out, "--columns", "degC,rms,amps,bar", "-q",
                          "--false-alarm-rate", "1e-4"])
    assert code == 0, text
    model = edgegru.load(out)
    done = model.meta["provenance"]["calibration"]
    assert done["options"]["false_alarm_rate"] == 1e-4
    assert done["options"]["level_rebaseline"] == 50.0          # the model's own, as recorded
    assert done["data"]["columns"] == ["degC", "rms", "amps", "bar"]
    # the model keeps its channel names: edgegru run reads them
    assert model.meta["preprocessing"]["columns"] == ["temperature", "vibration", "current",
                                                      "pressure"]
    again = tmp_path / "again.npz"
    code, text = run_cli([out, data, "-o", again, "--columns", "degC,rms,amps,bar", "-q"])
    assert code == 0, text
    assert edgegru.load(again).meta["scoring"] == model.meta["scoring"]   # 1e-4 recorded


@pytest.mark.parametrize("args,code,message", [
    (["--train-rows", "100"], 1, "too few rows: the normal part has 100 rows"),
    (["--train-rows", "400", "--train-fraction", "0.5"], 2, "not both"),
    (["--columns", "a,b"], 1, "no column 'a', 'b'"),
    (["--level-margin", "0.5"], 1, "--level-margin at least 1"),
])
def test_the_command_refuses_what_it_cannot_use_in_one_line(tmp_path, args, code, message):
    out = tmp_path / "m.npz"
    got, text = run_cli([SHIPPED, DATA, "-o", out] + args)
    assert got == code and message in text and "Traceback" not in text
    assert not out.exists()


def test_the_command_needs_no_torch(tmp_path):
    out = tmp_path / "m.npz"
    shim = ("import sys; sys.modules['torch'] = None\n"
            "from edgegru.cli import main\n"
            f"main(['calibrate', {str(SHIPPED)!r}, {str(DATA)!r}, '-o', {str(out)!r}, "
            f"'--train-rows', '1000', '-q'])\n")
    proc = subprocess.run([sys.executable, "-c", shim], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert edgegru.load(out).meta["provenance"]["calibration"]["split"]["normal_rows"] == 1000


def test_the_command_draws_the_calibration_rows(tmp_path, sensor):
    pytest.importorskip("matplotlib")
    data = write(tmp_path / "pump7.csv", ["degC", "rms", "amps", "bar"], sensor[:500])
    picture = tmp_path / "cal.png"
    code, text = run_cli([SHIPPED, data, "-o", tmp_path / "m.npz", "--columns",
                          "degC,rms,amps,bar", "--plot", picture, "-q"])
    assert code == 0, text
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_says_what_a_model_was_trained_and_calibrated_on(tmp_path, sensor, shipped):
    data = write(tmp_path / "pump7.csv", ["temperature", "vibration", "current", "pressure"],
                 sensor[:600])
    out = tmp_path / "pump7.npz"
    assert run_cli([SHIPPED, data, "-o", out, "-q"])[0] == 0
    info = CliRunner().invoke(main, ["info", str(out)]).output
    assert "channels:       temperature, vibration, current, pressure" in info
    assert "trained_on:     sensor.csv (sha256 7bc136530a2d...), 8000 normal rows" in info
    assert "calibrated_on:  pump7.csv (sha256 " in info and "600 normal rows" in info
    assert "scoring:        threshold " in info and "forecast (delta)" in info
    # the metadata is the file's data: odd shapes leave lines out, never a traceback
    odd = edgegru.Model(shipped.config, shipped.weights,
                        meta={"scoring": "x", "provenance": {"calibration": 3}})
    assert "scoring" not in edgegru.formats.describe(odd)


@pytest.mark.parametrize("meta", [
    {"preprocessing": [1], "scoring": "x", "provenance": 7},
    {"scoring": {"forecast": "delta"}, "provenance": {"options": {"level_margin": "wide"}}},
    {"scoring": {"forecast": "sideways"}, "provenance": {"calibration": {"options": [1]}}},
])
def test_odd_metadata_in_the_model_file_is_a_one_line_error(tmp_path, shipped, meta):
    odd = tmp_path / "odd.npz"
    edgegru.save(edgegru.Model(shipped.config, shipped.weights, meta=meta), odd)
    code, text = run_cli([odd, DATA, "-o", tmp_path / "m.npz", "-q"])
    assert code == 1 and text.startswith("Error: ") and "Traceback" not in text, text
