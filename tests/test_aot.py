"""The ahead-of-time module (edgegru/aot.py; edgegru/build.py builds it): a new process that
finds it runs every compiled path without importing numba, with bitwise the numbers the numba
kernels give; a module that does not match the compiled sources or the CPU is ignored, one
whose files changed elsewhere (a message) is not; wrong argument types raise, never crash.

The module is built once here, in-process, from the kernels this process compiled (~10 s).
tests/test_cache.py builds one the user's way, with `edgegru compile` on an empty cache.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edgegru
from edgegru import build

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "weights" / "model.npz"
EXAMPLE = ROOT / "examples" / "sensor.csv"

pytestmark = [
    pytest.mark.skipif(not edgegru.JIT, reason="needs numba"),
    pytest.mark.skipif(bool(build.missing_toolchain()), reason=build.missing_toolchain()),
]

# Every path that runs compiled code: step, run and a batch (the cell variants, W_hh blocked
# and in bfloat16, in chains and in _rows4's order), AnomalyScorer one row at a time and in bulk, GroupScorer, and the CSV path
# of `edgegru run`.
OUTPUTS = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    import edgegru
    from edgegru import _jit
    from edgegru.scoring import GroupScorer
    from edgegru.stream import score_stream
    model_path, example, dest = sys.argv[1:4]
    rng = np.random.default_rng(0)
    out = {}
    for name, kw in {"after": {}, "before": {"reset_after": False},
                     "hard": {"gate_activation": "hard_sigmoid", "num_layers": 2},
                     "blocked": {"hidden_size": 70}, "blocked_before": {"hidden_size": 70,
                                                                        "reset_after": False},
                     "bf16": {"hidden_size": 150, "recurrent_dtype": "bfloat16"},
                     "deep": {"head_hidden": ((5, "relu"),)},
                     "bf16_rows4": {"hidden_size": 64, "recurrent_dtype": "bfloat16",
                                    "reset_after": False}
                     }.items():
        cfg = edgegru.GRUConfig(**{"input_size": 3, "hidden_size": 16, "output_size": 2, **kw})
        m = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg, seed=1))
        X = rng.standard_normal((50, 3)).astype(np.float32)
        out[name + "_step"] = np.array([m.step(x).copy() for x in X])
        m.reset()
        # float64 rows, and float32 rows of strides (200,): read in place by the kernel
        out[name + "_step_rows"] = np.array([m.step(x).copy() for x in X.astype(np.float64)]
                                            + [m.step(x).copy() for x in np.asfortranarray(X)])
        m.reset()
        out[name + "_run"] = m.run(X)
        m.reset()
        out[name + "_batch"] = m.run(np.stack([X, X[::-1]]))
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(model_path))
    with open(example, "rb") as f:
        lines = f.readlines()[:401]
    X = np.array([[float(v) for v in l.split(b",")[1:]] for l in lines[1:]])
    out["score_one"] = np.array([scorer.score_one(x) for x in X[:200]])
    scorer.reset()
    out["score_many"] = scorer.score_many(X)
    scorer.reset()
    out["group"] = GroupScorer(scorer).score_many(["a", "b"] * 200, X)
    scorer.reset()
    csv = io.BytesIO()
    score_stream(scorer, io.BytesIO(b"".join(lines)), csv, handle_signals=False,
                 log=lambda message: None)
    out["run_csv"] = np.frombuffer(csv.getvalue(), np.uint8)
    np.savez(dest, **out)
    print(json.dumps([_jit.BACKEND, "numba" in sys.modules, "llvmlite" in sys.modules]))
""")

STATUS = textwrap.dedent("""
    import json, sys
    from edgegru import _jit, aot
    print(json.dumps([_jit.BACKEND, aot.status]))
""")


def run(code, *args, cache=None, **env_extra):
    """A child process running ``code`` with ``args``, without this process's NUMBA_* and
    EDGEGRU_* settings; NUMBA_CACHE_DIR=cache when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEGRU_"))}
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def child(code, *args, **kwargs):
    """``run``, then the JSON the child printed last."""
    return json.loads(run(code, *args, **kwargs).stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory):
    """A NUMBA_CACHE_DIR holding only an ahead-of-time module."""
    cache = tmp_path_factory.mktemp("aot-cache")
    path = build.build(cache / "edgegru-aot")
    assert Path(path).parent == cache / "edgegru-aot"
    return cache


@pytest.mark.skipif(not MODEL.exists(), reason="no weights/model.npz")
def test_every_path_without_numba_and_bitwise_as_numba(aot_cache, tmp_path):
    got = tmp_path / "aot.npz"
    # on the module, neither numba nor llvmlite (whose library alone is 40-100 MB resident) is
    # loaded: the CPU's fingerprint in the manifest matches
    assert child(OUTPUTS, MODEL, EXAMPLE, got, cache=aot_cache) == ["aot", False, False]
    want = tmp_path / "numba.npz"
    assert child(OUTPUTS, MODEL, EXAMPLE, want, EDGEGRU_AOT="0") == ["numba", True, True]
    got, want = np.load(got), np.load(want)
    assert sorted(got) == sorted(want) and len(got) == 36
    for name in want:
        assert np.array_equal(got[name], want[name], equal_nan=True), name
    assert (want["score_many"] > 0).any() and len(bytes(want["run_csv"]).splitlines()) == 401


GIL = textwrap.dedent("""
    import json, sys, threading
    import numpy as np
    import edgegru
    from edgegru import _jit
    cfg = edgegru.GRUConfig(input_size=4, hidden_size=64)
    model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    X = np.zeros((8, 4000, 4), np.float32)
    model.run(X[:, :2])
    ticks, running = [0], [True]
    def count():
        while running[0]:
            ticks[0] += 1
    # a long switch interval: Python code never hands the GIL over by itself in between, so
    # the counter moves during run() only if the kernel lets go of it (0 ticks if it does not)
    sys.setswitchinterval(0.2)
    counter = threading.Thread(target=count)
    counter.start()
    before = ticks[0]
    model.run(X)
    during = ticks[0] - before
    running[0] = False
    counter.join()
    print(json.dumps([_jit.BACKEND, during]))
