"""Ahead-of-time compiled kernels: a new process scores without loading numba at all.

Loading kernels from numba's cache still means importing numba (~0.3 s here, seconds on a Pi)
and its one-off target set-up (~0.2 s) before the first score. ``edgegru compile`` therefore also
builds, next to numba's cache, a small extension module holding the machine code of the kernels
the Python side calls (:data:`ENTRY_POINTS`), compiled by numba's ``pycc`` from the same
functions with the same options and for the same CPU as the JIT compiles them (so the numbers
are bitwise the same), plus a JSON manifest describing it. At import,
:mod:`edgegru._jit` calls :func:`load`: if the manifest matches these kernel sources, this
Python, NumPy's major version and this CPU (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` honoured as
numba does), the process runs on the module and never imports numba; otherwise it uses numba as
before. ``EDGEGRU_AOT=0`` turns the module off.

Building needs what any C extension needs: a C compiler, Python's headers (``python3-dev`` on
Debian and Raspberry Pi OS) and setuptools (``pip install 'edgegru[aot]'``). Without them
``edgegru compile`` fills numba's cache only and says why.

Where: ``$NUMBA_CACHE_DIR/edgegru-aot`` when NUMBA_CACHE_DIR is set; else, for an edgegru
installed into site-packages, :func:`installed_cache_dir` (where numba's cache goes too); else
(a source tree) the package's ``__pycache__``, else ``$XDG_CACHE_HOME/edgegru`` (``~/.cache``).

The exported functions check nothing: handed an array of another dtype they would read or write
out of bounds. :class:`Kernel` therefore checks the argument types against the exported
signatures (a ``TypeError`` otherwise), and only :meth:`Kernel.entry`, for buffers already
checked (the step path), hands out the bare function.
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import warnings

import numpy as np

# The kernels called from Python (everything else is compiled into them).
ENTRY_POINTS = ("edgegru.kernels.gru_step", "edgegru.kernels.gru_sequences",
                "edgegru.scoring._score_rows", "edgegru.scoring._score_rows_batch",
                "edgegru.scoring._normalise_row",
                "edgegru.stream._parse_lines")
# The files whose code ends up in the module: any change to them makes a built module stale.
SOURCES = ("kernels.py", "scoring.py", "stream.py", "_jit.py", "aot.py")
_HERE = os.path.dirname(os.path.abspath(__file__))

# Why the module is not in use in this process (None when it is); shown by `edgegru compile`.
status = "not looked for"


def directories():
    """Where the module may live, in the order it is looked for (and written)."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if cache:
        return [os.path.join(cache, "edgegru-aot")]
    installed = installed_cache_dir()
    if installed is not None:
        return [os.path.join(installed, "aot")]
    return [os.path.join(_HERE, "__pycache__"), os.path.join(_user_cache(), "edgegru")]


def _user_cache():
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def installed_cache_dir():
    """Where compiled code goes when edgegru is installed into site-packages (``pip install
    .``) and NUMBA_CACHE_DIR is not set: ``~/.cache/edgegru/<site-packages dir, hashed>``; None
    for a source tree (an editable install), whose ``__pycache__`` is used.

    Not the package's ``__pycache__``: pip removes only the files it installed, so numba's
    ``.nbi``/``.nbc`` files would stay in ``site-packages/edgegru/__pycache__`` after ``pip
    uninstall`` (or an upgrade to an editable install), and that leftover folder is a namespace
    package ``edgegru`` that shadows the next install. Keyed by the install path, so that two
    venvs never share (and fight over) one cache.
    """
    parent = os.path.dirname(_HERE)
    if not _is_site_packages(parent):
        return None
    tag = hashlib.sha1(parent.encode()).hexdigest()[:12]
    return os.path.join(_user_cache(), "edgegru", f"site-packages-{tag}")


