"""edgegru: exact, allocation-free GRU inference on small CPUs, with Numba.

Where things are:

- :mod:`edgegru.model`     ``Model`` (step / run / state), ``GRUConfig`` (sizes), ``GRUWeights``
- :mod:`edgegru.kernels`   the ``@njit`` kernels: one fused GRU cell shared by step and sequence
- :mod:`edgegru.numpy_kernels`  the same kernels in NumPy, used where Numba is not available
- :mod:`edgegru.aot`       the same kernels compiled ahead of time: a new process that finds
                          them starts without importing numba (:mod:`edgegru.build` builds
                          them: ``edgegru compile``)
- :mod:`edgegru.formats`   model files: native ``.npz`` (``load``, ``save``), PyTorch
                          ``.pt``, safetensors, ONNX, Keras, textbook arrays (``from_arrays``)
- :mod:`edgegru.scoring`   ``AnomalyScorer``: anomaly scores from a GRU forecaster, row by row;
                          ``GroupScorer``: one stream per device key, batched
- :mod:`edgegru.stream`    ``score_stream``: CSV rows in, one scored row out per row (``edgegru run``);
                          :mod:`edgegru.csvio` what a row means (layout, parsers, writer)
- :mod:`edgegru.mqtt`      ``serve``: MQTT readings in, one result per reading published back
                          (``edgegru mqtt``; ``pip install 'edgegru[mqtt]'``)
- :mod:`edgegru.plot`      ``plot_csv``: a sensor file with its scores as a picture
                          (``edgegru plot``; ``pip install 'edgegru[plot]'``)
- :mod:`edgegru.npzfile`   the ``.npz`` files written atomically; the state files' header
- :mod:`edgegru.calibrate` the scoring parameters (threshold, whitening, ...) fitted with NumPy;
                          ``recalibrate``: a trained network fitted to another machine
                          (``edgegru calibrate``)
- :mod:`edgegru.train`     ``train_model``: fit a forecaster with PyTorch, calibrate, save
                          (``edgegru train``; ``pip install 'edgegru[train]'``)
- :mod:`edgegru.errors`    ``ModelFormatError``, ``TrainingError`` and friends

>>> import numpy as np, edgegru
>>> cfg = edgegru.GRUConfig(input_size=3, hidden_size=8, output_size=1)
>>> model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
>>> y = model.step(np.ones(3))          # one time step, stateful
>>> Y = model.run(np.ones((5, 3)))      # a sequence, continuing from the state
>>> Y.shape
(5, 1)
"""
from edgegru._jit import JIT
from edgegru.errors import EdgeGRUError, ModelFormatError
from edgegru.formats import load, save
from edgegru.formats.arrays import from_arrays
from edgegru.formats.pytorch import from_state_dict
from edgegru.model import GRUConfig, GRUWeights, Model
from edgegru.scoring import AnomalyScorer

__version__ = "0.1.0"

__all__ = ["Model", "AnomalyScorer", "GRUConfig", "GRUWeights", "from_state_dict", "from_arrays",
           "load", "save", "EdgeGRUError",
           "ModelFormatError", "JIT", "__version__"]