""")


@pytest.mark.parametrize("module", ["1", "0"])
def test_the_kernels_release_the_gil(aot_cache, module):
    """run(threads=N) needs it: the module's exported kernels as much as numba's nogil ones."""
    backend, during = child(GIL, cache=aot_cache, EDGEGRU_AOT=module)
    assert backend == ("aot" if module == "1" else "numba")
    assert during > 1000


def test_turned_off_by_edgegru_aot_0(aot_cache):
    assert child(STATUS, cache=aot_cache, EDGEGRU_AOT="0") == \
        ["numba", "turned off (EDGEGRU_AOT=0)"]


def test_a_stale_module_is_ignored_and_says_why(aot_cache, tmp_path):
    stale = tmp_path / "cache"
    shutil.copytree(aot_cache, stale)
    [manifest] = (stale / "edgegru-aot").glob("aot-*.json")
    good = json.loads(manifest.read_text())

    for change, why in ((dict(sources_sha256="0" * 64, compiled_sha256="0" * 64),
                         "other kernel sources"),
                        (dict(sources_sha256="0" * 64, compiled_sha256=None),
                         "other kernel sources"),
                        (dict(cpu_name="generic", cpu_features=""), "built for CPU 'generic'"),
                        (dict(cpu_name="generic", cpu_features="", cpu_fingerprint=None),
                         "built for CPU 'generic'"),
                        (dict(numpy_major=1 + good["numpy_major"]), "built for NumPy"),
                        (dict(kernels={}), "another edgegru"),
                        (dict(module="missing.so"), "cannot be loaded")):
        manifest.write_text(json.dumps(dict(good, **change)))
        backend, status = child(STATUS, cache=stale)
        assert backend == "numba" and why in status, (change, status)
    manifest.write_text("{not json")
    assert child(STATUS, cache=stale)[0] == "numba"

    manifest.write_text(json.dumps(good))                 # as built: used
    assert child(STATUS, cache=stale) == ["aot", None]
    # files edited outside their compiled code (a message): the compiled digest still matches
    manifest.write_text(json.dumps(dict(good, sources_sha256="0" * 64)))
    assert child(STATUS, cache=stale) == ["aot", None]
    # a CPU fingerprint that does not match (another machine) falls back to asking LLVM,
    # which here says it is the same CPU
    manifest.write_text(json.dumps(dict(good, cpu_fingerprint="0" * 64)))
    assert child(STATUS, cache=stale) == ["aot", None]
    # and on another CPU, as numba's own cache, not used
    backend, status = child(STATUS, cache=stale, NUMBA_CPU_NAME="generic")
    assert backend == "numba" and "NUMBA_CPU_NAME must match" in status


WRONG_TYPES = textwrap.dedent("""
    import json
    import numpy as np
    from edgegru import _jit, kernels
    from edgegru.scoring import _score_rows
    errors = []
    for kernel, args in ((kernels.gru_sequences, (np.zeros(3),) * 5 + (1,) * 11),
                         (_score_rows, (np.zeros(3, np.float32),) * 9)):
        try:
            kernel(*args)
        except TypeError as e:
            errors.append(str(e))
    print(json.dumps([_jit.BACKEND, errors]))
""")


def test_wrong_argument_types_raise_rather_than_crash(aot_cache):
    backend, errors = child(WRONG_TYPES, cache=aot_cache)
    assert backend == "aot" and len(errors) == 2
    assert "gru_sequences" in errors[0] and "no version for arguments" in errors[0]


def test_compile_leaves_a_matching_module_alone(aot_cache):
    proc = run("from edgegru.cli import main; main()", "compile", MODEL, cache=aot_cache)
    assert "ahead-of-time module: up to date" in proc.stdout
    assert str(aot_cache / "edgegru-aot") in proc.stdout