def cache_outside_site_packages():
    """Have numba keep the cache of an installed edgegru's kernels in
    :func:`installed_cache_dir` instead of ``site-packages/edgegru/__pycache__`` (see there
    why). A cache locator put in numba's list just after NUMBA_CACHE_DIR's own, for edgegru's
    files only; numba's locator list is not a documented interface (numba/core/caching.py,
    0.58-0.68): should a numba change it, the cache just stays where numba puts it."""
    root = installed_cache_dir()
    if root is None:
        return
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl   # 0.68 / before
        base = caching._CacheLocator
        mixin = caching._SourceFileBackedLocatorMixin
    except (ImportError, AttributeError):
        return
    if any(getattr(c, "edgegru", False) for c in impl._locator_classes):
        return

    class InstalledEdgeGRULocator(mixin, base):
        edgegru = True

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, "numba",
                                            self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != _HERE:
                return None
            return super().from_function(py_func, py_file)

    impl._locator_classes.insert(1, InstalledEdgeGRULocator)


def _is_site_packages(path):
    import sysconfig
    if os.path.basename(path) in ("site-packages", "dist-packages"):
        return True
    paths = sysconfig.get_paths()
    return any(os.path.realpath(path) == os.path.realpath(paths[k])
               for k in ("purelib", "platlib") if k in paths)


def _manifest_name():
    return f"aot-{sys.implementation.cache_tag}-{platform.machine()}.json"


