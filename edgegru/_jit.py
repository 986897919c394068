"""How the kernels run in this process: ``BACKEND`` is one of

- ``"aot"``: from the ahead-of-time module ``edgegru compile`` built (:mod:`edgegru.aot`); numba
  is not imported at all, which saves ~0.5 s before the first score;
- ``"numba"``: compiled by Numba (or loaded from its cache);
- ``"numpy"``: the plain NumPy fallback, for machines without numba wheels (32-bit Raspberry
  Pi OS) and for ``EDGEGRU_NO_JIT=1``. It gives the same numbers (within 1e-5), only slower.

``JIT`` is true for the first two: the kernels are machine code. Under "aot", ``njit`` hands
back the module's version of each kernel Python calls and leaves the rest as plain functions
(never called: they live inside the compiled ones).
"""
import os

from edgegru import aot as _aot

JIT_DISABLED_BY_USER = os.environ.get("EDGEGRU_NO_JIT", "").strip() not in ("", "0")
NO_NRT = {}                 # njit options of kernels that allocate nothing (below)
AOT = None if JIT_DISABLED_BY_USER else _aot.load()


def _stand_in(decorate):
    """A stand-in for numba.njit that applies ``decorate`` to the function, used bare
    (``@njit``) or with options (``@njit(cache=True)``, options ignored)."""
    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return decorate(args[0])
        return decorate
    return njit


if AOT is not None:
    JIT = True
    BACKEND = "aot"
    # the ahead-of-time kernel where the module has one
    njit = _stand_in(lambda func: AOT.kernels.get(f"{func.__module__}.{func.__qualname__}",
                                                  func))
else:
    try:
        if JIT_DISABLED_BY_USER:
            raise ImportError("EDGEGRU_NO_JIT is set")
        from numba import njit
        JIT = True
        BACKEND = "numba"
        from edgegru import _numba_private
        # Kernels allocate nothing, so they need none of numba's reference counting (see
        # _numba_private.no_nrt_options; {} where a numba lacks the option)
        NO_NRT = _numba_private.no_nrt_options()
        if _aot.installed_cache_dir() is not None:
            _numba_private.cache_outside_site_packages(_aot.installed_cache_dir(), _aot.HERE)
    except ImportError:
        JIT = False
        BACKEND = "numpy"
        njit = _stand_in(lambda func: func)     # the Python function unchanged
