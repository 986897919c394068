"""The model shapes people export (tools/make_shape_fixtures.py wrote the files and what PyTorch,
onnxruntime and Keras 3 compute on T=1000 steps): sequence-to-one, heads deeper than one linear
layer, reverse-only ONNX GRUs, layers of different widths, each file against its framework
within 1e-5, and step() against run() bitwise."""
import os

import numpy as np
import pytest

import edgegru
from test_heads import check_step_equals_run

DATA = os.path.join(os.path.dirname(__file__), "data", "shapes")
TOL = 1e-5
SIMPLE = {"head_on": "last"}
MLP2 = {"head": ["head.0", "relu", "head.2"]}
MLP3 = {"head": ["head.0", "tanh", "head.2", "hardsigmoid", "head.4", "sigmoid"],
        "head_on": "last"}
BIDIR = {"head": ["head.0", "relu", "head.2"], "head_on": "last"}
# file: (expected key, load() arguments, head_on, head layers (units, activation))
FILES = {
    "simple_gru.pt": ("simple_gru", SIMPLE, "last", [(1, "linear")]),
    "simple_gru.onnx": ("simple_gru", {}, "last", [(1, "linear")]),
    "simple_gru_dynamo.onnx": ("simple_gru", {}, "last", [(1, "linear")]),
    "mlp2.pt": ("mlp2", MLP2, "all", [(8, "relu"), (2, "linear")]),
    "mlp2.onnx": ("mlp2", {}, "all", [(8, "relu"), (2, "linear")]),
    "mlp2_dynamo.onnx": ("mlp2", {}, "all", [(8, "relu"), (2, "linear")]),
    "mlp3_last.pt": ("mlp3_last", MLP3, "last",
                     [(16, "tanh"), (8, "hard_sigmoid"), (1, "sigmoid")]),
    "mlp3_last.onnx": ("mlp3_last", {}, "last",
                       [(16, "tanh"), (8, "hard_sigmoid"), (1, "sigmoid")]),
    "mlp3_last_dynamo.onnx": ("mlp3_last", {}, "last",
                              [(16, "tanh"), (8, "hard_sigmoid"), (1, "sigmoid")]),
    "bidir_mlp_last.pt": ("bidir_mlp_last", BIDIR, "last", [(5, "relu"), (3, "linear")]),
    "bidir_mlp_last.onnx": ("bidir_mlp_last", {}, "last", [(5, "relu"), (3, "linear")]),
    "bidir_mlp_last_dynamo.onnx": ("bidir_mlp_last", {}, "last", [(5, "relu"), (3, "linear")]),
    "keras_gru32_sigmoid.keras": ("keras_gru32_sigmoid", {}, "all", [(1, "sigmoid")]),
    "keras_gru32_sigmoid.h5": ("keras_gru32_sigmoid", {}, "all", [(1, "sigmoid")]),
    "keras_last_mlp.keras": ("keras_last_mlp", {}, "last",
                             [(32, "relu"), (8, "tanh"), (1, "linear")]),
    "keras_last_mlp.h5": ("keras_last_mlp", {}, "last",
                          [(32, "relu"), (8, "tanh"), (1, "linear")]),
    "keras_hard_sigmoid_head.keras": ("keras_hard_sigmoid_head", {}, "all",
                                      [(6, "hard_sigmoid"), (2, "linear")]),
    "reverse_stack.onnx": ("reverse_stack", {}, "all", [(2, "linear")]),
    "tapered.pt": ("tapered", {}, "all", [(2, "linear")]),
    "tapered.onnx": ("tapered", {}, "all", [(2, "linear")]),
    "tapered_dynamo.onnx": ("tapered", {}, "all", [(2, "linear")]),
    "keras_tapered_last.keras": ("keras_tapered_last", {}, "last", [(1, "linear")]),
    "keras_tapered3.keras": ("keras_tapered3", {}, "all", [(2, "linear")]),
    "bidir_middle.pt": ("bidir_middle", {}, "all", [(2, "linear")]),
    "bidir_middle.onnx": ("bidir_middle", {}, "all", [(2, "linear")]),
    "bidir_middle_dynamo.onnx": ("bidir_middle", {}, "all", [(2, "linear")]),
    "keras_bidir_middle.keras": ("keras_bidir_middle", {}, "last", [(1, "linear")]),
}
SIZES = {"tapered": (16, 16, 8), "keras_tapered_last": (16, 8), "keras_tapered3": (12, 8, 4),
         "bidir_middle": (8, 6, 4), "keras_bidir_middle": (8, 6, 4)}