def sources_sha256():
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(_HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def target_cpu():
    """(name, features) numba would compile for in this process: NUMBA_CPU_NAME and
    NUMBA_CPU_FEATURES, else the host's (numba.core.config and codegen, 0.58-0.68)."""
    import llvmlite.binding as ll
    name = os.environ.get("NUMBA_CPU_NAME") or ll.get_host_cpu_name()
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is None:
        features = "" if name.lower() == "generic" else ll.get_host_cpu_features().flatten()
    return name, features


# Asking LLVM for the host CPU means loading llvmlite's shared library: 40-100 MB of resident
# memory and tens of ms, in a process that otherwise needs neither numba nor llvmlite. So the
# manifest also records a fingerprint of the CPU as Linux describes it (the lines below of
# /proc/cpuinfo, all cores), of NUMBA_CPU_NAME/NUMBA_CPU_FEATURES, and of the name and features
# LLVM gave at build time. When a process finds the same fingerprint, it runs on the same kind
# of CPU with the same settings, so LLVM would answer the same and is not asked; otherwise (or
# without /proc/cpuinfo) it is.
_CPUINFO_KEYS = frozenset((
    "vendor_id", "cpu family", "model", "model name", "stepping", "flags",        # x86
    "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision",
    "Features"))                                                                   # ARM


def cpu_fingerprint(name, features):
    """sha256 of this machine's CPU identity, the NUMBA_CPU_* settings and (name, features);
    '' where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    identity = set()
    for line in lines:
        key, colon, value = line.partition(":")
        if colon and key.strip() in _CPUINFO_KEYS:
            identity.add(f"{key.strip()}: {value.strip()}")
    if not identity:
        return ""
    settings = [os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES")]
    text = json.dumps([sorted(identity), settings, name, features])
    return hashlib.sha256(text.encode()).hexdigest()


# -- argument types, compared without numba -------------------------------------------------
# A value's key is what numba.typeof would make of it: arrays by dtype, dimensions, layout
# and writeability; scalars by their numba type (a Python int is int64, a float float64);
# tuples (the scorer's named tuples) by their class name and their items' keys.

def _value_key(a):
    if isinstance(a, tuple):
        return (type(a).__name__, tuple(_value_key(v) for v in a))
    if isinstance(a, np.ndarray):
        f = a.flags
        return (a.dtype.str, a.ndim, "C" if f.c_contiguous else "F" if f.f_contiguous else "A",
                f.writeable)
    if isinstance(a, (bool, np.bool_)):
        return "b"
    if isinstance(a, (np.integer, np.floating)):
        return a.dtype.str
    if isinstance(a, int):
        return "<i8"
    if isinstance(a, float):
        return "<f8"
    return type(a).__name__


def _type_key(t):
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


def _from_json(key):
    """A key read back from the manifest's JSON, its lists tuples again."""
    return tuple(_from_json(k) if isinstance(k, list) else k for k in key)


class Kernel:
    """One kernel of the module, called like the njit function it was compiled from."""

    def __init__(self, name, variants):
        self.__name__ = name.rsplit(".", 1)[1]
        self.qualified_name = name
        self._variants = variants           # {argument key: exported function}

    def entry(self, args):
        """The exported function for arguments of the types of ``args``, unchecked from then
        on (as kernels.entry_point); TypeError when the module has no such signature."""
        key = tuple(_value_key(a) for a in args)
        try:
            return self._variants[key]
        except KeyError:
            raise TypeError(
                f"{self.qualified_name}: the ahead-of-time module has no version for arguments "
                f"{key}; it has {list(self._variants)}. This is a bug in edgegru; EDGEGRU_AOT=0 "
                f"works around it") from None

    def __call__(self, *args):
        return self.entry(args)(*args)


class Module:
    """The loaded extension module: ``kernels`` maps qualified names to :class:`Kernel`;
    ``cpu_features``: the LLVM features of the CPU it was compiled for."""

    def __init__(self, path, kernels, cpu_features):
        self.path = path
        self.kernels = kernels
        self.cpu_features = cpu_features


def load():
    """The module valid for this process, or None (the reason is left in ``status``)."""
    global status
    if os.environ.get("EDGEGRU_AOT", "").strip() == "0":
        status = "turned off (EDGEGRU_AOT=0)"
        return None
    for directory in directories():
        manifest_path = os.path.join(directory, _manifest_name())
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            continue
        status = _stale(manifest)
        if status:
            status = f"{manifest_path}: {status}"
            return None
        path = os.path.join(directory, manifest["module"])
        try:
            spec = importlib.util.spec_from_file_location(
                manifest["module"].split(".")[0], path,
                loader=importlib.machinery.ExtensionFileLoader(
                    manifest["module"].split(".")[0], path))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            kernels = {
                name: Kernel(name, {_from_json(key): getattr(module, export)
                                    for key, export in variants})
                for name, variants in manifest["kernels"].items()}
        except (ImportError, OSError, AttributeError, KeyError, TypeError, ValueError) as e:
            status = f"{path}: cannot be loaded ({e})"
            return None
        status = None
        return Module(path, kernels, manifest["cpu_features"])
    status = "not built (edgegru compile builds it)"
    return None


def _stale(manifest):
    """Why a manifest does not describe code for this process ('' if it does)."""
    try:
        if manifest.get("format") != 1 or set(manifest["kernels"]) != set(ENTRY_POINTS):
            return "made by another edgegru"
        if manifest["sources_sha256"] != sources_sha256():
            return "built from other kernel sources (run edgegru compile again)"
        if manifest["numpy_major"] != int(np.__version__.split(".")[0]):
            return f"built for NumPy {manifest['numpy_major']}.x"
        fingerprint = manifest.get("cpu_fingerprint")
        if not fingerprint or fingerprint != cpu_fingerprint(manifest["cpu_name"],
                                                             manifest["cpu_features"]):
            name, features = target_cpu()
            if (manifest["cpu_name"], manifest["cpu_features"]) != (name, features):
                return (f"built for CPU {manifest['cpu_name']!r}, this process compiles for "
                        f"{name!r} (NUMBA_CPU_NAME must match at build and at run time)")
    except (KeyError, TypeError, AttributeError, ValueError):
        return "unreadable manifest"
    except ImportError:
        return "llvmlite is not importable"
    return ""


# -- building -------------------------------------------------------------------------------

def _forwarder(kernel, n):
    # def forward(a0, ..., an): return kernel(a0, ..., an), so that pycc compiles the kernel
    # as numba compiled it (its own options: fastmath, error_model) and only this shim with
    # pycc's defaults.
    names = ", ".join(f"a{i}" for i in range(n))
    namespace = {"kernel": kernel}
    exec(f"def forward({names}):\n    return kernel({names})\n", namespace)
    return namespace["forward"]


def missing_toolchain():
    """Why the C side of a build cannot run here ('' if it can): the C compiler setuptools
    would use, and Python's headers."""
    import shutil
    import sysconfig
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found; apt install gcc)"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python headers (Python.h; apt install python3-dev)"
    return ""


