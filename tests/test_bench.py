"""`edgegru bench` and `edgegru compile`, at tiny sizes and few samples (no timing asserted)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru import bench
from edgegru.cli import main

TINY = ["--input-size", "2", "--hidden-size", "5", "--samples", "200", "--rows", "200",
        "--no-cold-start"]


def test_bench_json_has_every_measurement():
    result = CliRunner().invoke(main, ["bench", *TINY, "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["model"]["hidden_size"] == 5 and r["settings"]["samples"] == 200
    step = r["step"]
    assert 0 < step["p50"] <= step["p99"] <= step["p99.9"] <= step["max"]
    assert r["sequence_step"] > 0 and r["rows_per_s"] > 0 and r["peak_rss"] > 0
    assert "cold_start" not in r


def test_bench_table_for_a_model_file(tmp_path):
    path = tmp_path / "m.npz"
    edgegru.save(bench.tiny_scoring_model(), path)
    result = CliRunner().invoke(main, ["bench", "--weights", str(path), "--samples", "200",
                                       "--rows", "200", "--no-cold-start"])
    assert result.exit_code == 0, result.output
    for label in ("p50", "p99.9", "run(), per time step", "rows/s", "peak memory"):
        assert label in result.output


def test_bench_refuses_weights_and_sizes_together(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--weights", "x.npz", "--hidden-size", "8"])
    assert result.exit_code == 2 and "not both" in result.output


def test_bench_without_a_forecasting_head_leaves_the_run_row_out():
    cfg = edgegru.GRUConfig(input_size=3, hidden_size=4, output_size=1)
    model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    r = bench.benchmark(model, samples=100, seq_len=20, rows=100, cold_start=False)
    assert r["rows_per_s"] is None
    assert "not a forecaster" in bench.report(r)


def test_benchmark_leaves_the_state_alone():
    model = bench.tiny_scoring_model()
    model.state = np.full(model.state.shape, 0.25, np.float32)
    bench.benchmark(model, samples=100, seq_len=20, rows=100, cold_start=False)
    assert (model.state == 0.25).all()


@pytest.mark.skipif(not edgegru.JIT, reason="needs numba")
def test_compile_command_with_and_without_a_model(tmp_path):
    path = tmp_path / "m.npz"
    edgegru.save(bench.tiny_scoring_model(), path)
    for args in (["compile", "--no-aot"], ["compile", str(path), "--no-aot"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        for line in ("step:", "sequence:", "scoring (edgegru run):", "cache:"):
            assert line in result.output


def test_compile_refuses_a_missing_model(tmp_path):
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "nope.npz")])
    assert result.exit_code == 1 and "no such file" in result.output


@pytest.mark.skipif(not edgegru.JIT, reason="needs numba")
def test_model_compile_binds_what_step_and_run_use():
    from edgegru import heads, kernels
    model = bench.tiny_scoring_model()
    # the deeper heads' kernels too, whatever the model: edgegru compile builds the AOT module
    assert set(model.compile()) == {"step", "sequence", "head"}
    before = len(kernels.gru_sequences.signatures)
    model.run(np.zeros((3, 2)))
    model.run(np.zeros((2, 3, 2)))
    assert len(kernels.gru_sequences.signatures) == before     # found compiled, not recompiled
    before = len(kernels.gru_step_strided.signatures)
    model.step(np.zeros(2, np.float32))
    model.step(np.zeros(2)[::1])                                # float64: its own signature
    model.step(np.zeros((3, 2), np.float32)[:, 0][:2])          # any strides: the same one
    assert len(kernels.gru_step_strided.signatures) == before
    compiled = len(heads.head_rows.signatures), len(heads.head_step.signatures)
    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=1,
                            head_hidden=((3, "relu"),))
    deep = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    deep.run(np.zeros((3, 2)))
    deep.step(np.zeros(2))
    assert (len(heads.head_rows.signatures), len(heads.head_step.signatures)) == compiled


def test_a_childs_peak_memory_is_its_own_not_its_parents():
    """getrusage's ru_maxrss survives fork and exec: a child of a 300 MB process would report
    300 MB. peak_rss() reads the child's own high-water mark."""
    import subprocess
    import sys
    code = ("import numpy as np, subprocess, sys\n"
            "a = np.ones(300 << 17)              # 300 MB, touched\n"
            "print(subprocess.run([sys.executable, '-c', 'import resource; from edgegru.bench "
            "import peak_rss; print(peak_rss(), resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss * 1024)'], capture_output=True, text=True).stdout)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    own, inherited = int(out[0]), int(out[1])
    if not sys.platform.startswith("linux"):
        pytest.skip("the high-water mark of /proc/self/status is Linux's")
    assert inherited > 300e6 and own < 250e6
