"""ONNX import: ONNX's own GRU node tests, harder random cases against onnxruntime, and graphs
exported by torch.onnx.export (tests/data/formats, made by tools/make_format_fixtures.py)."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgegru  # noqa: E402
from edgegru.formats.onnx import GRUNode  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "formats")
TOL = 1e-5


# -- ONNX's own node tests (onnx/backend/test/case/node/gru.py) -------------------------------
def _onnx_node_cases():
    from onnx.backend.test.case.node import gru as onnx_gru
    cases = []

    def collect(node, inputs, outputs, name, **kwargs):
        cases.append((name, node, inputs, outputs))

    saved, onnx_gru.expect = onnx_gru.expect, collect
    try:
        np.random.seed(0)
        for attr in sorted(dir(onnx_gru.GRU)):
            if attr.startswith("export"):
                getattr(onnx_gru.GRU, attr)()
    finally:
        onnx_gru.expect = saved
    return cases


_NODE_CASES = _onnx_node_cases()


def _run_node(node, inputs):
    """Feed a node's present inputs to (X, W, R, B, sequence_lens, initial_h) in order; run."""
    given = iter(inputs)
    X, W, R, B, lens, h0 = [next(given) if name else None
                            for name in list(node.input) + [""] * (6 - len(node.input))]
    Y, Y_h = GRUNode(node, W, R, B).run(X, lens, h0)
    return {"Y": Y, "Y_h": Y_h}


def _outputs_by_kind(node, outputs):
    kinds = [kind for kind, name in zip(["Y", "Y_h"], node.output) if name]
    return dict(zip(kinds, outputs))


def test_onnx_node_tests_are_all_found():
    names = {name for name, *_ in _NODE_CASES}
    assert {"test_gru_defaults", "test_gru_seq_length", "test_gru_with_initial_bias",
            "test_gru_batchwise"} <= names, names


@pytest.mark.parametrize("name,node,inputs,outputs", _NODE_CASES, ids=[c[0] for c in _NODE_CASES])
def test_onnx_node_test(name, node, inputs, outputs):
    ours = _run_node(node, inputs)
    for kind, want in _outputs_by_kind(node, outputs).items():
        assert ours[kind].shape == want.shape, kind
        assert np.abs(ours[kind] - want).max() <= TOL, kind


# -- harder random cases, expected outputs from onnxruntime (or onnx.reference) --------------
CASES = [  # (I, H, T, B, direction, lbr, layout, initial_h, sequence_lens)
    (3, 5, 7, 2, "forward", 1, 0, True, False),
    (3, 5, 7, 3, "forward", 0, 0, True, True),
    (4, 6, 9, 3, "reverse", 1, 0, True, True),
    (4, 6, 9, 2, "reverse", 0, 0, False, False),
    (2, 8, 6, 3, "bidirectional", 1, 0, True, True),
    (2, 8, 6, 2, "bidirectional", 0, 0, True, False),
    (5, 4, 8, 2, "forward", 1, 1, True, False),
    (5, 4, 8, 2, "bidirectional", 0, 1, True, False),
]


