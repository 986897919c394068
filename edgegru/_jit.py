"""Whether the kernels are compiled by Numba, or run on the plain NumPy fallback.

The fallback is for machines without numba wheels (32-bit Raspberry Pi OS) and for
``EDGEGRU_NO_JIT=1``. It gives the same numbers (within 1e-5), only slower.
"""
import os

JIT_DISABLED_BY_USER = os.environ.get("EDGEGRU_NO_JIT", "").strip() not in ("", "0")

try:
    if JIT_DISABLED_BY_USER:
        raise ImportError("EDGEGRU_NO_JIT is set")
    from numba import njit
    JIT = True
except ImportError:
    JIT = False

    def njit(*args, **kwargs):
        """Stand-in for numba.njit: returns the Python function unchanged."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda func: func
