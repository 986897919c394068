"""Nothing is allocated per step: numba's NRT counters and tracemalloc, in a fresh process
(NUMBA_NRT_STATS must be set before numba is imported)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import edgegru

pytestmark = pytest.mark.skipif(not edgegru.JIT, reason="needs numba")

SCRIPT = textwrap.dedent("""
    import json, tracemalloc
    import numpy as np
    from numba import njit
    from numba.core.runtime import rtsys
    import edgegru
    from edgegru import kernels

    cfg = edgegru.GRUConfig(input_size=4, hidden_size=32, num_layers=2, output_size=4)
    model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    x = np.ones(4, np.float32)
    out = np.empty(4, np.float32)

    @njit
    def stream(out, x, step_model, n):
        for _ in range(n):
            kernels.gru_step(out, x, step_model)

    @njit
    def stream_strided(out, x, step_model, n):
        for _ in range(n):
            kernels.gru_step_strided(out, x, step_model)

    def counts():
        s = rtsys.get_allocation_stats()
        return s.alloc, s.free, s.mi_alloc, s.mi_free

    result = {}
    stream(out, x, model._step_model, 1)                    # compile
    for n in (10, 10000):
        a = counts(); stream(out, x, model._step_model, n); b = counts()
        result[f"njit_loop_{n}"] = [b[i] - a[i] for i in range(4)]

    def python_loop(model):
        # numba's counts over 1,000 step(x, out=out) calls, after 100 to warm up
        for _ in range(100): model.step(x, out=out)
        a = counts()
        for _ in range(1000): model.step(x, out=out)
        b = counts()
        return [b[i] - a[i] for i in range(4)]
    result["python_loop"] = python_loop(model)

    tracemalloc.start()

    def grown(model):
        # bytes of Python memory 10,000 step(x, out=out) calls leave behind, tracemalloc's own
        # snapshots left out (a first compile in this process leaves more objects behind, so
        # the first snapshot is larger)
        def own(snapshot):
            return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        for _ in range(100): model.step(x, out=out)
        before = tracemalloc.take_snapshot()
        for _ in range(10000): model.step(x, out=out)
        after = tracemalloc.take_snapshot()
        return sum(s.size_diff for s in own(after).compare_to(own(before), "lineno")
                   if s.size_diff > 0 and s.count_diff > 0)
    result["tracemalloc_grown"] = grown(model)

    # step(X[t], out=out), a new row each call, float32 or float64, contiguous or not:
    # step()'s kernel reads it in place, converting nothing
    x64 = np.ones((4, 2))[:, 0]                             # float64, strides (16,)
    stream_strided(out, x64, model._step_model, 1)
    for n in (10, 10000):
        a = counts(); stream_strided(out, x64, model._step_model, n); b = counts()
        result[f"strided_njit_loop_{n}"] = [b[i] - a[i] for i in range(4)]
    rows = {"float32": np.ones((1100, 4), np.float32), "float64": np.ones((1100, 4)),
            "strided": np.ones((4, 1100), np.float32).T}
    for dtype, X in rows.items():
        for t in range(100): model.step(X[t], out=out)
        a = counts()
        for t in range(100, 1100): model.step(X[t], out=out)
        b = counts()
        result[f"rows_{dtype}_python_loop"] = [b[i] - a[i] for i in range(4)]
        # the most memory in use at once, over what X[t] alone takes: a conversion of the row
        # would be an array more
        def peak(loop):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            loop()
            return tracemalloc.get_traced_memory()[1] - base

        def rows_alone():
            for t in range(100, 1100): X[t]

        def stepping():
            for t in range(100, 1100): model.step(X[t], out=out)
        result[f"rows_{dtype}_peak"] = [peak(rows_alone), peak(stepping)]

    # a head deeper than one linear layer: the GRU step, then edgegru.heads' kernel
    cfg = edgegru.GRUConfig(input_size=4, hidden_size=32, output_size=4,
                            head_hidden=((16, "relu"), (8, "tanh")))
    deep = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    result["deep_python_loop"] = python_loop(deep)
    result["deep_tracemalloc_grown"] = grown(deep)

    # W_hh in bfloat16, blocked: the kernels' bfloat16 products, in _rows4's order (H=64) and
    # in chains (H=128)
    for H in (64, 128):
        cfg = edgegru.GRUConfig(input_size=4, hidden_size=H, output_size=4,
                                recurrent_dtype="bfloat16")
        narrow = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
        stream(out, x, narrow._step_model, 1)
        for n in (10, 10000):
            a = counts(); stream(out, x, narrow._step_model, n); b = counts()
            result[f"bf16_{H}_njit_loop_{n}"] = [b[i] - a[i] for i in range(4)]
        result[f"bf16_{H}_python_loop"] = python_loop(narrow)
        result[f"bf16_{H}_tracemalloc_grown"] = grown(narrow)

    # the scorer's per-row kernel, as AnomalyScorer.score_one calls it (one row per call)
    import sys
    from edgegru.scoring import _score_one_row
    sc = edgegru.AnomalyScorer.from_model(edgegru.load(sys.argv[1]))
    sc.score_one(np.ones(4))
    args = (sc._contributions, sc._z0, sc._x0, np.ones(8)[::2], 50, sc._mean32, sc._inv_std,
            sc._params, sc._stream, sc._scratch)

    @njit
    def score_rows(n, args):
        for _ in range(n):
            _score_one_row(*args)

    score_rows(1, args)                                      # compile
    for n in (10, 10000):
        a = counts(); score_rows(n, args); b = counts()
        result[f"score_loop_{n}"] = [b[i] - a[i] for i in range(4)]
    print(json.dumps(result))
