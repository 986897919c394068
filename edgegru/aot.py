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

This module only finds and loads it, and imports nothing of edgegru: :mod:`edgegru.build`
builds it (``edgegru compile``), which needs what any C extension needs: a C compiler, Python's
headers (``python3-dev`` on Debian and Raspberry Pi OS), setuptools (``pip install
'edgegru[aot]'``) and numba's pycc. Without them ``edgegru compile`` fills numba's cache only and
says why.

A module goes stale when the code compiled into it changes, not when a message elsewhere in the
same file does: :func:`compiled_digest` keeps, of each file of :data:`COMPILED_SOURCES`, only
what compiled code is made of (see there), and the files of :data:`BUILD_SOURCES` count whole.

Where: ``$NUMBA_CACHE_DIR/edgegru-aot`` when NUMBA_CACHE_DIR is set; else, for an edgegru
installed into site-packages, :func:`installed_cache_dir` (where numba's cache goes too); else
(a source tree) the package's ``__pycache__``, else ``$XDG_CACHE_HOME/edgegru`` (``~/.cache``).

The exported functions check nothing: handed an array of another dtype they would read or write
out of bounds. :class:`Kernel` therefore checks the argument types against the exported
signatures (a ``TypeError`` otherwise), and only :meth:`Kernel.entry`, for buffers already
checked (the step path), hands out the bare function.
"""
import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys

import numpy as np

# The kernels called from Python (everything else is compiled into them).
ENTRY_POINTS = ("edgegru.kernels.gru_step_strided",
                "edgegru.kernels.gru_sequences",
                "edgegru.kernels.head_step", "edgegru.kernels.head_rows",
                "edgegru.scoring._score_rows", "edgegru.scoring._score_rows_batch",
                "edgegru.scoring._score_one_row",
                "edgegru.csvio._parse_lines")
# The files holding compiled code: a change to what compiled code is made of (compiled_digest)
# makes a built module stale. tests/test_aot_sources.py checks every @njit module is here.
COMPILED_SOURCES = ("kernels.py", "scoring.py", "csvio.py")
# The files that decide how it is compiled and loaded: any change to them makes it stale.
BUILD_SOURCES = ("_jit.py", "_numba_private.py", "aot.py", "build.py")
SOURCES = COMPILED_SOURCES + BUILD_SOURCES
HERE = os.path.dirname(os.path.abspath(__file__))

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
    return [os.path.join(HERE, "__pycache__"), os.path.join(_user_cache(), "edgegru")]


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
    parent = os.path.dirname(HERE)
    if not _is_site_packages(parent):
        return None
    tag = hashlib.sha1(parent.encode()).hexdigest()[:12]
    return os.path.join(_user_cache(), "edgegru", f"site-packages-{tag}")


def _is_site_packages(path):
    import sysconfig
    if os.path.basename(path) in ("site-packages", "dist-packages"):
        return True
    paths = sysconfig.get_paths()
    return any(os.path.realpath(path) == os.path.realpath(paths[k])
               for k in ("purelib", "platlib") if k in paths)


def manifest_name():
    return f"aot-{sys.implementation.cache_tag}-{platform.machine()}.json"


def _read(name):
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def sources_sha256():
    """sha256 of the files of SOURCES, whole: when it matches, nothing needs parsing."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + _read(name) + b"\0")
    return h.hexdigest()


def compiled_sha256():
    """sha256 of what compiled code is made of: :func:`compiled_digest` of each of
    COMPILED_SOURCES, and BUILD_SOURCES whole."""
    h = hashlib.sha256()
    for name in SOURCES:
        text = _read(name)
        h.update(name.encode() + b"\0" + (compiled_digest(text).encode()
                                          if name in COMPILED_SOURCES else text) + b"\0")
    return h.hexdigest()


# Names whose mention makes a top-level function compiled code (numba's decorators, and
# kernels.py's _jitable that stands for register_jitable).
_JIT_NAMES = frozenset(("njit", "jit", "intrinsic", "overload", "register_jitable", "_jitable",
                        "generated_jit", "vectorize", "guvectorize", "cfunc"))


def compiled_digest(source):
    """A digest of the parts of a module's source (bytes or str) that its compiled code is made
    of, comments and layout left out (the syntax tree): every top-level statement other than a
    function or class (imports, constants, ``if BACKEND == ...`` blocks), every top-level
    function or class that mentions a JIT decorator, and every one these name (a helper that
    builds a constant, a function a kernel calls). The module docstring and the functions and
    classes nothing compiled names (the Python wrappers, their messages) are left out."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    defs = {node.name: node for node in body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    chosen = {name for name, node in defs.items() if _names(node) & _JIT_NAMES}
    frontier = [node for node in body if node not in defs.values()]
    frontier += [defs[name] for name in chosen]
    while frontier:
        for name in _names(frontier.pop()) & (defs.keys() - chosen):
            chosen.add(name)
            frontier.append(defs[name])
    kept = [node for node in body if getattr(node, "name", None) in chosen
            or node not in defs.values()]
    return hashlib.sha256("\n".join(map(ast.dump, kept)).encode()).hexdigest()


def _names(node):
    """The identifiers ``node`` mentions: names, and the last part of attributes."""
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
            if isinstance(n, (ast.Name, ast.Attribute))}


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
        manifest_path = os.path.join(directory, manifest_name())
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
        if manifest["sources_sha256"] != sources_sha256() and \
                manifest.get("compiled_sha256") != compiled_sha256():
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
