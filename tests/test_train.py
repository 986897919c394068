"""tools/train.py: input checks (no torch needed), and a tiny training run end to end (torch)."""
import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import edgegru

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import train  # noqa: E402


def write_csv(path, columns, rows):
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def sensor_rows(n, seed=0, channels=2):
    """A slow sine per channel plus noise, with a timestamp column first."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = [np.sin(2 * np.pi * t / (50 + 17 * c)) + 0.1 * rng.standard_normal(n)
              for c in range(channels)]
    return [[f"2026-01-01T00:{i:06d}"] + [f"{v[i]:.4f}" for v in values] for i in range(n)]


def run_main(argv, capsys):
    code = train.main(argv)
    return code, capsys.readouterr().err


def test_read_csv_skips_text_columns_and_keeps_named_ones(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "id", "value"],
                     [["2026-01-01", "pump-1", "1.5"], ["2026-01-02", "pump-1", ""],
                      ["2026-01-03", "pump-1", "nan"]])
    names, X, skipped = train.read_csv(path)
    assert names == ["value"] and skipped == ["timestamp", "id"]
    assert X.shape == (3, 1) and X[0, 0] == 1.5 and np.isnan(X[1:, 0]).all()
    with pytest.raises(train.TrainingError, match=r"line 2, column 'id': 'pump-1' is not a number"):
        train.read_csv(path, ["value", "id"])
    with pytest.raises(train.TrainingError, match="no column 'pressure'; the columns are"):
        train.read_csv(path, ["pressure"])


def test_constant_channel_is_refused_by_name(tmp_path, capsys):
    rows = [r + ["3.0"] for r in sensor_rows(1200)]
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b", "flat"], rows)
    code, err = run_main([str(path), "-o", str(tmp_path / "m.npz"), "--train-fraction", "1"],
                         capsys)
    assert code == 2
    assert "column 'flat' is constant (3) in the training rows" in err
    assert "--columns a,b" in err
    assert not (tmp_path / "m.npz").exists()


def test_too_few_rows_says_how_many_are_needed(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], sensor_rows(300))
    code, err = run_main([str(path), "-o", str(tmp_path / "m.npz")], capsys)
    assert code == 2
    assert "too few rows: the normal part has 120 rows" in err
    assert "that is 1000 normal rows with --calibration-fraction 0.3" in err
    code, err = run_main([str(path), "-o", str(tmp_path / "m.npz"), "--train-rows", "400"],
                         capsys)
    assert code == 2 and "--train-rows 400 is more than the file's 300 rows" in err


def test_empty_or_all_missing_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, err = run_main([str(empty), "-o", str(tmp_path / "m.npz")], capsys)
    assert code == 2 and "the file is empty" in err
    rows = [r + [""] for r in sensor_rows(1200)]
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b", "dead"], rows)
    code, err = run_main([str(path), "-o", str(tmp_path / "m.npz"), "--columns", "a,dead"],
                         capsys)
    assert code == 2 and "column 'dead' has no value in the normal part" in err


def test_missing_value_rows_are_noted_and_kept_out_of_windows(tmp_path, capsys):
    rows = sensor_rows(1200)
    for i in (10, 11, 300, 700):
        rows[i][1] = "nan"
    path = write_csv(tmp_path / "d.csv", ["timestamp", "a", "b"], rows)
    args = train.parse_args([str(path), "-o", str(tmp_path / "m.npz"), "--train-fraction", "1"])
    messages = []
    data = train.prepare(args, messages.append)
    assert any("note: 4 of the 1200 normal rows have a missing value" in m for m in messages)
    finite = np.isfinite(data["X_train"]).all(axis=1)
    starts = train.training_windows(finite, 129, 1)
    assert starts.size and all(finite[s:s + 129].all() for s in starts)
    assert set(range(12, 300 - 128)) <= set(starts.tolist())     # every clean window is used


def test_upcrossing_threshold_on_gaussian_noise():
    # squared N(0, 1) noise, what the scores are on normal data: fitted on 20,000 rows, the
    # level is crossed about `rate` times a row on fresh noise
    rng = np.random.default_rng(0)
    T, fit = train.upcrossing_threshold(rng.standard_normal(20_000) ** 2, 1e-5)
    fresh = rng.standard_normal(2_000_000) ** 2
    crossings = np.count_nonzero((fresh[1:] > T) & (fresh[:-1] <= T)) / fresh.size
    assert 0.3e-5 < crossings < 3e-5
    assert T > fit["base_level"] and fit["runs_above_base"] > 500


def test_longest_repeat_run_skips_missing_values():
    X = np.array([[1.0, 5.0], [1.0, 5.0], [np.nan, 6.0], [1.0, 6.0], [2.0, 6.0], [2.0, 7.0]])
    # column 0: 1, 1, (missing), 1 is two repeats in a row; column 1: 6, 6, 6 is two
    assert train.longest_repeat_run(X).tolist() == [2, 2]
    assert train.longest_repeat_run(np.arange(6.0).reshape(3, 2)).tolist() == [0, 0]


# -- with torch -----------------------------------------------------------------------------

TINY = ["--epochs", "2", "--hidden-size", "8", "--window", "32", "--burn-in", "4",
        "--stride", "8", "--train-fraction", "1", "-q"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("train")
    rows = sensor_rows(1200, channels=1)                 # a single-column file: timestamp,value
    rows[500][1] = ""                                    # and a missing value in the normal part
    data = write_csv(tmp / "one.csv", ["timestamp", "value"], rows)
    out = tmp / "one.npz"
    assert train.main([str(data), "-o", str(out)] + TINY) == 0
    return data, out


def test_tiny_training_writes_a_scoring_model_and_its_state_dict(tiny_model):
    data, out = tiny_model
    model = edgegru.load(out)
    assert model.meta["preprocessing"]["columns"] == ["value"]
    sc = model.meta["scoring"]
    assert sc["combine"] == "max" and sc["whitening"] == [[1.0]] and sc["warmup"] >= 1
    assert math.isfinite(sc["threshold"]) and sc["threshold"] > 0
    assert sc["calibration"]["rows"] == 360 and sc["calibration"]["scored_rows"] > 200
    assert sc["stuck_rows"] >= train.STUCK_MIN_ROWS and "stuck_rows" in sc["calibration"]
    prov = model.meta["provenance"]
    assert prov["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert prov["data"]["skipped_columns"] == ["timestamp"]
    assert prov["split"]["rows_with_missing_values"] == 1
    assert prov["versions"]["torch"] and prov["options"]["epochs"] == 2
    # the PyTorch state dict, read back by edgegru's torch-free .pt reader, is the same model
    pt = edgegru.load(out.with_suffix(".pt"))
    for name, a in model.weights.arrays.items():
        assert np.array_equal(pt.weights.arrays[name], a)
    # and the scorer runs on the data: the missing value is imputed, scores are finite
    scorer = edgegru.AnomalyScorer.load(out)
    X = np.array([[float(r.split(",")[1] or "nan")] for r in data.read_text().split()[1:]])
    scores = scorer.score_many(X)
    assert np.isfinite(scores).all() and (scores[:scorer.warmup] == 0).all()


def test_the_same_seed_gives_the_same_file(tiny_model, tmp_path):
    data, _ = tiny_model
    out = tmp_path / "again.npz"
    files = []
    for _ in range(2):
        assert train.main([str(data), "-o", str(out)] + TINY) == 0
        files.append((out.read_bytes(), out.with_suffix(".pt").read_bytes()))
    assert files[0] == files[1]
