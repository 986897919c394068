import numpy as np
import pytest

import edgegru

# The kernels run both ways: compiled by numba, and on the plain NumPy fallback.
BACKENDS = ["numba", "numpy"] if edgegru.JIT else ["numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def make_model(backend="numba" if edgegru.JIT else "numpy", seed=0, **sizes):
    config = edgegru.GRUConfig(**sizes)
    return edgegru.Model(config, edgegru.GRUWeights.random(config, seed=seed), backend=backend)


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
