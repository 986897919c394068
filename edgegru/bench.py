"""How fast edgegru runs a model on this machine: what ``edgegru bench`` and ``edgegru compile``
do, as functions.

- :func:`benchmark` measures one model: the latency of one ``step()`` call from Python
  (p50/p99/p99.9/max over many samples), the time per step of the whole-sequence kernel
  (``run()``), rows per second through the CSV parser and the scorer (what ``edgegru run``
  does, from bytes in memory to bytes in memory), the compile time and the cache-load time of
  the kernels (in fresh processes with an empty ``NUMBA_CACHE_DIR`` of their own), and peak
  memory.
- :func:`precompile` compiles (or loads from numba's cache) every kernel a model and
  ``edgegru run`` use, so that the first reading of a sensor is not kept waiting.

>>> import edgegru
>>> from edgegru import bench
>>> cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=2)
>>> results = bench.benchmark(edgegru.Model(cfg, edgegru.GRUWeights.random(cfg)),
...                           samples=1000, seq_len=50, rows=200, cold_start=False)
>>> sorted(results["step"])
['max', 'mean', 'p50', 'p99', 'p99.9', 'stepper_mean']
"""
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import edgegru
from edgegru import _jit


def precompile(model=None):
    """Compile (or load from the cache) the kernels ``model`` uses, and those of ``edgegru run``
    and ``AnomalyScorer`` when the model has scoring metadata. Returns {what: seconds}.

    The model's state is restored afterwards. Kernel signatures do not depend on the sizes (nor
    on the variant, the layers or the head), so the cache entries serve any model on this CPU;
    without a model, a tiny scoring model compiles them all."""
    from edgegru.errors import EdgeGRUError
    if model is None:
        model = tiny_scoring_model()
    times = model.compile()
    if "preprocessing" not in model.meta or model.config.bidirectional:
        return times
    try:
        scorer = edgegru.AnomalyScorer.from_model(model)
    except EdgeGRUError:
        return times
    from edgegru.stream import score_stream
    saved = model.state
    t = time.perf_counter()
    csv = _csv(scorer.columns, 8, group=True)
    for group_by in (None, "device"):
        score_stream(scorer, io.BytesIO(csv), io.BytesIO(), group_by=group_by, keep=[],
                     handle_signals=False, log=lambda message: None)
        scorer.reset()
    scorer.score_one(np.zeros(scorer.num_channels))
    scorer.reset()
    model.state = saved
    times["scoring (edgegru run)"] = time.perf_counter() - t
    return times


def peak_rss():
    """This process's peak resident memory, in bytes.

    On Linux from ``VmHWM`` in /proc/self/status, the high-water mark of this program's own
    memory: getrusage's ``ru_maxrss`` is kept across fork and exec, so a child of a big process
    reports the parent's peak as its own when it used less (178 MB for a process that used 36).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024    # kB on Linux


def cold_kernels(entry_points=None):
    """The kernels ``edgegru run`` uses (or those of ``entry_points``, paths as in
    aot.ENTRY_POINTS) that numba's cache holds no compiled code of at all: the first run
    compiles them (tens of seconds, minutes on a Pi). Empty when the kernels come from the
    ahead-of-time module or NumPy, or each has an entry in the cache (which may still be
    another CPU's: then it compiles without this telling)."""
    if _jit.BACKEND != "numba":
        return []
    import importlib

    from edgegru import _numba_private, aot
    cold = []
    for path in entry_points or aot.ENTRY_POINTS:
        module, name = path.rsplit(".", 1)
        dispatcher = getattr(importlib.import_module(module), name)
        index = _numba_private.cache_index_path(dispatcher)
        if index is None:                   # another numba's layout: say nothing
            return []
        if not os.path.exists(index):
            cold.append(path)
    return cold


def tiny_scoring_model(backend=None):
    """A 2-channel forecaster with unit scoring statistics: the smallest model that runs every
    kernel ``edgegru run`` uses (``backend``: the Model's)."""
    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=2)
    meta = {"preprocessing": {"columns": ["a", "b"], "mean": [0.0, 0.0], "std": [1.0, 1.0]},
            "scoring": {"residual_std": [1.0, 1.0], "threshold": 5.0}}
    return edgegru.Model(cfg, edgegru.GRUWeights.random(cfg), meta=meta, backend=backend)


def cache_dir():
    """Where numba keeps the compiled kernels (NUMBA_CACHE_DIR, or next to the source)."""
    from edgegru import _numba_private, kernels
    if _jit.BACKEND != "numba":
        return None
    return _numba_private.cache_dir(kernels.gru_step)


def _csv(columns, rows, group=False, seed=0):
    """CSV bytes: a header and `rows` rows of normal random values (and a device column)."""
    values = np.random.default_rng(seed).standard_normal((rows, len(columns)))
    head = (["device"] if group else []) + list(columns)
    lines = [",".join(head)]
    for i, row in enumerate(values):
        fields = [f"{v:.5g}" for v in row]
        lines.append(",".join(([f"d{i % 4}"] if group else []) + fields))
    return ("\n".join(lines) + "\n").encode()