def _random_node_model(I, H, T, B, direction, lbr, layout, with_h0, with_lens, seed):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    W = rng.uniform(-0.7, 0.7, (D, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-0.7, 0.7, (D, 3 * H, H)).astype(np.float32)
    Bias = rng.uniform(-0.5, 0.5, (D, 6 * H)).astype(np.float32)
    X = rng.standard_normal((B, T, I) if layout else (T, B, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (B, D, H) if layout else (D, B, H)).astype(np.float32)
    lens = rng.integers(1, T + 1, B).astype(np.int32)
    lens[0] = T
    inputs = ["X", "W", "R", "B", "sequence_lens" if with_lens else "",
              "initial_h" if with_h0 else ""]
    node = helper.make_node("GRU", inputs, ["Y", "Y_h"], hidden_size=H, direction=direction,
                            linear_before_reset=lbr, layout=layout)
    feeds = {"X": X}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, X.shape)]
    if with_lens:
        feeds["sequence_lens"] = lens
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                          lens.shape))
    if with_h0:
        feeds["initial_h"] = h0
        graph_inputs.append(helper.make_tensor_value_info("initial_h", TensorProto.FLOAT,
                                                          h0.shape))
    graph = helper.make_graph(
        [node], "gru", graph_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
         numpy_helper.from_array(Bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, node, (W, R, Bias), feeds


def _reference(model, feeds):
    """onnxruntime's outputs; onnx.reference where onnxruntime does not run the case."""
    try:
        import onnxruntime as ort
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    except Exception:       # e.g. onnxruntime's CPU GRU has no layout=1
        from onnx.reference import ReferenceEvaluator
        return ReferenceEvaluator(model).run(None, feeds)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_random_gru_node_against_onnxruntime(case):
    model, node, (W, R, Bias), feeds = _random_node_model(*case, seed=sum(case[:4]))
    Y_ref, Y_h_ref = _reference(model, feeds)
    Y, Y_h = GRUNode(node, W, R, Bias).run(feeds["X"], feeds.get("sequence_lens"),
                                           feeds.get("initial_h"))
    assert Y.shape == Y_ref.shape and Y_h.shape == Y_h_ref.shape
    assert np.abs(Y - Y_ref).max() <= TOL
    assert np.abs(Y_h - Y_h_ref).max() <= TOL


# -- whole graphs ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def expected():
    with np.load(os.path.join(DATA, "expected.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("file,key", [("gru2_linear.onnx", "gru2_linear"),     # dynamo=False
                                      ("gru_bidir.onnx", "gru_bidir"),
                                      ("gru2_linear_dynamo.onnx", "gru2_linear"),
                                      ("gru_bidir_dynamo.onnx", "gru_bidir")])
def test_torch_exported_graphs_match_pytorch(file, key, expected):
    model = edgegru.load(os.path.join(DATA, file))
    assert np.abs(model.run(expected[key + ".X"]) - expected[key + ".Y"]).max() <= TOL
    assert model.meta["provenance"]["source"]["format"] == "onnx"


def _graph_model(nodes, initializers, x_shape=("T", "B", 3), outputs=("y",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _gru_weights(D, H, I, seed):
    rng = np.random.default_rng(seed)
    return {"W": rng.uniform(-0.7, 0.7, (D, 3 * H, I)).astype(np.float32),
            "R": rng.uniform(-0.7, 0.7, (D, 3 * H, H)).astype(np.float32),
            "B": rng.uniform(-0.5, 0.5, (D, 6 * H)).astype(np.float32)}


def test_hand_built_graph_reset_before_layout1_bidirectional_sigmoid_head():
    """x (B, T, 3) -> GRU(layout=1, bidirectional, lbr=0) -> Reshape -> Gemm -> Sigmoid."""
    H, O = 4, 2
    init = _gru_weights(2, H, 3, seed=5)
    rng = np.random.default_rng(6)
    init.update({"shape": np.array([0, 0, -1], np.int64),
                 "fc_w": rng.uniform(-1, 1, (2 * H, O)).astype(np.float32),
                 "fc_b": rng.uniform(-1, 1, O).astype(np.float32)})
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", ""], hidden_size=H,
                              direction="bidirectional", layout=1),
             helper.make_node("Reshape", ["Y", "shape"], ["Y2"]),        # (B, T, 2H)
             helper.make_node("MatMul", ["Y2", "fc_w"], ["m"]),
             helper.make_node("Add", ["m", "fc_b"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["y"])]
    model = _graph_model(nodes, init, x_shape=("B", "T", 3))
    X = rng.standard_normal((3, 10, 3)).astype(np.float32)
    (want,) = _reference(model, {"x": X})
    ours = edgegru.load(model.SerializeToString())
    assert ours.config.reset_after is False and ours.config.head_activation == "sigmoid"
    assert np.abs(ours.run(X) - want).max() <= TOL


def test_time_major_graph_input_and_extra_outputs():
    """x (T, B, 3) -> GRU -> Squeeze -> y, with Y_h also a graph output (ignored)."""
    init = _gru_weights(1, 5, 3, seed=8)
    init["axes"] = np.array([1], np.int64)
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=5,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["Y", "axes"], ["y"])]
    model = _graph_model(nodes, init, outputs=("y", "Y_h"))
    X = np.random.default_rng(9).standard_normal((11, 2, 3)).astype(np.float32)
    want, _ = _reference(model, {"x": X})                        # (T, B, H)
    ours = edgegru.load(model.SerializeToString())
    assert ours.meta["provenance"]["source"]["input_axes"] == "TBF"
    assert np.abs(ours.run(X.transpose(1, 0, 2)) - want.transpose(1, 0, 2)).max() <= TOL


@pytest.mark.parametrize("attrs", [
    {"activations": ["HardSigmoid", "Tanh"]},                                   # 0.2, 0.5
    {"activations": ["HardSigmoid", "Tanh"], "activation_alpha": [0.3],
     "activation_beta": [0.4], "linear_before_reset": 1},
    {"activations": ["HardSigmoid", "Tanh"] * 2, "direction": "bidirectional",
     "activation_alpha": [0.25, 0.25]},
], ids=["defaults", "alpha_beta_lbr1", "bidirectional"])
def test_hard_sigmoid_gates_against_onnxruntime(attrs):
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    init = {k: v * 4 for k, v in _gru_weights(D, 5, 3, seed=4).items()}   # gates saturate
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", ""], hidden_size=5, **attrs)
    nodes = [node, helper.make_node("Transpose", ["Y"], ["t"], perm=[2, 0, 1, 3]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    init["shape"] = np.array([0, 0, -1], np.int64)
    model = _graph_model(nodes, init)
    X = np.random.default_rng(3).standard_normal((9, 2, 3)).astype(np.float32)
    want = _reference(model, {"x": X})[0]                                   # (B, T, D*H)
    ours = edgegru.load(model.SerializeToString())
    assert ours.config.gate_activation == "hard_sigmoid"
    assert ours.config.gate_alpha == pytest.approx(attrs.get("activation_alpha", [0.2])[0])
    assert np.abs(ours.run(X.transpose(1, 0, 2)) - want).max() <= TOL


def _refused(nodes, init, match, **kwargs):
    model = _graph_model(nodes, init, **kwargs)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.load(model.SerializeToString())


@pytest.mark.parametrize("attrs,match", [
    ({"clip": 3.0}, "attribute clip is not supported"),
    ({"activations": ["Relu", "Tanh"]}, r"activations \['Relu', 'Tanh'\] are not supported"),
    ({"activations": ["HardSigmoid", "Relu"]}, "are not supported"),
    ({"activations": ["Sigmoid", "Tanh"], "activation_alpha": [0.3]}, "no activation of this"),
    ({"hidden_size": 7}, "hidden_size=7 but R has shape"),
])
def test_unsupported_gru_attributes_are_named(attrs, match):
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["y", ""],
                            **{"hidden_size": 5, **attrs})
    _refused([node], _gru_weights(1, 5, 3, seed=1), match)


def test_forward_and_reverse_nodes_in_one_stack_are_refused():
    init = {**_gru_weights(1, 5, 3, seed=1),
            **{k + "1": v for k, v in _gru_weights(1, 5, 5, seed=2).items()},
            "axis": np.array([1], np.int64)}
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["y0", ""], hidden_size=5),
             helper.make_node("Squeeze", ["y0", "axis"], ["s0"]),
             helper.make_node("GRU", ["s0", "W1", "R1", "B1"], ["y", ""], hidden_size=5,
                              direction="reverse")]
    _refused(nodes, init, "mix reverse and other directions; edgegru stacks forward and "
                          "bidirectional layers, or reverse ones only")


def test_unsupported_ops_and_inputs_are_named():
    init = _gru_weights(1, 5, 3, seed=1)
    gru = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", ""], hidden_size=5)
    _refused([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=5)], init,
             r"node \(unnamed\) \(LSTM\): op LSTM is not supported")
    _refused([gru, helper.make_node("Softsign", ["Y"], ["y"])], init,
             "op Softsign is not supported")
    _refused([gru, helper.make_node("Relu", ["Y"], ["y"])], init,
             "Relu is read only as a head layer's activation, after its MatMul/Gemm")
    h0 = {**init, "h0": np.ones((1, 1, 5), np.float32)}
    _refused([helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", ""],
                               hidden_size=5)], h0, "initial_h is not constant zeros")
    lens = {**init, "lens": np.array([3], np.int32)}
    _refused([helper.make_node("GRU", ["x", "W", "R", "B", "lens"], ["y", ""], hidden_size=5)],
             lens, "sequence_lens is set")


def test_garbage_onnx_is_one_sentence():
    with pytest.raises(edgegru.ModelFormatError, match="not a readable ONNX file"):
        edgegru.load(b"\x08\x07\xff\xff garbage")
