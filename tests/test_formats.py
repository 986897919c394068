"""Importing models: torch-free .pt, safetensors, .npz state dicts, textbook arrays, the CLI.

Reference outputs come from tests/data/formats/expected.npz, written by
tools/make_format_fixtures.py with the real PyTorch 2.13; none of these tests needs torch.
"""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru.cli import main
from edgegru.formats import torch_pt
from naive import gru as naive_gru

DATA = os.path.join(os.path.dirname(__file__), "data", "formats")
TOL = 1e-5


@pytest.fixture(scope="session")
def expected():
    with np.load(os.path.join(DATA, "expected.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def path(name):
    return os.path.join(DATA, name)


def check(model, expected, key):
    X = expected[key + ".X"]
    assert np.abs(model.run(X) - expected[key + ".Y"]).max() <= TOL


@pytest.mark.parametrize("file,key", [
    ("gru2_linear.pt", "gru2_linear"),                # nn.GRU(10, 20, 2) + nn.Linear(20, 1)
    ("gru2_f64.pt", "gru2_f64"),
    ("gru2_f16.pt", "gru2_f16"),
    ("gru2_bf16.pt", "gru2_bf16"),
    ("gru2_views.pt", "gru2_views"),                  # views: storage offsets, transposed strides
    ("gru2_bigendian.pt", "gru2_bigendian"),          # byteorder "big"
    ("gru_bidir_checkpoint.pth", "gru_bidir"),        # {"epoch", "model": state_dict, "note"}
    ("grucell.pt", "grucell"),
    ("gru2_linear.safetensors", "gru2_linear"),
    ("gru2_linear_state_dict.npz", "gru2_linear"),
])
def test_state_dict_files_match_pytorch(file, key, expected):
    model = edgegru.load(path(file))
    check(model, expected, key)
    source = model.meta["provenance"]["source"]
    assert source["file"] == file and len(source["sha256"]) == 64


def test_pt_reader_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, edgegru.formats.torch_pt as t; "
            f"sd = t.read_state_dict(open({path('gru2_linear.pt')!r}, 'rb').read()); "
            "print(sorted(sd)[0], 'torch' in sys.modules)")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(DATA)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.stdout.split() == ["fc.bias", "False"], out.stderr


def test_load_takes_bytes_and_the_extension_is_only_a_hint(expected, tmp_path):
    data = open(path("gru2_linear.pt"), "rb").read()
    check(edgegru.load(data), expected, "gru2_linear")
    renamed = tmp_path / "weights.onnx"                 # a misleading extension
    renamed.write_bytes(data)
    check(edgegru.load(renamed), expected, "gru2_linear")


def test_convert_then_load_native_keeps_outputs_and_provenance(expected, tmp_path):
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(main, ["convert", path("gru2_linear.pt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = edgegru.load(out)
    check(model, expected, "gru2_linear")
    assert model.meta["provenance"]["source"]["format"] == "pytorch-pt"
    assert model.meta["provenance"]["converted_by"].startswith("edgegru")


def test_info_prints_sizes_parameters_and_checksum():
    result = CliRunner().invoke(main, ["info", path("gru2_linear.pt")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines())
    assert lines["num_layers"].strip() == "2" and lines["hidden_size"].strip() == "20"
    assert lines["parameters"].strip() == str(3 * 20 * (10 + 20) + 6 * 20      # PyTorch's count
                                              + 3 * 20 * 40 + 6 * 20 + 20 + 1)
    assert lines["head"].strip() == "linear 20 -> 1"
    # the same weights from another format have the same checksum
    other = CliRunner().invoke(main, ["info", path("gru2_linear.safetensors")])
    assert lines["weights_sha256"] in other.output


# -- refusals: one sentence, never a traceback, never code run --------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_zip(pickled, extra=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = _torch_zip(pickle.dumps({"weight": _Evil(marker)}, protocol=2))
    for source in (evil, _write(tmp_path / "evil.pt", evil)):
        with pytest.raises(edgegru.ModelFormatError, match="refused to unpickle .*system"):
            edgegru.load(source)
    assert not marker.exists()
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "evil.pt"), "-o",
                                       str(tmp_path / "out.npz")])
    assert result.exit_code == 1 and "refused" in result.output and not marker.exists()
    assert not (tmp_path / "out.npz").exists()


def test_a_plain_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(edgegru.ModelFormatError, match="never unpickles"):
        edgegru.load(pickle.dumps(_Evil(marker), protocol=4))
    assert not marker.exists()


def _write(p, data):
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("file,message", [
    ("whole_module.pt", r"whole pickled model .*torch.save\(model.state_dict\(\), path\)"),
    ("legacy.pt", r"legacy PyTorch file .*torch.save\(model.state_dict\(\), path\)"),
])
def test_files_that_are_not_state_dicts_say_how_to_resave(file, message):
    with pytest.raises(edgegru.ModelFormatError, match=message):
        edgegru.load(path(file))


def test_bad_contents_are_refused_with_one_sentence():
    data = open(path("gru2_linear.pt"), "rb").read()
    cases = {
        "truncated": (data[:len(data) // 2], "truncated or corrupt zip"),
        "empty": (b"", "empty"),
        "garbage": (b"hello world, not a model", "not a model file edgegru can read"),
        "zip without data.pkl": (_plain_zip({"a.txt": b"x"}), "not one edgegru reads"),
        "torchscript": (_plain_zip({"archive/data.pkl": b"", "archive/constants.pkl": b""}),
                        "TorchScript"),
    }
    for blob, message in cases.values():
        with pytest.raises(edgegru.ModelFormatError, match=message):
            edgegru.load(blob)


def _plain_zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in entries.items():
            z.writestr(name, blob)
    return buf.getvalue()


def _state_dict_npz(sd):
    buf = io.BytesIO()
    np.savez(buf, **sd)
    return buf.getvalue()


@pytest.fixture(scope="session")
def state_dict():
    return torch_pt.read_state_dict(open(path("gru2_linear.pt"), "rb").read())


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("gru.bias_hh_l1"), "missing key.*gru.bias_hh_l1"),
    (lambda sd: sd.update({"gru.weight_hh_l0": np.zeros((60, 21), np.float32)}),
     r"gru.weight_hh_l0 has shape \(60, 21\)"),
    (lambda sd: sd.update({"gru.weight_ih_l1": np.zeros((60, 7), np.float32)}),
     r"gru.weight_ih_l1 has shape \(60, 7\), expected \(60, 20\)"),
    (lambda sd: sd["gru.weight_ih_l0"].__setitem__((0, 0), np.nan), "NaN or inf"),
    (lambda sd: sd["fc.bias"].__setitem__(0, np.inf), "NaN or inf"),
])
def test_broken_state_dicts_are_refused(state_dict, change, message):
    sd = {k: v.copy() for k, v in state_dict.items()}
    change(sd)
    with pytest.raises(edgegru.ModelFormatError, match=message) as info:
        edgegru.load(_state_dict_npz(sd))
    assert "\n" not in str(info.value)


def test_unknown_native_version_is_refused(tmp_path):
    model = edgegru.load(path("grucell.pt"))
    edgegru.save(model, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        entries = {n: z.read(n) for n in z.namelist()}
    meta = np.load(io.BytesIO(entries["__meta__.npy"]))
    entries["__meta__.npy"] = _npy(np.array(str(meta).replace('"format_version": 1',
                                                              '"format_version": 99')))
    with pytest.raises(edgegru.ModelFormatError, match="format_version 99 is not supported"):
        edgegru.load(_plain_zip(entries))


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_cli_errors_are_one_line_and_exit_1(tmp_path):
    bad = _write(tmp_path / "bad.pt", b"PK\x03\x04 truncated")
    for args in (["info", str(bad)], ["convert", str(bad), "-o", str(tmp_path / "x.npz")],
                 ["info", str(tmp_path / "missing.pt")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert "Traceback" not in result.output


# -- the textbook layout --------------------------------------------------------------------
def _textbook_gru(X, W_r, W_z, W, b_r, b_z, b, z_selects):
    """The textbook equations, literally, in float64."""
    def sig(a):
        return 1 / (1 + np.exp(-a))
    H = W_r.shape[0]
    h, out = np.zeros(H), []
    for x in X.astype(np.float64):
        r = sig(W_r @ np.r_[h, x] + b_r)
        z = sig(W_z @ np.r_[h, x] + b_z)
        c = np.tanh(W @ np.r_[r * h, x] + b)
        h = z * h + (1 - z) * c if z_selects == "previous" else (1 - z) * h + z * c
        out.append(h)
    return np.array(out)


@pytest.mark.parametrize("z_selects", ["previous", "candidate"])
def test_from_arrays_matches_the_textbook_equations(z_selects, backend):
    rng = np.random.default_rng(3)
    H, I, T = 7, 3, 50
    mats = [rng.uniform(-0.6, 0.6, (H, H + I)).astype(np.float32) for _ in range(3)]
    biases = [rng.uniform(-0.5, 0.5, H).astype(np.float32) for _ in range(3)]
    X = rng.standard_normal((T, I)).astype(np.float32)
    model = edgegru.from_arrays(*mats, *biases, z_selects=z_selects, backend=backend)
    Y = model.run(X)
    assert np.abs(Y - _textbook_gru(X, *mats, *biases, z_selects)).max() <= TOL
    assert model.config.reset_after is False
    # and the mapping is the reset-before GRU of tests/naive.py
    ref, _ = naive_gru(model.config, model.weights.arrays, X)
    assert np.abs(Y - ref).max() <= TOL


def test_from_arrays_with_a_head_and_shape_errors():
    H, I = 4, 2
    W = np.full((H, H + I), 0.1, np.float32)
    model = edgegru.from_arrays(W, W, W, head_weight=np.ones((1, H)), head_bias=[0.5],
                                head_activation="sigmoid")
    assert model.run(np.zeros((3, I))).shape == (3, 1)
    with pytest.raises(edgegru.ModelFormatError, match=r"W_z has shape \(4, 7\), expected"):
        edgegru.from_arrays(W, np.zeros((H, H + I + 1)), W)
    with pytest.raises(ValueError, match="z_selects"):
        edgegru.from_arrays(W, W, W, z_selects="wikipedia")
