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
    def stream(out, x, params, work, n):
        for _ in range(n):
            kernels.gru_step(out, x, params, work, 4, 32, 2, 4, True, False, np.float32(0.2),
                             np.float32(0.5), 0)

    def counts():
        s = rtsys.get_allocation_stats()
        return s.alloc, s.free, s.mi_alloc, s.mi_free

    result = {}
    stream(out, x, model._params, model._work, 1)          # compile
    for n in (10, 10000):
        a = counts(); stream(out, x, model._params, model._work, n); b = counts()
        result[f"njit_loop_{n}"] = [b[i] - a[i] for i in range(4)]

    for _ in range(10): model.step(x, out=out)             # warm up
    a = counts()
    for _ in range(1000): model.step(x, out=out)
    b = counts()
    result["python_loop"] = [b[i] - a[i] for i in range(4)]

    tracemalloc.start()
    for _ in range(100): model.step(x, out=out)
    before = tracemalloc.take_snapshot()
    for _ in range(10000): model.step(x, out=out)
    after = tracemalloc.take_snapshot()
    grown = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0 and s.count_diff > 0]
    result["tracemalloc_grown"] = sum(s.size_diff for s in grown)
    print(json.dumps(result))
""")


def test_streaming_allocates_nothing_per_step(tmp_path):
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
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