def build(directory=None):
    """Build the module from the signatures the kernels are compiled for in this process (the
    tiny scoring model of :func:`edgegru.bench.precompile` compiles every one of them; they do
    not depend on a model's sizes). Returns its path; raises RuntimeError saying why not."""
    import importlib
    import shutil
    import tempfile

    from edgegru import _jit, bench     # here, not at the top: _jit imports this module

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from numba.pycc import CC
        from numba.core import codegen
        import setuptools  # noqa: F401  (pycc drives the C compiler through it)
    except ImportError as e:
        raise RuntimeError(f"needs numba's pycc and setuptools ({e}); "
                           "pip install 'edgegru[aot]'") from None
    if not hasattr(codegen.AOTCPUCodegen, "_customize_tm_features"):
        raise RuntimeError("this numba's pycc cannot be given the CPU features")
    missing = missing_toolchain()       # before compiling anything (minutes on a Pi)
    if missing:
        raise RuntimeError(missing)
    bench.precompile()
    name, features = target_cpu()
    kernels = {}
    exports = []
    for qualified in ENTRY_POINTS:
        module_name, func_name = qualified.rsplit(".", 1)
        dispatcher = getattr(importlib.import_module(module_name), func_name)
        if not dispatcher.signatures:
            raise RuntimeError(f"{qualified} has not been compiled in this process")
        variants = []
        for i, sig in enumerate(dispatcher.signatures):
            export = f"{func_name.lstrip('_')}_{i}"
            ret = dispatcher.overloads[sig].signature.return_type
            exports.append((export, ret(*sig), _forwarder(dispatcher, len(sig))))
            variants.append([[_type_key(t) for t in sig], export])
        kernels[qualified] = variants
    sha = sources_sha256()
    token = hashlib.sha256(f"{sha} {name} {features} {sys.version}".encode()).hexdigest()[:16]
    module_name = f"_edgegru_aot_{token}"

    targets = [directory] if directory else directories()
    for target in targets:
        try:
            os.makedirs(target, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".aot-build-", dir=target)
            break
        except OSError as e:
            error = e
    else:
        raise RuntimeError(f"no writable directory among {targets} ({error})")
    try:
        cc = CC(module_name)
        cc.output_dir = tmp
        if _jit.NO_NRT:
            # the kernels keep no reference counts (edgegru._jit.NO_NRT), so neither need the
            # forwarders: without numba's runtime, a call unboxes its arrays without making a
            # meminfo for each, which is a measurable part of a small model's step
            cc.use_nrt = False
        cc.target_cpu = name
        for export, sig, forward in exports:
            cc.export(export, sig)(forward)
        # pycc compiles for the CPU's name alone; give it the exact features the JIT uses, so
        # that the code is the JIT's (and never uses an instruction a VM has masked)
        original = codegen.AOTCPUCodegen._customize_tm_features
        codegen.AOTCPUCodegen._customize_tm_features = lambda self: features
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cc.compile()
        except Exception as e:          # the C compiler or the headers missing, mostly
            raise RuntimeError(f"the C extension could not be built ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}); "
                               "it needs a C compiler and Python's headers (python3-dev)") \
                from None
        finally:
            codegen.AOTCPUCodegen._customize_tm_features = original
        built = os.path.join(tmp, cc.output_file)
        final = os.path.join(target, cc.output_file)
        manifest = {"format": 1, "module": cc.output_file, "sources_sha256": sha,
                    "numpy_major": int(np.__version__.split(".")[0]), "cpu_name": name,
                    "cpu_features": features,
                    "cpu_fingerprint": cpu_fingerprint(name, features),
                    "python": sys.version, "kernels": kernels}
        # replace, never rewrite in place: a running process may have the old file mapped
        os.replace(built, final)
        manifest_tmp = os.path.join(tmp, "manifest.json")
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        old = _previous_module(target)
        os.replace(manifest_tmp, os.path.join(target, _manifest_name()))
        if old and old != cc.output_file:
            try:
                os.remove(os.path.join(target, old))
            except OSError:
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _previous_module(directory):
    try:
        with open(os.path.join(directory, _manifest_name()), encoding="utf-8") as f:
            return os.path.basename(json.load(f)["module"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