DIRECTIONS = {"bidir_middle": (1, 2, 1), "keras_bidir_middle": (1, 2, 1)}


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(DATA, "expected.npz")) as z:
        return dict(z)


def _load(file):
    if file.endswith(".onnx"):
        pytest.importorskip("onnx")
    if file.endswith((".keras", ".h5")):
        pytest.importorskip("h5py")
    return edgegru.load(os.path.join(DATA, file), **FILES[file][1])


@pytest.mark.parametrize("file", sorted(FILES))
def test_matches_the_framework(file, expected):
    key, _, head_on, layers = FILES[file]
    model = _load(file)
    c = model.config
    assert c.head_on == head_on
    assert c.hidden_sizes == SIZES.get(key, ())
    assert c.layer_directions == DIRECTIONS.get(key, ())
    assert [(units, act) for _, units, act in c.head_layers] == layers
    assert c.fused_head == (len(layers) == 1 and layers[0][1] in ("linear", "sigmoid"))
    X = expected[f"X{model.input_size}"]
    Y = model.run(X)
    assert Y.shape == expected[key].shape
    assert np.abs(Y - expected[key]).max() <= TOL


@pytest.mark.parametrize("file", sorted(f for f in FILES if "bidir" not in f
                                         and "reverse" not in f))
def test_step_equals_run_bitwise(file, expected):
    model = _load(file)
    check_step_equals_run(model, expected[f"X{model.input_size}"][0])


def test_sequence_to_one_survives_the_native_file(expected, tmp_path):
    for file in ("simple_gru.onnx", "mlp3_last.pt", "keras_last_mlp.keras"):
        model = _load(file)
        edgegru.save(model, tmp_path / "m.npz")
        back = edgegru.load(tmp_path / "m.npz")
        assert back.config == model.config
        X = expected[f"X{model.input_size}"]
        assert np.array_equal(back.run(X), model.run(X))


def test_a_state_dict_says_nothing_of_the_last_step(expected):
    # without head_on="last" the state dict's model returns every step; its last is PyTorch's
    model = edgegru.load(os.path.join(DATA, "simple_gru.pt"))
    Y = model.run(expected["X10"])
    assert Y.shape == (2, 1000, 1)
    assert np.abs(Y[:, -1] - expected["simple_gru"]).max() <= TOL