""")


def test_streaming_allocates_nothing_per_step(tmp_path):
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    shipped = os.path.join(os.path.dirname(__file__), "..", "weights", "model.npz")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, shipped], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Inside njit: 10,000 steps allocate exactly what 10 steps do (the call's argument records,
    # all freed), so nothing per step.
    assert result["njit_loop_10000"] == result["njit_loop_10"]
    alloc, free, mi_alloc, mi_free = result["njit_loop_10000"]
    assert alloc == free and mi_alloc == mi_free and alloc <= 4
    # From Python: numba's per-argument bookkeeping at the boundary only, all freed again.
    alloc, free, mi_alloc, mi_free = result["python_loop"]
    assert alloc == free and mi_alloc == mi_free
    # step(x, out=buf) creates no new numpy array: memory does not grow over 10,000 calls.
    assert result["tracemalloc_grown"] < 2048
    # nor with a new row each call, float32 or float64, of any strides
    assert result["strided_njit_loop_10000"] == result["strided_njit_loop_10"]
    for dtype in ("float32", "float64", "strided"):
        alloc, free, mi_alloc, mi_free = result[f"rows_{dtype}_python_loop"]
        assert alloc == free and mi_alloc == mi_free, dtype
        alone, stepping = result[f"rows_{dtype}_peak"]
        assert stepping <= alone, dtype
    # nor with a deeper head (its layers' outputs go to the model's scratch)
    alloc, free, mi_alloc, mi_free = result["deep_python_loop"]
    assert alloc == free and mi_alloc == mi_free
    assert result["deep_tracemalloc_grown"] < 2048
    # nor with W_hh in bfloat16
    for H in (64, 128):
        assert result[f"bf16_{H}_njit_loop_10000"] == result[f"bf16_{H}_njit_loop_10"]
        for key in (f"bf16_{H}_njit_loop_10000", f"bf16_{H}_python_loop"):
            alloc, free, mi_alloc, mi_free = result[key]
            assert alloc == free and mi_alloc == mi_free, key
        assert result[f"bf16_{H}_tracemalloc_grown"] < 2048
    # The scorer's kernel (shipped model: whitening, consistency model, drift test, stuck sensors)
    # allocates nothing per call either: its work space is the scorer's. (What 10 calls
    # allocate is the records of the arrays passed into the loop, all freed.)
    assert result["score_loop_10000"] == result["score_loop_10"]
    alloc, free, mi_alloc, mi_free = result["score_loop_10000"]
    assert alloc == free and mi_alloc == mi_free
