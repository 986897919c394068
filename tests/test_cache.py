"""Numba's on-disk cache as a Raspberry Pi deployment uses it (docs/raspberry-pi.md).

- With NUMBA_CACHE_DIR set, the compiled kernels go there and nothing is written next to the
  package (which may be read-only), and a later process loads them instead of compiling.
- The cache is keyed by CPU. numba (core/caching.py, ``_CacheImpl._index_key``) files every
  compiled signature in the function's index (``<qualname>-<line>.py311.nbi``) under the key
  ``(signature, codegen.magic_tuple(), (hash of bytecode, hash of closure))``, where
  ``magic_tuple() = (target triple, CPU name, CPU features)``: the CPU name is NUMBA_CPU_NAME or
  LLVM's host CPU, the features NUMBA_CPU_FEATURES, "" for NUMBA_CPU_NAME=generic, or the host's.
  A process on another CPU finds no entry under its own key, compiles, and adds one: a cache
  built elsewhere is never silently used. NUMBA_CPU_NAME=generic gives one key on every machine
  of an architecture: a portable cache.

Fresh processes share one cache directory: ``edgegru compile`` (compiles everything, ~20 s,
and builds the ahead-of-time module, ~10 s), then what a Pi runs (``edgegru run`` on example
rows and ``score_one``) on numba's cache (must compile nothing), then a step with
NUMBA_CPU_NAME=generic (compiles the step kernel again, ~5 s); then the Pi's workload on the
ahead-of-time module (must not import numba), and the generic step again (must not use it).
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgegru

pytestmark = pytest.mark.skipif(not edgegru.JIT, reason="needs numba")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "weights" / "model.npz"

COMPILE = "from edgegru.cli import main; main(['compile', {model!r}], standalone_mode=False)\n"

# What a Pi runs: the command on 200 example rows, then a scorer fed one reading at a time
WORKLOAD = textwrap.dedent("""
    import sys
    import edgegru
    from edgegru.cli import main
    with open({example!r}, "rb") as f:
        lines = f.read().split(b"\\n")[:201]
    with open("rows.csv", "wb") as f:
        f.write(b"\\n".join(lines) + b"\\n")
    main(["run", "--weights", {model!r}, "--input", "rows.csv"], standalone_mode=False)
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load({model!r}))
    for line in lines[1:20]:
        scorer.score_one([float(v) for v in line.split(b",")[1:]])
""")

STEP = textwrap.dedent("""
    import numpy as np
    import edgegru
    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=1)
    edgegru.Model(cfg, edgegru.GRUWeights.random(cfg)).step(np.zeros(2, np.float32))
""")

MAGIC = textwrap.dedent("""
    import json
    from numba.core.registry import cpu_target
    print(json.dumps(list(cpu_target.target_context.codegen().magic_tuple())))
""")


BACKEND = textwrap.dedent("""
    import json, sys
    from edgegru import _jit
    print(json.dumps([_jit.BACKEND, "numba" in sys.modules]))
