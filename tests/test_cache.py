"""Numba's on-disk cache as a Raspberry Pi deployment uses it (README, "On a Raspberry Pi").

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

Three fresh processes share one cache directory (two compile gru_step, ~10 s each; one loads).
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

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import edgegru
    from numba.core.registry import cpu_target

    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=1)
    edgegru.Model(cfg, edgegru.GRUWeights.random(cfg)).step(np.zeros(2, np.float32))
    print(json.dumps(list(cpu_target.target_context.codegen().magic_tuple())))
""")


def run(site, cache, cpu):
    """One process: the package from ``site``, the cache in ``cache``; returns (magic tuple,
    which cache files of gru_step it loaded and saved, from numba's NUMBA_DEBUG_CACHE log)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "EDGEGRU_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", NUMBA_CACHE_DIR=str(cache),
               NUMBA_DEBUG_CACHE="1")
    if cpu:
        env["NUMBA_CPU_NAME"] = cpu
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=str(site), timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    log = [l for l in lines if l.startswith("[cache]") and "gru_step" in l]
    return (tuple(json.loads(lines[-1])),
            sum("data loaded from" in l for l in log), sum("data saved to" in l for l in log))


def index_keys(cache, function):
    """The keys of one function's cache index, read as numba reads it (IndexDataCacheFile)."""
    [index] = Path(cache).rglob(f"kernels.{function}-*.nbi")
    with open(index, "rb") as f:
        pickle.load(f)                      # numba's version
        _stamp, overloads = pickle.loads(f.read())
    return list(overloads)


def test_cache_dir_survives_and_is_keyed_by_cpu(tmp_path):
    site, cache = tmp_path / "site-packages", tmp_path / "cache"
    shutil.copytree(ROOT / "edgegru", site / "edgegru",
                    ignore=shutil.ignore_patterns("__pycache__"))

    host, loaded, saved = run(site, cache, cpu=None)       # compiles for this CPU
    assert (loaded, saved) == (0, 1)
    assert host[1] not in ("", "generic")

    again, loaded, saved = run(site, cache, cpu=None)      # next boot: loads, compiles nothing
    assert again == host and (loaded, saved) == (1, 0)

    generic, loaded, saved = run(site, cache, cpu="generic")   # another CPU: not used
    assert generic[1:] == ("generic", "")
    assert (loaded, saved) == (0, 1)

    magics = sorted(key[1] for key in index_keys(cache, "gru_step"))
    assert magics == sorted([host, generic])
    assert not list(site.rglob("__pycache__")), "wrote next to the package"
