"""Every use of numba's private or deprecated interfaces, in one place, each with a way out.

edgegru leans on a few numba internals (checked against numba 0.58-0.68; pyproject.toml bounds
numba below the next minor release for that reason):

- the ``_nrt`` compile option, to compile kernels without reference counting
  (:func:`no_nrt_options`);
- the cache locator list of ``numba.core.caching``, to keep an installed edgegru's cache out of
  site-packages (:func:`cache_outside_site_packages`), and a dispatcher's cache paths
  (:func:`cache_index_path`, :func:`cache_dir`);
- ``numba.pycc``, deprecated upstream, with its warnings silenced, its undocumented ``use_nrt``
  and a private codegen method replaced while it compiles, to build the ahead-of-time module
  for the exact CPU features the JIT uses (:func:`import_pycc`, :func:`build_extension`), and
  its compile flags made to release the GIL as the JIT's nogil kernels do;
- a dispatcher's ``overloads`` (the return type of a compiled signature) and the lowering
  context's ``make_array`` (kernels.py's intrinsics).

Each function degrades to what numba does by itself when an internal has gone: the kernels keep
their reference counting, the cache stays where numba puts it, ``edgegru compile`` fills numba's
cache only and says why. :func:`missing` lists what this numba lacks; tests/test_numba_private.py
fails, naming it, when a numba release changes one. Nothing here is imported unless numba is.
"""
import contextlib
import os
import warnings


def no_nrt_options():
    """The njit options that compile a kernel without numba's reference counting ({} when this
    numba has no such option: the kernels then just keep it).

    Kernels allocate nothing, so they need none of it: without it, each array view a kernel
    makes or passes on is not incref'd and decref'd with an atomic instruction, and a call from
    Python does not wrap every array argument in a new meminfo."""
    from numba.core.cpu import CPUTargetOptions
    return {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def _caching():
    """numba.core.caching's (CacheImpl, _CacheLocator, _SourceFileBackedLocatorMixin), or None."""
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl   # 0.68 / before
        return impl, caching._CacheLocator, caching._SourceFileBackedLocatorMixin
    except (ImportError, AttributeError):
        return None


def cache_outside_site_packages(root, package_dir):
    """Have numba keep the cache of the kernels defined in ``package_dir`` under ``root/numba``
    instead of ``package_dir/__pycache__`` (see :func:`edgegru.aot.installed_cache_dir` why): a
    cache locator put in numba's list just after NUMBA_CACHE_DIR's own. Should a numba change
    that list, the cache just stays where numba puts it."""
    found = _caching()
    if found is None:
        return
    impl, base, mixin = found
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
            if os.path.dirname(os.path.abspath(py_file)) != package_dir:
                return None
            return super().from_function(py_func, py_file)

    impl._locator_classes.insert(1, InstalledEdgeGRULocator)


def cache_index_path(dispatcher):
    """The index file of ``dispatcher``'s cache entries, or None in a numba of another layout."""
    try:
        return dispatcher._cache._cache_file._index_path
    except AttributeError:
        return None


def cache_dir(dispatcher):
    """The directory of ``dispatcher``'s cache, or None in a numba of another layout."""
    try:
        return dispatcher._cache._cache_path
    except AttributeError:
        return None


def return_type(dispatcher, signature):
    """The return type numba inferred for a signature ``dispatcher`` has compiled."""
    return dispatcher.overloads[signature].signature.return_type


def import_pycc():
    """numba's (deprecated) ``pycc.CC``; ImportError where this numba has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # pycc's deprecation warning, on import
        from numba.pycc import CC
    return CC


def pycc_takes_cpu_features():
    """Whether pycc can be made to compile for given CPU features (:func:`_cpu_features`)."""
    from numba.core import codegen
    return hasattr(getattr(codegen, "AOTCPUCodegen", None), "_customize_tm_features")


@contextlib.contextmanager
def _cpu_features(features):
    """While inside, pycc compiles for exactly ``features`` (LLVM's, as the JIT uses them):
    by itself it compiles for the CPU's name alone, which can differ from the JIT's code (and
    use an instruction a VM has masked)."""
    from numba.core import codegen
    original = codegen.AOTCPUCodegen._customize_tm_features
    codegen.AOTCPUCodegen._customize_tm_features = lambda self: features
    try:
        yield
    finally:
        codegen.AOTCPUCodegen._customize_tm_features = original


def build_extension(module_name, output_dir, exports, cpu_name, features, use_nrt):
    """Compile ``exports`` [(name, signature, function)] with pycc into the extension module
    ``module_name`` in ``output_dir``, for ``cpu_name`` with ``features``; returns the file's
    name. Exceptions are pycc's (the C compiler or Python's headers missing, mostly)."""
    CC = import_pycc()
    cc = CC(module_name)
    cc.output_dir = output_dir
    cc.use_nrt = use_nrt
    cc.target_cpu = cpu_name
    for name, signature, function in exports:
        cc.export(name, signature)(function)
    with _cpu_features(features), _releasing_gil(), warnings.catch_warnings():
        warnings.simplefilter("ignore")       # pycc's deprecation warnings, while compiling
        cc.compile()
    return cc.output_file


@contextlib.contextmanager
def _releasing_gil():
    """While inside, pycc's exported functions release the GIL while they run, as the JIT's
    nogil kernels do (pycc has no option for it: its compile flags are made in a method from
    ``numba.pycc.compiler.Flags``). Where a numba lacks that name, they just keep the GIL."""
    from numba.pycc import compiler
    original = getattr(compiler, "Flags", None)
    if original is None:
        yield
        return

    class Flags(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True
    compiler.Flags = Flags
    try:
        yield
    finally:
        compiler.Flags = original


def missing():
    """The internals above that this numba lacks, as [what], for the test to name."""
    gone = []
    try:
        from numba.core.cpu import CPUTargetOptions
        if not hasattr(CPUTargetOptions, "_nrt"):
            gone.append("numba.core.cpu.CPUTargetOptions._nrt (the no-reference-count option)")
    except ImportError as e:
        gone.append(f"numba.core.cpu.CPUTargetOptions ({e})")
    found = _caching()
    if found is None or not isinstance(getattr(found[0], "_locator_classes", None), list):
        gone.append("numba.core.caching: CacheImpl._locator_classes, _CacheLocator, "
                    "_SourceFileBackedLocatorMixin (the cache locators)")
    try:
        import_pycc()
    except ImportError as e:
        gone.append(f"numba.pycc.CC ({e})")
    if not pycc_takes_cpu_features():
        gone.append("numba.core.codegen.AOTCPUCodegen._customize_tm_features (pycc's CPU "
                    "features)")
    try:
        from numba.pycc import compiler
        if not hasattr(compiler.Flags(), "release_gil"):
            gone.append("numba.pycc.compiler.Flags.release_gil (the module releasing the GIL)")
    except (ImportError, AttributeError) as e:
        gone.append(f"numba.pycc.compiler.Flags ({e})")
    try:
        from numba.core.base import BaseContext
        if not hasattr(BaseContext, "make_array"):
            gone.append("numba.core.base.BaseContext.make_array (kernels.py's intrinsics)")
    except ImportError as e:
        gone.append(f"numba.core.base.BaseContext ({e})")
    return gone
