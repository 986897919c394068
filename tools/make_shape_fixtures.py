"""Write tests/data/shapes/: models of the shapes people export (sequence-to-one, heads deeper
than one linear layer, reverse-only ONNX GRUs, layers of different widths, a bidirectional layer
in the middle of a stack), made by the real tools, and what those tools
compute on a seeded input of T=1000 steps (expected.npz), so the tests need none of them.

    pip install torch==2.13.0 onnx onnxruntime onnxscript keras==3.15.1 h5py
    python tools/make_shape_fixtures.py

Keras runs on its PyTorch backend (KERAS_BACKEND=torch), so TensorFlow is not needed. Every
weight comes from torch.manual_seed / np.random.default_rng, so the files are reproducible.
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from make_format_fixtures import write_expected  # noqa: E402  (tools/, the script's folder)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "shapes")
T, B = 1000, 2
expected = {}


def record(name, X, Y):
    """The input (shared by every fixture of the same input size) and the tool's output."""
    X = np.asarray(X, np.float32)
    key = f"X{X.shape[-1]}"
    assert key not in expected or np.array_equal(expected[key], X)
    expected[key] = X
    expected[name] = np.asarray(Y, np.float32)
    print(f"{name:28s} X {str(X.shape):14s} Y {np.shape(Y)}")


def inputs(I):
    return np.random.default_rng(I).standard_normal((B, T, I)).astype(np.float32)


class SimpleGRU(torch.nn.Module):
    """The issue's model: the last step of a 2-layer GRU through a Linear."""
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(10, 20, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(20, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1, :])


class MLPHead(torch.nn.Module):
    """GRU -> Linear -> act -> Linear [-> act ...] on every step, or on the last (last=True)."""
    def __init__(self, input_size, hidden_size, layers, last=False, bidirectional=False):
        super().__init__()
        self.gru = torch.nn.GRU(input_size, hidden_size, batch_first=True,
                                bidirectional=bidirectional)
        self.head = torch.nn.Sequential(*layers)
        self.last = last

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1] if self.last else out)


class Tapered(torch.nn.Module):
    """Two nn.GRU modules of different sizes in sequence (5 -> 16, 2 layers; 16 -> 8), then a
    Linear on every step."""
    def __init__(self):
        super().__init__()
        self.gru1 = torch.nn.GRU(5, 16, num_layers=2, batch_first=True)
        self.gru2 = torch.nn.GRU(16, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.gru1(x)
        out, _ = self.gru2(out)
        return self.fc(out)


class BidirMiddle(torch.nn.Module):
    """A bidirectional GRU between two unidirectional ones (5 -> 8; 8 -> 2 x 6; 12 -> 4), then a
    Linear on every step."""
    def __init__(self):
        super().__init__()
        self.gru1 = torch.nn.GRU(5, 8, batch_first=True)
        self.gru2 = torch.nn.GRU(8, 6, batch_first=True, bidirectional=True)
        self.gru3 = torch.nn.GRU(12, 4, batch_first=True)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.gru3(self.gru2(self.gru1(x)[0])[0])[0])


def export_onnx(model, X, stem):
    """Both exporters: the TorchScript one (dynamo=False) and torch.export's (needs onnxscript),
    batch and time dynamic in both, traced on the first steps only (tracing all T is slow)."""
    x = torch.from_numpy(X[:, :8])
    torch.onnx.export(model, (x,), f"{OUT}/{stem}.onnx", dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "time"}})
    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}}
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"],
                                output_names=["y"], dynamic_shapes=dims)
    program.save(f"{OUT}/{stem}_dynamo.onnx")