def _scorer_for(model):
    """An AnomalyScorer for `model`: its own metadata, or unit statistics for a model whose
    head forecasts its input (output_size == input_size); None when it cannot score rows."""
    from edgegru.errors import EdgeGRUError
    try:
        return edgegru.AnomalyScorer.from_model(model)
    except EdgeGRUError:
        pass
    C = model.input_size
    if model.output_size != C or model.config.bidirectional:
        return None
    ones = np.ones(C)
    return edgegru.AnomalyScorer(model, [f"x{c}" for c in range(C)], np.zeros(C), ones, ones,
                                 threshold=5.0)


def step_latency(model, samples=100_000):
    """Seconds per ``model.step(x, out=buf)`` call: percentiles of each call timed on its own,
    and the mean of an untimed loop (without the clock's own cost); and the mean per call of
    ``model.stepper(x, out)``."""
    x = np.random.default_rng(0).standard_normal(model.input_size).astype(np.float32)
    out = np.empty(model.output_size, np.float32)
    step = model.step
    clock = time.perf_counter_ns
    model.reset()
    for _ in range(1000):
        step(x, out=out)
    ns = np.empty(samples, np.int64)
    for i in range(samples):
        t = clock()
        step(x, out=out)
        ns[i] = clock() - t
    n = max(1000, samples // 10)
    t = time.perf_counter()
    for _ in range(n):
        step(x, out=out)
    mean = (time.perf_counter() - t) / n
    bound = model.stepper(x, out)
    t = time.perf_counter()
    for _ in range(n):
        bound()
    stepper = (time.perf_counter() - t) / n
    model.reset()
    q = np.percentile(ns, [50, 99, 99.9]) * 1e-9
    return {"p50": q[0], "p99": q[1], "p99.9": q[2], "max": ns.max() * 1e-9, "mean": mean,
            "stepper_mean": stepper}


def sequence_step(model, seq_len=2000, repeats=9):
    """Seconds per time step of ``model.run(X)`` on a sequence of seq_len steps (the median of
    `repeats` runs)."""
    X = np.random.default_rng(1).standard_normal((seq_len, model.input_size)).astype(np.float32)
    saved = model.state
    model.run(X[:10])
    times = []
    for _ in range(repeats):
        model.reset()
        t = time.perf_counter()
        model.run(X)
        times.append(time.perf_counter() - t)
    model.state = saved
    return float(np.median(times)) / seq_len


def rows_per_second(model, rows=100_000):
    """Rows per second through ``edgegru run``'s path (CSV bytes parsed, scored, written as
    CSV), in memory; None when the model cannot score rows (its head does not forecast its
    input)."""
    from edgegru.stream import score_stream
    scorer = _scorer_for(model)
    if scorer is None:
        return None
    saved = model.state
    csv = _csv(scorer.columns, rows)
    score_stream(scorer, io.BytesIO(_csv(scorer.columns, 20)), io.BytesIO(),
                 handle_signals=False, log=lambda message: None)            # warm up
    scorer.reset()
    t = time.perf_counter()
    result = score_stream(scorer, io.BytesIO(csv), io.BytesIO(), handle_signals=False,
                          log=lambda message: None)
    seconds = time.perf_counter() - t
    model.state = saved
    return result.rows / seconds


_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import edgegru
from edgegru import _jit, build
from edgegru.bench import peak_rss, precompile
t1 = time.perf_counter()
model = edgegru.load(sys.argv[1])
t2 = time.perf_counter()
kernels = precompile(model)
t3 = time.perf_counter()
model.step(np.zeros(model.input_size, np.float32))
t4 = time.perf_counter()
result = {"backend": _jit.BACKEND, "import": t1 - t0, "load": t2 - t1, "kernels": kernels,
          "precompile": t3 - t2, "first_step": t4 - t0,
          "rss": peak_rss()}
if sys.argv[2:] == ["build"]:
    t = time.perf_counter()
    try:
        build.build()
        result["aot_build"] = time.perf_counter() - t
    except RuntimeError as e:
        result["aot_error"] = str(e)
print(json.dumps(result))
"""


def measure_cold_start(model_path):
    """Fresh processes sharing a new, empty NUMBA_CACHE_DIR, as after `edgegru compile`: the
    first compiles every kernel (precompile) and builds the ahead-of-time module from them;
    then one loads numba's cache (EDGEGRU_AOT=0) and one starts on the module. Returns the
    seconds each took, and each one's time from start to its first step() result, wall time
    and peak memory (the module's figures are None when it could not be built: aot_error)."""
    env = dict(os.environ)
    env.pop("EDGEGRU_AOT", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(edgegru.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def child(*args, **extra):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, os.fspath(model_path), *args],
                              env=dict(env, **extra), capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"the cold-start process failed:\n{proc.stderr}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]), wall=wall)

    with tempfile.TemporaryDirectory(prefix="edgegru-bench-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        first = child("build", EDGEGRU_AOT="0")
        second = child(EDGEGRU_AOT="0")
        third = child() if "aot_build" in first else None
    result = {"compile": first["precompile"], "compile_kernels": first["kernels"],
              "cache_load": second["precompile"], "import": second["import"],
              "first_step": second["first_step"], "process_wall": second["wall"],
              "process_peak_rss": second["rss"], "aot_build": first.get("aot_build"),
              "aot_error": first.get("aot_error"), "aot_import": None, "aot_first_step": None,
              "aot_process_wall": None, "aot_process_peak_rss": None}
    if third is not None and third["backend"] == "aot":
        result.update(aot_import=third["import"], aot_first_step=third["first_step"],
                      aot_process_wall=third["wall"], aot_process_peak_rss=third["rss"])
    elif third is not None:
        result["aot_error"] = "built, but the next process did not use it"
    return result


def benchmark(model, samples=100_000, seq_len=2000, rows=100_000, cold_start=True):
    """All of the above for one model; a dict of plain numbers (seconds, bytes, rows/s)."""
    c = model.config
    results = {"model": {"input_size": c.input_size, "hidden_size": c.hidden_size,
                         "num_layers": c.num_layers, "bidirectional": c.bidirectional,
                         "output_size": model.output_size, "backend": model._k.__name__,
                         "kernels": _jit.BACKEND if model._k.__name__ == "edgegru.kernels"
                         else "numpy"},
               "machine": machine()}
    saved = model.state
    results["compile"] = precompile(model)
    if not c.bidirectional:
        results["step"] = step_latency(model, samples)
    results["sequence_step"] = sequence_step(model, seq_len)
    results["rows_per_s"] = rows_per_second(model, rows)
    if cold_start and model._k.__name__ == "edgegru.kernels":
        with tempfile.TemporaryDirectory(prefix="edgegru-bench-") as tmp:
            path = os.path.join(tmp, "model.npz")
            edgegru.save(model, path)
            results["cold_start"] = measure_cold_start(path)
    model.state = saved
    results["peak_rss"] = peak_rss()
    results["settings"] = {"samples": samples, "seq_len": seq_len, "rows": rows}
    return results


def machine():
    """What the numbers were measured on."""
    import platform
    info = {"cpu": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "edgegru": edgegru.__version__}
    if edgegru.JIT:
        from importlib.metadata import version
        info["numba"] = version("numba")
    else:
        info["numba"] = None                # the NumPy fallback
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def report(results):
    """The human-readable table of `benchmark`'s results."""
    m, lines = results["model"], []
    lines.append(f"model: input {m['input_size']}, hidden {m['hidden_size']}, "
                 f"{m['num_layers']} layer(s){', bidirectional' if m['bidirectional'] else ''}, "
                 f"output {m['output_size']}; kernels: {m['kernels']}")
    info = results["machine"]
    lines.append(f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
                 f"numba {info['numba'] or '- (NumPy fallback)'}, numpy {info['numpy']}")
    lines.append("")
    rows = []
    s = results.get("step")
    if s:
        n = results["settings"]["samples"]
        rows.append((f"step() from Python, per call ({n:,} calls)",
                     f"p50 {_time(s['p50'])}  p99 {_time(s['p99'])}  "
                     f"p99.9 {_time(s['p99.9'])}  max {_time(s['max'])}"))
        rows.append(("step() from Python, mean of a loop", _time(s["mean"])))
        rows.append(("stepper() from Python (no checks), mean of a loop",
                     _time(s["stepper_mean"])))
    rows.append((f"run(), per time step (T={results['settings']['seq_len']})",
                 _time(results["sequence_step"])))
    r = results["rows_per_s"]
    rows.append(("edgegru run path (parse + score + write)",
                 f"{r:,.0f} rows/s" if r else "- (not a forecaster of its own input)"))
    cold = results.get("cold_start")
    if cold:
        rows.append(("compile, empty cache (new process)", _time(cold["compile"])))
        rows.append(("load from cache (new process, with numba's set-up)",
                     _time(cold["cache_load"])))
        rows.append(("new process to first step() result",
                     f"{_time(cold['first_step'])} (import {_time(cold['import'])}; "
                     f"wall {_time(cold['process_wall'])})"))
        rows.append(("peak memory of that process", f"{cold['process_peak_rss'] / 2**20:.0f} MB"))
        if cold["aot_first_step"] is not None:
            rows.append(("build the ahead-of-time module (edgegru compile)",
                         _time(cold["aot_build"])))
            rows.append(("new process to first step(), on that module (no numba)",
                         f"{_time(cold['aot_first_step'])} (import "
                         f"{_time(cold['aot_import'])}; wall {_time(cold['aot_process_wall'])}; "
                         f"peak memory {cold['aot_process_peak_rss'] / 2**20:.0f} MB)"))
        else:
            rows.append(("ahead-of-time module", f"not built: {cold['aot_error']}"))
    rows.append(("peak memory of this benchmark", f"{results['peak_rss'] / 2**20:.0f} MB"))
    width = max(len(k) for k, _ in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def to_json(results):
    return json.dumps(results, indent=1, default=float)
