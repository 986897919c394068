"""edgegru plot: a real, non-blank picture of the expected size, rendered with Agg."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru.cli import main
from edgegru.errors import EdgeGRUError
from edgegru.plot import DPI, FIGSIZE, row_index
from edgegru.stream import score_stream

image = pytest.importorskip("matplotlib.image", reason="matplotlib is not installed "
                            "(pip install 'edgegru[plot]')")

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = str(ROOT / "weights" / "model.npz")
HELDOUT = str(ROOT / "examples" / "sensor_heldout.csv")
SIZE = (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI))      # rows, columns of pixels


def plot(*args):
    result = CliRunner().invoke(main, ["plot", *map(str, args)])
    return result.exit_code, result.output


def pixels(path):
    img = image.imread(str(path))
    assert img.shape[:2] == SIZE
    return img[..., :3]


def assert_real_picture(img):
    """Not blank: mostly white paper, but lines of several colours and the red shading."""
    ink = (img < 0.9).any(axis=-1).mean()
    assert 0.02 < ink < 0.6, ink
    colours = np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100
    red_shade = (img[..., 0] > 0.9) & (img[..., 1] < 0.9) & (img[..., 1] > 0.7) & \
        (img[..., 2] < 0.9)
    assert red_shade.mean() > 0.001


def test_png_of_the_heldout_file_with_the_model(tmp_path):
    out = tmp_path / "scores.png"
    code, output = plot(HELDOUT, "--weights", WEIGHTS, "-o", out, "--from", "2026-01-08",
                        "--to", "2026-01-10")
    assert code == 0, output
    assert output.strip() == f"{out}: 2881 rows"
    assert_real_picture(pixels(out))


def test_explain_and_per_channel_add_panels(tmp_path):
    plain, explained = tmp_path / "a.png", tmp_path / "b.png"
    assert plot(HELDOUT, "--weights", WEIGHTS, "-o", plain, "--to", "3000")[0] == 0
    code, output = plot(HELDOUT, "--weights", WEIGHTS, "-o", explained, "--to", "3000",
                        "--explain", "--per-channel")
    assert code == 0, output
    a, b = pixels(plain), pixels(explained)
    assert_real_picture(b)
    assert np.abs(a - b).mean() > 0.01


def test_scores_from_edgegru_run_and_svg(tmp_path):
    scores = tmp_path / "scores.csv"
    with open(HELDOUT, "rb") as src, open(scores, "wb") as out:
        score_stream(edgegru.AnomalyScorer.load(WEIGHTS), src, out, explain=True,
                     handle_signals=False, log=lambda m: None)
    svg = tmp_path / "scores.svg"
    code, output = plot(HELDOUT, "--scores", scores, "--explain", "-o", svg, "--from", "5000",
                        "--to", "9000")
    assert code == 0, output
    assert output.strip() == f"{svg}: 4001 rows"
    assert b"<svg" in svg.read_bytes()[:1000]


def test_mistakes_are_one_line_errors(tmp_path):
    out = tmp_path / "x.png"
    code, output = plot(HELDOUT, "-o", out)
    assert code == 2 and "--weights (to score DATA) or --scores" in output
    short = tmp_path / "short.csv"
    short.write_text("timestamp,score,anomaly\nt,1.0,0\n")
    code, output = plot(HELDOUT, "--scores", short, "-o", out)
    assert code == 1 and "1 scores for 20000 rows of data" in output
    code, output = plot(HELDOUT, "--weights", WEIGHTS, "-o", out, "--from", "20000")
    assert code == 1 and "leave 1 row(s) to plot" in output
    assert not out.exists()
    code, output = plot(HELDOUT, "--weights", WEIGHTS, "-o", out, "--from", "19991", "--to",
                        "2027-01-01")                   # after the last row: up to it
    assert code == 0 and output.strip() == f"{out}: 10 rows"


def test_from_and_to_as_row_numbers_or_times():
    times = ["2026-01-01T00:00", "2026-01-01T00:01", "2026-01-01T00:02"]
    assert row_index("2", times, 3, "--from") == 1
    assert row_index("2026-01-01T00:01", times, 3, "--from") == 1
    assert row_index("2026-01-01T00:00:30", times, 3, "--from") == 1
    assert row_index("99", times, 3, "--to") == 3
    with pytest.raises(EdgeGRUError, match="no time column"):
        row_index("2026-01-01", None, 3, "--from")


def test_help_has_examples():
    result = CliRunner().invoke(main, ["plot", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output


def test_without_matplotlib_the_error_names_the_extra():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from click.testing import CliRunner\nfrom edgegru.cli import main\n"
            f"r = CliRunner().invoke(main, ['plot', {HELDOUT!r}, '-o', 'x.png'])\n"
            "print(r.exit_code, r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert out.startswith("1 Error: edgegru plot needs matplotlib: pip install "
                          "'edgegru[plot]'")


def test_train_plots_its_calibration_rows_and_writes_the_same_model(tmp_path):
    pytest.importorskip("torch")
    from test_train import TINY, sensor_rows, write_csv
    data = write_csv(tmp_path / "one.csv", ["timestamp", "value"], sensor_rows(400, channels=1))
    files = []
    for extra in ([], ["--plot", tmp_path / "cal.png"]):
        code = CliRunner().invoke(main, ["train", str(data), "-o", str(tmp_path / "m.npz"),
                                         *TINY, *map(str, extra)])
        assert code.exit_code == 0, code.output
        files.append((tmp_path / "m.npz").read_bytes())
    assert files[0] == files[1]             # --plot is not part of the recorded command
    pixels(tmp_path / "cal.png")
    assert (pixels(tmp_path / "cal.png") < 0.9).any(axis=-1).mean() > 0.02