""")


def run(code, site, cache, cpu=None, aot=False):
    """One process: the package from ``site``, the cache in ``cache``, the ahead-of-time
    module off unless ``aot``; returns (magic tuple, numba's NUMBA_DEBUG_CACHE lines
    "[cache] data loaded from/saved to <file>"), or with ``aot`` (edgegru's backend, whether
    numba was imported, those lines)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "EDGEGRU_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", NUMBA_CACHE_DIR=str(cache),
               NUMBA_DEBUG_CACHE="1")
    if not aot:
        env["EDGEGRU_AOT"] = "0"
    if cpu:
        env["NUMBA_CPU_NAME"] = cpu
    proc = subprocess.run([sys.executable, "-c", code + (BACKEND if aot else MAGIC)],
                          capture_output=True, text=True, env=env, cwd=str(site), timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    cache_lines = [l for l in lines if l.startswith("[cache] data")]
    if aot:
        return tuple(json.loads(lines[-1])) + (cache_lines,)
    return tuple(json.loads(lines[-1])), cache_lines


def saved(log, name=""):
    return [l for l in log if "data saved to" in l and name in l]


def loaded(log, name=""):
    return [l for l in log if "data loaded from" in l and name in l]


def index_keys(cache, function):
    """The keys of one function's cache index, read as numba reads it (IndexDataCacheFile)."""
    [index] = Path(cache).rglob(f"kernels.{function}-*.nbi")
    with open(index, "rb") as f:
        pickle.load(f)                      # numba's version
        _stamp, overloads = pickle.loads(f.read())
    return list(overloads)


@pytest.mark.skipif(not MODEL.exists(), reason="no weights/model.npz")
def test_precompiled_cache_is_used_and_keyed_by_cpu(tmp_path):
    site, cache = tmp_path / "site-packages", tmp_path / "cache"
    shutil.copytree(ROOT / "edgegru", site / "edgegru",
                    ignore=shutil.ignore_patterns("__pycache__"))

    host, log = run(COMPILE.format(model=str(MODEL)), site, cache)     # after installing
    assert saved(log, "gru_step") and not loaded(log)
    assert host[1] not in ("", "generic")
    assert list((cache / "edgegru-aot").glob("aot-*.json")), "no ahead-of-time module"

    workload = WORKLOAD.format(example=str(ROOT / "examples" / "sensor.csv"), model=str(MODEL))
    again, log = run(workload, site, cache)                           # every boot after
    assert again == host
    assert loaded(log, "gru_step") and loaded(log, "gru_sequences")
    assert saved(log) == [], "edgegru compile left this to compile"

    generic, log = run(STEP, site, cache, cpu="generic")              # another CPU
    assert generic[1:] == ("generic", "")
    assert saved(log, "gru_step") and not loaded(log, "gru_step")     # host entry not used

    magics = sorted(key[1] for key in index_keys(cache, "gru_step"))
    assert magics == sorted([host, generic])
    assert not list(site.rglob("__pycache__")), "wrote next to the package"

    # the same boot with the ahead-of-time module edgegru compile built: numba never imported
    backend, numba_imported, log = run(workload, site, cache, aot=True)
    assert (backend, numba_imported, log) == ("aot", False, [])
    # on another CPU (here: another NUMBA_CPU_NAME) the module is not used
    backend, numba_imported, log = run(STEP, site, cache, cpu="generic", aot=True)
    assert (backend, numba_imported) == ("numba", True) and loaded(log, "gru_step")


def test_an_installed_package_keeps_numbas_cache_out_of_site_packages(tmp_path):
    """`pip install . && edgegru run ...` then `pip install -e .`: pip removes only the files it
    installed, so a cache in site-packages/edgegru/__pycache__ would outlive the package and
    shadow the next install (a namespace package `edgegru`). An installed edgegru (a copy in a
    folder named site-packages here) caches under ~/.cache/edgegru instead; a source tree (an
    editable install, this checkout) keeps numba's usual place."""
    from edgegru import aot
    site, home = tmp_path / "site-packages", tmp_path / "home-cache"
    shutil.copytree(ROOT / "edgegru", site / "edgegru",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "EDGEGRU_", "PYTHON", "XDG_"))}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", NUMBA_DEBUG_CACHE="1",
               EDGEGRU_AOT="0", XDG_CACHE_HOME=str(home))
    code = ("import numpy as np\nfrom edgegru import aot, csvio\n"
            "print(csvio._parse_number(np.frombuffer(b'1.5', np.uint8), 0, 3))\n"
            "print(aot.directories()[0])\n")               # a small kernel: compiles in ~1 s
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2] == "(1.5, True)"
    root = next((home / "edgegru").glob("site-packages-*"))
    assert lines[-1] == str(root / "aot")
    assert saved(lines) and all(f"'{root / 'numba'}/" in l for l in saved(lines))
    assert list((root / "numba").rglob("*.nbi"))
    assert not (site / "edgegru" / "__pycache__").exists()
    assert aot.installed_cache_dir() is None            # this checkout: numba's usual place