def torch_fixtures():
    torch.manual_seed(0)
    X10, X4 = inputs(10), inputs(4)
    m = SimpleGRU().eval()
    with torch.no_grad():
        record("simple_gru", X10, m(torch.from_numpy(X10)))
    torch.save(m.state_dict(), f"{OUT}/simple_gru.pt")
    export_onnx(m, X10, "simple_gru")

    nn = torch.nn
    heads = {
        # GRU -> Linear -> ReLU -> Linear, every step
        "mlp2": MLPHead(4, 12, [nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2)]),
        # three layers, tanh, hard sigmoid (PyTorch: relu6(x + 3) / 6) and sigmoid, last step
        "mlp3_last": MLPHead(4, 12, [nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8),
                                     nn.Hardsigmoid(), nn.Linear(8, 1), nn.Sigmoid()],
                             last=True),
        # bidirectional, its last step (the backward direction's first) through two layers
        "bidir_mlp_last": MLPHead(4, 6, [nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)],
                                  last=True, bidirectional=True),
    }
    for name, model in heads.items():
        model.eval()
        with torch.no_grad():
            for p in model.head.parameters():       # weights big enough that relu cuts
                p.mul_(3.0)
            record(name, X4, model(torch.from_numpy(X4)))
        torch.save(model.state_dict(), f"{OUT}/{name}.pt")
        export_onnx(model, X4, name)

    X5 = inputs(5)
    m = Tapered().eval()
    with torch.no_grad():
        record("tapered", X5, m(torch.from_numpy(X5)))
    torch.save(m.state_dict(), f"{OUT}/tapered.pt")
    export_onnx(m, X5, "tapered")

    m = BidirMiddle().eval()
    with torch.no_grad():
        record("bidir_middle", X5, m(torch.from_numpy(X5)))
    torch.save(m.state_dict(), f"{OUT}/bidir_middle.pt")
    export_onnx(m, X5, "bidir_middle")


def keras_fixtures():
    import keras
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    X5 = inputs(5)

    def bias_noise(model):  # Keras initialises biases to zero: make them matter
        for layer in model.layers:
            for w in layer.weights:
                if "bias" in w.path:
                    w.assign(rng.uniform(-0.5, 0.5, w.shape).astype(np.float32))

    # the model: GRU(32, return_sequences=True) + Dense(1, sigmoid), .keras and .h5
    m = keras.Sequential([keras.Input((None, 5)), keras.layers.GRU(32, return_sequences=True),
                          keras.layers.Dense(1, activation="sigmoid")])
    bias_noise(m)
    m.save(f"{OUT}/keras_gru32_sigmoid.keras")
    m.save(f"{OUT}/keras_gru32_sigmoid.h5")
    record("keras_gru32_sigmoid", X5, m.predict(X5, verbose=0))

    # sequence-to-one with a deeper head: GRU(16) (return_sequences=False), Dense(32, relu),
    # Dense(8, tanh), Dense(1)
    m = keras.Sequential([keras.Input((None, 5)), keras.layers.GRU(16),
                          keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    bias_noise(m)
    m.save(f"{OUT}/keras_last_mlp.keras")
    m.save(f"{OUT}/keras_last_mlp.h5")
    record("keras_last_mlp", X5, m.predict(X5, verbose=0))

    # a tapering stack, the issue's: GRU(16, return_sequences=True), GRU(8), Dense(1); and three
    # layers, 12 -> 8 -> 4, every step
    m = keras.Sequential([keras.Input((None, 5)), keras.layers.GRU(16, return_sequences=True),
                          keras.layers.GRU(8), keras.layers.Dense(1)])
    bias_noise(m)
    m.save(f"{OUT}/keras_tapered_last.keras")
    record("keras_tapered_last", X5, m.predict(X5, verbose=0))
    m = keras.Sequential([keras.Input((None, 5)),
                          keras.layers.GRU(12, return_sequences=True, reset_after=False),
                          keras.layers.GRU(8, return_sequences=True, reset_after=False),
                          keras.layers.GRU(4, return_sequences=True, reset_after=False),
                          keras.layers.Dense(2)])
    bias_noise(m)
    m.save(f"{OUT}/keras_tapered3.keras")
    record("keras_tapered3", X5, m.predict(X5, verbose=0))

    # every step, Dense(6, hard_sigmoid) (Keras 3: relu6(x + 3) / 6) then Dense(2)
    m = keras.Sequential([keras.Input((None, 5)), keras.layers.GRU(8, return_sequences=True),
                          keras.layers.Dense(6, activation="hard_sigmoid"),
                          keras.layers.Dense(2)])
    bias_noise(m)
    m.save(f"{OUT}/keras_hard_sigmoid_head.keras")
    record("keras_hard_sigmoid_head", X5, m.predict(X5, verbose=0))

    # a Bidirectional GRU between two GRUs, the last step (last here: the fixtures above keep
    # their seeds): GRU(8), Bidirectional(GRU(6)), GRU(4), Dense(1)
    m = keras.Sequential([keras.Input((None, 5)), keras.layers.GRU(8, return_sequences=True),
                          keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True)),
                          keras.layers.GRU(4), keras.layers.Dense(1)])
    bias_noise(m)
    m.save(f"{OUT}/keras_bidir_middle.keras")
    record("keras_bidir_middle", X5, m.predict(X5, verbose=0))