def test_convert_and_info_on_the_command_line(expected, tmp_path):
    from click.testing import CliRunner

    from edgegru.cli import main
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(main, ["convert", os.path.join(DATA, "mlp3_last.pt"), "--head",
                                       "head.0,tanh,head.2,hardsigmoid,head.4,sigmoid",
                                       "--head-on", "last", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "sequence-to-one" in result.output
    model = edgegru.load(out)
    assert np.abs(model.run(expected["X4"]) - expected["mlp3_last"]).max() <= TOL
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "linear 12 -> 16 + tanh, linear 16 -> 8 + hard_sigmoid, linear 8 -> 1 + sigmoid " \
           "(hard_sigmoid: clip(0.166667 x + 0.5, 0, 1))" in info.output
    assert "head_on:        last step" in info.output
    refused = CliRunner().invoke(main, ["convert", os.path.join(DATA, "mlp2.pt"), "-o",
                                        str(tmp_path / "x.npz")])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "head=['head.0', '<activation>', 'head.2']" in refused.output


def test_reverse_onnx_stack(expected, tmp_path):
    model = _load("reverse_stack.onnx")
    assert model.config.reverse and model.num_layers == 2
    X = expected["X4"]
    with pytest.raises(ValueError, match="reverse GRU reads the sequence from its end"):
        model.step(X[0, 0])
    # one sequence at a time: the same numbers as the batch
    assert np.array_equal(model.run(X[1]), model.run(X)[1])
    edgegru.save(model, tmp_path / "m.npz")
    back = edgegru.load(tmp_path / "m.npz")
    assert back.config.reverse and np.array_equal(back.run(X), model.run(X))


def test_reverse_onnx_node_with_sequence_lens_and_initial_h(expected):
    onnx = pytest.importorskip("onnx")
    from edgegru.formats.onnx import GRUNode
    proto = onnx.load(os.path.join(DATA, "reverse_node.onnx"))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    node = GRUNode(proto.graph.node[0], init["W2"], init["R2"], init["B2"])
    X = expected["X4"].transpose(1, 0, 2)                       # (T, B, I), time-major
    Y, Y_h = node.run(X, expected["reverse_node.lens"], expected["reverse_node.h0"])
    assert np.abs(Y - expected["reverse_node"]).max() <= TOL
    assert np.abs(Y_h - expected["reverse_node.Y_h"]).max() <= TOL
    assert not Y[613:, :, 1].any()                  # zero past the second sequence's length


def test_tapered_stacks_run_as_uniform_segments(expected, tmp_path):
    model = _load("tapered.pt")
    assert [seg.config.hidden_size for seg in model._segments] == [16, 8]
    assert [seg.num_layers for seg in model._segments] == [2, 1]
    X = expected["X5"]
    Y, h_n = model.run(X, return_state=True)
    assert [h.shape for h in h_n] == [(2, 2, 16), (1, 2, 8)]
    assert np.array_equal(model.run(X, h0=[np.zeros_like(h) for h in h_n]), Y)
    assert not np.array_equal(model.run(X, h0=h_n), Y)
    with pytest.raises(ValueError, match="h0 must be a list of 2 arrays"):
        model.run(X, h0=h_n[0])
    model.reset()
    Y1 = model.run(X[0, :500])
    assert [h.shape for h in model.state] == [(2, 16), (1, 8)]
    assert np.array_equal(np.concatenate([Y1, model.run(X[0, 500:])]), Y[0])
    edgegru.save(model, tmp_path / "m.npz")
    back = edgegru.load(tmp_path / "m.npz")
    assert back.config == model.config and np.array_equal(back.run(X), Y)
    x, y = np.zeros(5, np.float32), np.zeros(2, np.float32)
    back.reset()
    step = back.stepper(x, y)
    for row in X[0]:
        x[:] = row
        step()
    assert np.array_equal(y, Y[0, -1])


def test_several_gru_modules_stack_in_key_order_or_as_named(expected):
    from edgegru.formats.pytorch import from_state_dict
    from edgegru.formats.torch_pt import read_state_dict
    sd = read_state_dict(open(os.path.join(DATA, "tapered.pt"), "rb").read())
    named = from_state_dict(sd, layers=["gru1", "gru2"])
    assert np.array_equal(named.run(expected["X5"]), _load("tapered.pt").run(expected["X5"]))
    backwards = dict(reversed(list(sd.items())))       # the sizes no longer chain
    with pytest.raises(edgegru.ModelFormatError, match="do not stack in the order of their "
                                                       "keys; name the stack"):
        from_state_dict(backwards)
    with pytest.raises(edgegru.ModelFormatError, match="GRU 'gru1.' takes 5 inputs"):
        from_state_dict(sd, layers=["gru2", "gru1"])
    assert from_state_dict(sd, prefix="gru2", head=False).config.hidden_size == 8


def test_a_bidirectional_layer_in_the_middle_runs_whole_sequences(expected, tmp_path):
    model = _load("bidir_middle.pt")
    assert [(seg.config.hidden_size, seg.num_directions) for seg in model._segments] == \
        [(8, 1), (6, 2), (4, 1)]
    assert model.config.bidirectional and model.output_size == 2
    X = expected["X5"]
    Y, h_n = model.run(X, return_state=True)
    assert [h.shape for h in h_n] == [(1, 2, 8), (2, 2, 6), (1, 2, 4)]
    assert np.array_equal(model.run(X, threads=2), Y)
    edgegru.save(model, tmp_path / "m.npz")
    back = edgegru.load(tmp_path / "m.npz")
    assert back.config == model.config and np.array_equal(back.run(X), Y)
    with pytest.raises(ValueError, match="bidirectional layer reads the whole sequence"):
        back.step(X[0, 0])
    with pytest.raises(ValueError, match="layer_directions must give num_layers"):
        edgegru.GRUConfig(input_size=2, hidden_size=4, num_layers=2, layer_directions=(1, 3))
