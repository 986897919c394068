"""Hostile model files that ask for far more memory than they hold (no code runs, but a 2-4 GB
Raspberry Pi would die): a .pt of 400 stride-0 tensors over a one-element storage (25 KB asking
for 1.6 GB), an .onnx with an Expand to 16384x16384 (124 bytes asking for 1 GiB), ONNX external
data, zip bombs in an edgegru .npz and a .keras. Each is refused with one line and exit 1 by `edgegru info` in a process whose address
space is capped (resource.setrlimit), so an allocation before the check fails the test."""
import collections
import io
import os
import pickle
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1 << 30                  # address space of the child: less than either file asks for

# Writes a torch-style zip without torch: stand-ins named like torch's rebuild function and
# storage class, pickled as torch.save does (in a child process, so that the stand-in "torch"
# modules never meet the test session).
STRIDE0_PT = '''
import collections, io, pickle, sys, types, zipfile
torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
def _rebuild_tensor_v2(*args): pass
_rebuild_tensor_v2.__module__ = "torch._utils"
class FloatStorage: pass
FloatStorage.__module__ = "torch"
torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = FloatStorage, _rebuild_tensor_v2, utils
sys.modules.update({"torch": torch, "torch._utils": utils})
STORAGE = object()
class Tensor:
    def __reduce__(self):           # a (1024, 1024) view with strides (0, 0) of one float
        return _rebuild_tensor_v2, (STORAGE, 0, (1024, 1024), (0, 0), False,
                                    collections.OrderedDict())
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", FloatStorage, "0", "cpu", 1) if obj is STORAGE else None
buf = io.BytesIO()
Pickler(buf, protocol=2).dump(collections.OrderedDict((f"w{i}", Tensor()) for i in range(400)))
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/data/0", bytes(4))
'''


def info_under_a_memory_limit(path, **env):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    # without numba (its LLVM reserves much address space): loading needs no kernel
    env = dict(os.environ, EDGEGRU_NO_JIT="1", OPENBLAS_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-c", "from edgegru.cli import main; main()", "info",
                           str(path)], cwd=ROOT, capture_output=True, text=True, env=env,
                          preexec_fn=limit, timeout=120)


def refused(proc, *words):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_a_pt_of_stride_0_views_is_refused_before_it_allocates(tmp_path):
    path = tmp_path / "stride0.pt"
    subprocess.run([sys.executable, "-c", STRIDE0_PT, str(path)], check=True)
    assert path.stat().st_size < 30_000
    refused(info_under_a_memory_limit(path), "a tensor of size (1024, 1024)", "MiB",
            "EDGEGRU_MAX_MODEL_BYTES")


def onnx_file(path, nodes, initializers, outputs):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializers)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_an_onnx_expand_to_a_gigabyte_is_refused_before_it_allocates(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    path = onnx_file(tmp_path / "expand.onnx",
                     [helper.make_node("Expand", ["one", "shape"], ["big"])],
                     [numpy_helper.from_array(np.ones(1, np.float32), "one"),
                      numpy_helper.from_array(np.array([16384, 16384], np.int64), "shape")],
                     ["big"])
    assert path.stat().st_size < 2000
    refused(info_under_a_memory_limit(path), "Expand to (16384, 16384)", "1024.0 MiB")
    # the cap, lowered by the environment, applies to what a small file may take
    small = onnx_file(tmp_path / "small.onnx",
                      [helper.make_node("Expand", ["one", "shape"], ["big"])],
                      [numpy_helper.from_array(np.ones(1, np.float32), "one"),
                       numpy_helper.from_array(np.array([1024, 1024], np.int64), "shape")],
                      ["big"])
    refused(info_under_a_memory_limit(small, EDGEGRU_MAX_MODEL_BYTES="1000000"),
            "EDGEGRU_MAX_MODEL_BYTES=1000000")


def test_onnx_constant_of_shape_and_external_data_are_bounded(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    # twenty 16 MB ConstantOfShape: each plausible, together over the allowance of a tiny file
    nodes = [helper.make_node("ConstantOfShape", ["shape"], [f"c{i}"]) for i in range(20)]
    path = onnx_file(tmp_path / "fill.onnx", nodes,
                     [numpy_helper.from_array(np.array([2048, 2048], np.int64), "shape")],
                     ["c0"])
    refused(info_under_a_memory_limit(path), "ConstantOfShape (2048, 2048)")
    # an initializer whose data lives in another file (here /dev/zero, endless)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 28],
                         data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="/dev/zero")
    path = onnx_file(tmp_path / "external.onnx", [helper.make_node("Identity", ["w"], ["y"])],
                     [tensor], ["y"])
    refused(info_under_a_memory_limit(path), "external data")


def test_compressed_entries_that_declare_too_much_are_refused(tmp_path):
    """A zip bomb in the formats that compress: an edgegru .npz whose entry inflates to 800 MB,
    and a .keras whose weights entry claims as much."""
    import edgegru
    from conftest import make_model
    path = tmp_path / "bomb.npz"
    edgegru.save(make_model(input_size=2, hidden_size=3, output_size=1), path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("extra.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (200 << 20,)})
            zeros = bytes(1 << 20)
            for _ in range(800):
                f.write(zeros)
    assert path.stat().st_size < 2 << 20
    refused(info_under_a_memory_limit(path), "array extra of shape (209715200,)", "MiB")
    pytest.importorskip("h5py")
    keras = tmp_path / "bomb.keras"
    with zipfile.ZipFile(keras, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        with z.open("model.weights.h5", "w", force_zip64=True) as f:
            for _ in range(800):
                f.write(zeros)
    refused(info_under_a_memory_limit(keras), "entry model.weights.h5", "MiB")