def onnx_fixtures():
    """Reverse-only GRUs, which PyTorch and Keras do not export: graphs written with
    onnx.helper, their outputs from onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    X4 = inputs(4)
    H = 6

    def gru(i, I):
        return {f"W{i}": rng.uniform(-0.7, 0.7, (1, 3 * H, I)).astype(np.float32),
                f"R{i}": rng.uniform(-0.7, 0.7, (1, 3 * H, H)).astype(np.float32),
                f"B{i}": rng.uniform(-0.5, 0.5, (1, 6 * H)).astype(np.float32)}

    def save(nodes, init, inputs_, stem):
        graph = helper.make_graph(
            nodes, stem, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs_],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output
             if o],
            [numpy_helper.from_array(v, k) for k, v in init.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        with open(f"{OUT}/{stem}.onnx", "wb") as f:
            f.write(model.SerializeToString())
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    # x (T, B, 4) -> GRU reverse -> Squeeze -> GRU reverse -> Squeeze -> MatMul + Add: (T, B, 2)
    init = {**gru(0, 4), **gru(1, H), "axis": np.array([1], np.int64),
            "fc_w": rng.uniform(-1, 1, (H, 2)).astype(np.float32),
            "fc_b": rng.uniform(-1, 1, 2).astype(np.float32)}
    nodes = [helper.make_node("GRU", ["x", "W0", "R0", "B0"], ["y0", ""], hidden_size=H,
                              direction="reverse", linear_before_reset=1),
             helper.make_node("Squeeze", ["y0", "axis"], ["s0"]),
             helper.make_node("GRU", ["s0", "W1", "R1", "B1"], ["y1", ""], hidden_size=H,
                              direction="reverse", linear_before_reset=1),
             helper.make_node("Squeeze", ["y1", "axis"], ["s1"]),
             helper.make_node("MatMul", ["s1", "fc_w"], ["m"]),
             helper.make_node("Add", ["m", "fc_b"], ["y"])]
    sess = save(nodes, init, [("x", TensorProto.FLOAT, ["T", "B", 4])], "reverse_stack")
    Y = sess.run(None, {"x": X4.transpose(1, 0, 2)})[0]
    record("reverse_stack", X4, Y.transpose(1, 0, 2))

    # one reverse node (reset-before) with its run-time inputs: sequence_lens and initial_h
    init = gru(2, 4)
    node = helper.make_node("GRU", ["x", "W2", "R2", "B2", "lens", "h0"], ["Y", "Y_h"],
                            hidden_size=H, direction="reverse")
    sess = save([node], init, [("x", TensorProto.FLOAT, ["T", "B", 4]),
                               ("lens", TensorProto.INT32, ["B"]),
                               ("h0", TensorProto.FLOAT, [1, "B", H])], "reverse_node")
    lens = np.array([T, 613], np.int32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    Y, Y_h = sess.run(None, {"x": X4.transpose(1, 0, 2), "lens": lens, "h0": h0})
    expected.update({"reverse_node.lens": lens, "reverse_node.h0": h0,
                     "reverse_node.Y_h": Y_h})
    record("reverse_node", X4, Y)                      # (T, 1, B, H), as the node gives it


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    torch_fixtures()
    keras_fixtures()
    onnx_fixtures()
    write_expected(OUT, expected)


if __name__ == "__main__":
    sys.exit(main())
