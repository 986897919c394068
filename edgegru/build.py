"""``edgegru compile``'s work: compile every kernel into numba's cache, then build the
ahead-of-time module (:mod:`edgegru.aot` finds and loads it) from the code just compiled.

This is the top of the house: it runs the whole package (:func:`edgegru.bench.precompile` scores
a tiny model through ``edgegru run``'s path) and drives numba's pycc, through
:mod:`edgegru._numba_private`. Nothing below imports it.
"""
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from edgegru import _jit, _numba_private, aot, bench


def missing_toolchain():
    """Why the C side of a build cannot run here ('' if it can): the C compiler setuptools
    would use, and Python's headers."""
    import sysconfig
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found; apt install gcc)"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python headers (Python.h; apt install python3-dev)"
    return ""


def _missing_pycc():
    """Why numba's pycc cannot build here ('' if it can)."""
    try:
        _numba_private.import_pycc()
        import setuptools  # noqa: F401  (pycc drives the C compiler through it)
    except ImportError as e:
        return f"needs numba's pycc and setuptools ({e}); pip install 'edgegru[aot]'"
    if not _numba_private.pycc_takes_cpu_features():
        return "this numba's pycc cannot be given the CPU features"
    return ""


def build(directory=None):
    """Build the module from the signatures the kernels are compiled for in this process (the
    tiny scoring model of :func:`edgegru.bench.precompile` compiles every one of them; they do
    not depend on a model's sizes). Returns its path; raises RuntimeError saying why not."""
    missing = _missing_pycc() or missing_toolchain()   # before compiling (minutes on a Pi)
    if missing:
        raise RuntimeError(missing)
    bench.precompile()
    name, features = aot.target_cpu()
    kernels, exports = _exports()
    sha = aot.sources_sha256()
    token = hashlib.sha256(f"{sha} {name} {features} {sys.version}".encode()).hexdigest()[:16]
    manifest = {"format": 1, "module": None, "sources_sha256": sha,
                "compiled_sha256": aot.compiled_sha256(),
                "numpy_major": int(np.__version__.split(".")[0]), "cpu_name": name,
                "cpu_features": features, "cpu_fingerprint": aot.cpu_fingerprint(name, features),
                "python": sys.version, "kernels": kernels}
    target, tmp = _build_directory([directory] if directory else aot.directories())
    try:
        try:
            output = _numba_private.build_extension(
                f"_edgegru_aot_{token}", tmp, exports, name, features,
                # the kernels keep no reference counts (edgegru._jit.NO_NRT), so neither need
                # the forwarders: without numba's runtime, a call unboxes its arrays without
                # making a meminfo for each
                use_nrt=not _jit.NO_NRT)
        except Exception as e:          # the C compiler or the headers missing, mostly
            last = str(e).strip().splitlines()[-1] if str(e).strip() else e
            raise RuntimeError(f"the C extension could not be built ({type(e).__name__}: "
                               f"{last}); it needs a C compiler and Python's headers "
                               "(python3-dev)") from None
        manifest["module"] = output
        return _install(tmp, target, output, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exports():
    """({kernel: [[argument keys], export name]}, [(export name, signature, forwarder)]) of
    every signature the ENTRY_POINTS are compiled for in this process."""
    kernels, exports = {}, []
    for qualified in aot.ENTRY_POINTS:
        module_name, func_name = qualified.rsplit(".", 1)
        dispatcher = getattr(importlib.import_module(module_name), func_name)
        if not dispatcher.signatures:
            raise RuntimeError(f"{qualified} has not been compiled in this process")
        variants = []
        for i, sig in enumerate(dispatcher.signatures):
            export = f"{func_name.lstrip('_')}_{i}"
            ret = _numba_private.return_type(dispatcher, sig)
            exports.append((export, ret(*sig), _forwarder(dispatcher, len(sig))))
            variants.append([[_type_key(t) for t in sig], export])
        kernels[qualified] = variants
    return kernels, exports


def _forwarder(kernel, n):
    # def forward(a0, ..., an): return kernel(a0, ..., an), so that pycc compiles the kernel
    # as numba compiled it (its own options: fastmath, error_model) and only this shim with
    # pycc's defaults.
    names = ", ".join(f"a{i}" for i in range(n))
    namespace = {"kernel": kernel}
    exec(f"def forward({names}):\n    return kernel({names})\n", namespace)
    return namespace["forward"]


def _type_key(t):
    """What :func:`edgegru.aot._value_key` makes of a value numba types as ``t``."""
    from numba import types
    if isinstance(t, types.BaseTuple):
        name = t.instance_class.__name__ if isinstance(t, types.BaseNamedTuple) else "tuple"
        return (name, tuple(_type_key(v) for v in t.types))
    if isinstance(t, types.Array):
        return (np.dtype(str(t.dtype)).str, t.ndim, t.layout, t.mutable)
    if isinstance(t, types.Boolean):
        return "b"
    if isinstance(t, (types.Integer, types.Float)):
        return np.dtype(str(t)).str
    raise TypeError(f"no ahead-of-time key for argument type {t}")


def _build_directory(targets):
    """(target, a temporary directory inside it) for the first of ``targets`` that takes one."""
    error = None
    for target in targets:
        try:
            os.makedirs(target, exist_ok=True)
            return target, tempfile.mkdtemp(prefix=".aot-build-", dir=target)
        except OSError as e:
            error = e
    raise RuntimeError(f"no writable directory among {targets} ({error})")


def _install(tmp, target, output, manifest):
    """Move the built module and its manifest from ``tmp`` into ``target``; returns the
    module's path. Replaced, never rewritten in place: a running process may have the old
    file mapped."""
    final = os.path.join(target, output)
    os.replace(os.path.join(tmp, output), final)
    manifest_tmp = os.path.join(tmp, "manifest.json")
    with open(manifest_tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    old = _previous_module(target)
    os.replace(manifest_tmp, os.path.join(target, aot.manifest_name()))
    if old and old != output:
        try:
            os.remove(os.path.join(target, old))
        except OSError:
            pass
    return final


def _previous_module(directory):
    try:
        with open(os.path.join(directory, aot.manifest_name()), encoding="utf-8") as f:
            return os.path.basename(json.load(f)["module"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
