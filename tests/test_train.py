"""edgegru.train and `edgegru train`: reading and checking the data (no torch needed), the
message without torch, and small training runs end to end (torch)."""
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru import calibrate, kernels
from edgegru import train
from edgegru.cli import main
from edgegru.errors import EdgeGRUError, TrainingError

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path, columns, rows, sep=","):
    lines = [sep.join(columns)] + [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def sensor_rows(n, seed=0, channels=2, iso=False):
    """A slow sine per channel plus noise, with a timestamp column first."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = [np.sin(2 * np.pi * t / (50 + 17 * c)) + 0.1 * rng.standard_normal(n)
              for c in range(channels)]
    stamp = (lambda i: f"2020-03-09 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}") \
        if iso else (lambda i: f"2026-01-01T00:{i:06d}")
    return [[stamp(i)] + [f"{v[i]:.4f}" for v in values] for i in range(n)]


def run_cli(args):
    result = CliRunner().invoke(main, ["train"] + [str(a) for a in args])
    return result.exit_code, result.output


def test_training_error_is_an_edgegru_error():
    assert issubclass(TrainingError, EdgeGRUError) and issubclass(TrainingError, ValueError)


@pytest.mark.parametrize("line,sep", [
    ("timestamp,temperature,current", ","), ("datetime;Accelerometer1RMS;Current", ";"),
    ("time\tvalue", "\t"), ("value", ","), ('"a;b",c,d', ",")])
def test_sniff_delimiter(line, sep):
    assert train.sniff_delimiter(line) == sep


def test_read_csv_skips_text_columns_and_keeps_named_ones(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "id", "value"],
                     [["2026-01-01", "pump-1", "1.5"], ["2026-01-02", "pump-1", ""],
                      ["2026-01-03", "pump-1", "nan"]])
    table = train.read_csv(path)
    assert table.names == ["value"] and table.skipped == ["timestamp", "id"]
    assert table.timestamp == "timestamp" and table.delimiter == ","
    assert table.X.shape == (3, 1) and table.X[0, 0] == 1.5 and np.isnan(table.X[1:, 0]).all()
    with pytest.raises(TrainingError, match=r"line 2, column 'id': 'pump-1' is not a number"):
        train.read_csv(path, ["value", "id"])
    with pytest.raises(TrainingError, match="no column 'pressure'; the columns are"):
        train.read_csv(path, ["pressure"])


def test_read_csv_semicolons_iso_times_and_a_numeric_time_column(tmp_path):
    rows = sensor_rows(5, channels=2, iso=True)
    path = write_csv(tmp_path / "d.csv", ["datetime", "Current", "Pressure"], rows, sep=";")
    table = train.read_csv(path)
    assert table.delimiter == ";" and table.timestamp == "datetime"
    assert table.names == ["Current", "Pressure"] and table.X.shape == (5, 2)
    # a Unix time is numeric, but a column named like one is the time, not a channel
    path = write_csv(tmp_path / "e.csv", ["ts", "value"], [[1700000000 + i, i % 3] for i in
                                                          range(5)], sep="\t")
    table = train.read_csv(path)
    assert table.names == ["value"] and table.timestamp == "ts" and table.delimiter == "\t"
    # a row with more fields than the header: the message names the separator it used
    bad = tmp_path / "f.csv"
    bad.write_text("a;b\n1;2;3\n")
    with pytest.raises(TrainingError, match="line 2: 3 fields, the header has 2 \\(fields "
                                            "separated by ';'; --delimiter sets it\\)"):
        train.read_csv(bad)


def test_all_rows_are_normal_by_default():
    assert train.normal_rows(9405) == 9405
    assert train.normal_rows(1000, train_fraction=0.4) == 400
    assert train.normal_rows(1000, train_rows=400) == 400
    with pytest.raises(TrainingError, match="not both"):
        train.normal_rows(1000, train_fraction=0.4, train_rows=400)


def test_constant_channel_is_refused_by_name(tmp_path):
    rows = [r + ["3.0"] for r in sensor_rows(400)]
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b", "flat"], rows)
    code, out = run_cli([path, "-o", tmp_path / "m.npz"])
    assert code == 1
    assert "Error: " in out and "column 'flat' (3) is constant in the training rows" in out
    assert "--columns a,b" in out and "Traceback" not in out
    assert not (tmp_path / "m.npz").exists()


def test_every_constant_channel_is_named_at_once(tmp_path):
    # a raw SKAB file: its label columns are 0 in the normal rows; one error names both, and
    # the suggested --columns is quoted for the shell (a name with spaces)
    rows = [r + ["0", "0.0"] for r in sensor_rows(400)]
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "flow rate", "anomaly",
                                         "changepoint"], rows)
    code, out = run_cli([path, "-o", tmp_path / "m.npz"])
    assert code == 1 and "Traceback" not in out
    assert "columns 'anomaly' (0), 'changepoint' (0) are constant" in out
    assert "--columns 'a,flow rate'" in out


def test_too_few_rows_says_how_many_are_needed(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], sensor_rows(298))
    code, out = run_cli([path, "-o", tmp_path / "m.npz"])
    assert code == 1
    assert "the normal part has 298 rows (209 complete training rows, 89 calibration rows)" in out
    assert "that is 299 normal rows with --calibration-fraction 0.3" in out
    code, out = run_cli([path, "-o", tmp_path / "m.npz", "--train-rows", "400"])
    assert code == 1 and "--train-rows 400 is more than the file's 298 rows" in out
    code, out = run_cli([path, "-o", tmp_path / "m.npz", "--train-rows", "9",
                         "--train-fraction", "0.5"])
    assert code == 2 and "not both" in out


def test_empty_or_all_missing_inputs(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, out = run_cli([empty, "-o", tmp_path / "m.npz"])
    assert code == 1 and "the file is empty" in out
    rows = [r + [""] for r in sensor_rows(400)]
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b", "dead"], rows)
    code, out = run_cli([path, "-o", tmp_path / "m.npz", "--columns", "a,dead"])
    assert code == 1 and "column 'dead' has no value in the normal part" in out


def test_missing_value_rows_are_noted_and_kept_out_of_windows(tmp_path):
    rows = sensor_rows(1200)
    for i in (10, 11, 300, 700):
        rows[i][1] = "nan"
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], rows)
    messages = []
    data = train.prepare(path, log=messages.append)
    assert any("note: 4 of the 1200 normal rows have a missing value" in m for m in messages)
    assert data["window"] == train.MAX_WINDOW
    finite = np.isfinite(data["X_train"]).all(axis=1)
    starts = train.training_windows(finite, 129, 1)
    assert starts.size and all(finite[s:s + 129].all() for s in starts)
    assert set(range(12, 300 - 128)) <= set(starts.tolist())     # every clean window is used


def test_the_window_and_warm_up_scale_down_to_small_data(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a"], sensor_rows(300, channels=1))
    data = train.prepare(path)
    assert len(data["X_train"]) == 210 and len(data["X_cal"]) == 90
    assert data["window"] == 105
    assert calibrate.warmup_cap(90) == 30 and calibrate.warmup_cap(2400) == calibrate.MAX_WARMUP


def test_upcrossing_threshold_on_gaussian_noise():
    # squared N(0, 1) noise, what the scores are on normal data: fitted on 20,000 rows, the
    # level is crossed about `rate` times a row on fresh noise
    rng = np.random.default_rng(0)
    T, fit = calibrate.upcrossing_threshold(rng.standard_normal(20_000) ** 2, 1e-5)
    fresh = rng.standard_normal(2_000_000) ** 2
    crossings = np.count_nonzero((fresh[1:] > T) & (fresh[:-1] <= T)) / fresh.size
    assert 0.3e-5 < crossings < 3e-5
    assert T > fit["base_level"] and fit["runs_above_base"] > 500


def test_longest_repeat_run_skips_missing_values():
    X = np.array([[1.0, 5.0], [1.0, 5.0], [np.nan, 6.0], [1.0, 6.0], [2.0, 6.0], [2.0, 7.0]])
    # column 0: 1, 1, (missing), 1 is two repeats in a row; column 1: 6, 6, 6 is two
    assert calibrate.longest_repeat_run(X).tolist() == [2, 2]
    assert calibrate.longest_repeat_run(np.arange(6.0).reshape(3, 2)).tolist() == [0, 0]


def test_without_torch_the_command_says_how_to_install_it(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], sensor_rows(400))
    shim = ("import sys; sys.modules['torch'] = None\n"
            "from edgegru.cli import main\n"
            f"main(['train', {str(path)!r}, '-o', {str(tmp_path / 'm.npz')!r}, '-q'])\n")
    proc = subprocess.run([sys.executable, "-c", shim], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: training needs PyTorch: pip install 'edgegru[train]'"
    assert not (tmp_path / "m.npz").exists()


def test_help_has_an_example_and_hides_the_expert_options():
    code, out = run_cli(["--help"])
    assert code == 0 and "edgegru train mine.csv -o mine.npz" in out
    assert "--train-rows" in out and "--columns" in out and "--delimiter" in out
    assert "--drift-baseline-smoothing" not in out and "--burn-in" not in out
    assert "--weights-dtype [f32|bf16]" in out


def test_weights_dtype_is_checked():
    with pytest.raises(TrainingError, match="^--weights-dtype must be f32 or bf16, got 'int8'$"):
        train.TrainingOptions(weights_dtype="int8").check()
    code, out = run_cli(["x.csv", "-o", "x.npz", "--weights-dtype", "int8"])
    assert code == 2 and "'int8' is not one of 'f32', 'bf16'" in out


# -- with torch -----------------------------------------------------------------------------

TINY = ["--steps", "30", "--hidden-size", "8", "--window", "32", "--burn-in", "4",
        "--stride", "8", "-q"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("train")
    rows = sensor_rows(400, channels=1)                  # a single-column file: timestamp,value
    rows[300][1] = ""                                    # and a missing value in the normal part
    data = write_csv(tmp / "one.csv", ["timestamp", "value"], rows)
    out = tmp / "one.npz"
    code, output = run_cli([data, "-o", out] + TINY)
    assert code == 0, output
    return data, out


def test_tiny_training_writes_a_scoring_model_and_its_state_dict(tiny_model):
    data, out = tiny_model
    model = edgegru.load(out)
    assert model.meta["preprocessing"]["columns"] == ["value"]
    sc = model.meta["scoring"]
    assert sc["combine"] == "max" and sc["whitening"] == [[1.0]] and 1 <= sc["warmup"] <= 40
    assert "consistency" not in sc
    assert math.isfinite(sc["threshold"]) and sc["threshold"] > 0
    assert sc["calibration"]["rows"] == 120 and sc["calibration"]["scored_rows"] >= 80
    assert sc["stuck_rows"] >= calibrate.STUCK_MIN_ROWS and "stuck_rows" in sc["calibration"]
    prov = model.meta["provenance"]
    assert prov["command"] == f"edgegru train {data} -o {out} " + " ".join(TINY[:-1])
    assert prov["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert prov["data"]["skipped_columns"] == ["timestamp"]
    assert prov["data"]["timestamp_column"] == "timestamp"
    assert prov["split"] == {"normal_rows": 400, "train_rows": [0, 280],
                             "calibration_rows": [280, 400], "rows_with_missing_values": 1}
    assert prov["versions"]["torch"] and prov["training"]["steps"] == 30
    # the PyTorch state dict, read back by edgegru's torch-free .pt reader, is the same model
    pt = edgegru.load(out.with_suffix(".pt"))
    for name, a in model.weights.arrays.items():
        assert np.array_equal(pt.weights.arrays[name], a)
    # the scorer runs on the data: the missing value is imputed, scores are finite and a spike
    # scores above the threshold
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(out))
    X = np.array([[float(r.split(",")[1] or "nan")] for r in data.read_text().split("\n")[1:-1]])
    scores = scorer.score_many(X)
    assert np.isfinite(scores).all() and (scores[:scorer.warmup] == 0).all()
    X[350] += 3.0
    scorer.reset()
    assert scorer.score_many(X)[350] > scorer.threshold


def test_the_same_seed_gives_the_same_file(tiny_model, tmp_path):
    data, _ = tiny_model
    out = tmp_path / "again.npz"
    files = []
    for _ in range(2):
        code, output = run_cli([data, "-o", out] + TINY)
        assert code == 0, output
        files.append((out.read_bytes(), out.with_suffix(".pt").read_bytes()))
    assert files[0] == files[1]


def test_weights_dtype_bf16_writes_w_hh_in_16_bits(tiny_model, tmp_path):
    """--weights-dtype bf16: the same fit as float32's (same data, options and seed), its W_hh
    rounded to bfloat16 and stored in 16 bits, recorded in the file and shown by edgegru
    info; the score calibrated on that model."""
    data, out32 = tiny_model
    out = tmp_path / "bf16.npz"
    code, output = run_cli([data, "-o", out, "--weights-dtype", "bf16"] + TINY)
    assert code == 0, output
    model, model32 = edgegru.load(out), edgegru.load(out32)
    assert model.config.recurrent_dtype == "bfloat16"
    with np.load(out) as npz:
        assert npz["l0.w_hh"].dtype == np.uint16 and npz["l0.w_ih"].dtype == np.float32
    w32 = model32.weights.arrays["l0.w_hh"]
    assert np.array_equal(model.weights.arrays["l0.w_hh"],
                          kernels.from_bfloat16(kernels.to_bfloat16(w32)))
    assert np.array_equal(model.weights.arrays["l0.w_ih"], model32.weights.arrays["l0.w_ih"])
    assert model.meta["provenance"]["options"]["weights_dtype"] == "bf16"
    assert "--weights-dtype bf16" in model.meta["provenance"]["command"]
    info = CliRunner().invoke(main, ["info", str(out)]).output
    n_hh = 3 * 8 * 8
    n_rest = sum(a.size for name, a in model.weights.arrays.items() if name != "l0.w_hh")
    assert f"weights:        float32, W_hh bfloat16, {2 * n_hh + 4 * n_rest} bytes" in info
    # calibrated on the bfloat16 model: its scores on the calibration rows set the threshold
    assert model.meta["scoring"]["threshold"] != model32.meta["scoring"]["threshold"]


def test_train_model_library_call_on_a_semicolon_file_with_iso_times(tmp_path):
    pytest.importorskip("torch")
    rows = sensor_rows(400, channels=3, iso=True)
    data = write_csv(tmp_path / "s.csv", ["datetime", "a", "b", "c"], rows, sep=";")
    model = train.train_model(data, options=train.TrainingOptions(steps=20, hidden_size=8))
    assert model.meta["preprocessing"]["columns"] == ["a", "b", "c"]
    assert np.array(model.meta["scoring"]["whitening"]).shape == (3, 3)
    prov = model.meta["provenance"]
    assert prov["data"]["delimiter"] == ";" and prov["data"]["timestamp_column"] == "datetime"
    assert prov["command"] is None and prov["training"]["steps"] == 20


def test_training_runs_no_compiled_gru(tmp_path, monkeypatch):
    # calibration runs the GRU on NumPy, so a machine's first training does not wait for numba
    # to compile the sequence kernel; the model it returns runs as the file it wrote does
    pytest.importorskip("torch")
    from edgegru import kernels

    def refuse(*args):
        raise AssertionError("training ran the compiled GRU kernel")

    data = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], sensor_rows(400))
    monkeypatch.setattr(kernels, "gru_sequences", refuse)
    model = train.train_model(data, tmp_path / "m.npz",
                              options=train.TrainingOptions(steps=10, hidden_size=8))
    monkeypatch.undo()
    X = np.random.default_rng(1).standard_normal((50, 2)).astype(np.float32)
    assert np.array_equal(model.run(X), edgegru.load(tmp_path / "m.npz").run(X))


def test_thirty_two_channels_any_names_tab_separated(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    t = np.arange(400)[:, None]
    X = np.sin(2 * np.pi * t / rng.uniform(20, 90, 32)) + 0.1 * rng.standard_normal((400, 32))
    names = [f"Sensor {c} (°C)" for c in range(32)]
    rows = [[f"{1700000000 + i}"] + [f"{v:.4f}" for v in X[i]] for i in range(400)]
    data = write_csv(tmp_path / "wide.tsv", ["epoch"] + names, rows, sep="\t")
    out = tmp_path / "wide.npz"
    code, output = run_cli([data, "-o", out, "--delimiter", "\\t", "--steps", "5",
                            "--hidden-size", "8", "-q"])
    assert code == 0, output
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(out))
    assert scorer.columns == names and scorer.model.input_size == 32
    assert scorer.model.meta["provenance"]["data"]["timestamp_column"] == "epoch"
    assert np.isfinite(scorer.score_many(X)).all()
