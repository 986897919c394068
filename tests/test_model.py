"""The public API: shapes, errors that say what to do, state, the native file, state-dict import."""
import dataclasses
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import edgegru
from conftest import make_model, max_abs
from reference import CASES, state_dict


@pytest.fixture
def model():
    return make_model(input_size=3, hidden_size=16, num_layers=2, output_size=2)


def test_sizes_and_repr(model):
    assert (model.input_size, model.hidden_size, model.num_layers, model.output_size) == (3, 16, 2, 2)
    assert "hidden_size=16" in repr(model)
    assert make_model(input_size=3, hidden_size=16, bidirectional=True).output_size == 32


def test_step_accepts_float64_lists_and_out(model):
    a = model.step([0.1, 0.2, 0.3])
    model.reset()
    out = np.empty(2, np.float32)
    b = model.step(np.array([0.1, 0.2, 0.3], dtype=np.float64), out=out)
    assert b is out and a.dtype == np.float32 and max_abs(a, b) == 0.0


@pytest.mark.parametrize("x, match", [
    (np.zeros(4), r"x must have shape \(3,\)"),
    (np.zeros((2, 3)), r"use run\(\)"),
    (np.array(["a", "b", "c"]), "real numbers"),
])
def test_step_rejects_bad_input(model, x, match):
    with pytest.raises(ValueError, match=match):
        model.step(x)


def test_step_rejects_bad_out(model):
    with pytest.raises(ValueError, match="out must be"):
        model.step(np.zeros(3), out=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="out must be"):
        model.step(np.zeros(3), out=np.empty(2, np.float64))


def test_run_rejects_bad_shapes(model):
    for X in (np.zeros(3), np.zeros((5, 4)), np.zeros((1, 2, 3, 3))):
        with pytest.raises(ValueError, match=r"X must have shape \(T, 3\) or \(B, T, 3\)"):
            model.run(X)
    with pytest.raises(ValueError, match="h0 must have shape"):
        model.run(np.zeros((2, 5, 3)), h0=np.zeros((2, 3, 16)))


def test_empty_sequence(model):
    assert model.run(np.zeros((0, 3))).shape == (0, 2)
    assert model.run(np.zeros((2, 0, 3))).shape == (2, 0, 2)
    assert (model.state == 0).all()


def test_bidirectional_step_is_refused():
    model = make_model(input_size=2, hidden_size=4, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.step(np.zeros(2))


def test_state_is_a_copy_assignable_and_resettable(model):
    model.run(np.ones((10, 3)))
    s = model.state
    assert s.shape == (2, 16) and np.abs(s).sum() > 0
    s[...] = 0
    assert np.abs(model.state).sum() > 0
    y1 = model.step(np.ones(3)).copy()
    model.state = s + 0.5
    model.state = model.state - 0.5
    model.reset()
    assert (model.state == 0).all()
    with pytest.raises(ValueError, match=r"state must have shape \(2, 16\)"):
        model.state = np.zeros(16)
    assert y1.shape == (2,)


def test_batched_run_leaves_state_alone(model):
    model.run(np.ones((3, 3)))
    before = model.state
    Y, h_n = model.run(np.ones((4, 7, 3)), return_state=True)
    assert Y.shape == (4, 7, 2) and h_n.shape == (2, 4, 16)
    assert (model.state == before).all()


def test_save_load_round_trip(tmp_path, model):
    model.meta["scoring"] = {"threshold": 3.5}
    path = tmp_path / "m.npz"
    edgegru.save(model, path)
    loaded = edgegru.load(path)
    X = np.random.default_rng(0).standard_normal((50, 3))
    model.reset()
    assert max_abs(loaded.run(X), model.run(X)) == 0.0
    assert loaded.config == model.config and loaded.meta["scoring"] == {"threshold": 3.5}


def test_hard_sigmoid_gates_round_trip_as_format_version_2(tmp_path, model):
    """A model with hard_sigmoid gates keeps them through the file, which says version 2 (so an
    older edgegru refuses it rather than run the logistic sigmoid); others stay version 1."""
    config = dataclasses.replace(model.config, gate_activation="hard_sigmoid", gate_alpha=1 / 6)
    hard = edgegru.Model(config, model.weights)
    edgegru.save(hard, tmp_path / "hard.npz")
    edgegru.save(model, tmp_path / "plain.npz")
    loaded = edgegru.load(tmp_path / "hard.npz")
    assert loaded.config == config
    X = np.random.default_rng(0).standard_normal((50, 3))
    assert max_abs(loaded.run(X), hard.run(X)) == 0.0
    assert max_abs(loaded.run(X), edgegru.load(tmp_path / "plain.npz").run(X)) > 1e-3
    versions = {}
    for name in ("hard", "plain"):
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as f:
            versions[name] = json.loads(str(f["__meta__"]))["format_version"]
    assert versions == {"hard": 2, "plain": 1}
    assert "hard_sigmoid: clip(0.166667 x + 0.5, 0, 1)" in edgegru.formats.describe(loaded)["gates"]


def _rewrite(path, meta=None, drop=None, replace=None):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if meta is not None:
        m = json.loads(str(arrays["__meta__"]))
        meta(m)
        arrays["__meta__"] = np.array(json.dumps(m))
    if drop:
        del arrays[drop]
    if replace:
        arrays.update(replace)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, match", [
    (dict(meta=lambda m: m.update(format_version=99)), "format_version 99 is not supported"),
    (dict(meta=lambda m: m["config"].pop("hidden_size")), "config is missing 'hidden_size'"),
    (dict(meta=lambda m: m["config"].update(num_layers="2")), "'num_layers' must be int"),
    (dict(meta=lambda m: m["config"].update(gate_activation="relu")), "gate_activation must be"),
    (dict(meta=lambda m: m["config"].update(gate_alpha="0.2")), "'gate_alpha' must be float"),
    (dict(drop="l1.w_hh"), r"missing array\(s\) l1.w_hh"),
    (dict(replace={"l0.w_hh": np.zeros((48, 15), np.float32)}), r"l0.w_hh has shape \(48, 15\)"),
    (dict(replace={"head.bias": np.array([np.nan, 0], np.float32)}), "head.bias contains NaN"),
    (dict(replace={"extra": np.zeros(2, np.float32)}), r"unexpected array\(s\) extra"),
    (dict(replace={"l0.b_ih": np.array(["x"] * 48)}), "l0.b_ih has dtype"),
    (dict(replace={"__meta__": np.array("{not json")}), "not valid JSON"),
])
def test_load_refuses_bad_files(tmp_path, model, change, match):
    path = tmp_path / "m.npz"
    edgegru.save(model, path)
    _rewrite(path, **change)
    with pytest.raises(edgegru.ModelFormatError, match=match) as err:
        edgegru.load(path)
    assert str(path) in str(err.value)


def test_load_refuses_pickles_truncation_and_garbage(tmp_path, model):
    path = tmp_path / "m.npz"
    edgegru.save(model, path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage" * 100)
    obj = tmp_path / "obj.npz"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    np.savez(obj, __meta__=np.array({"a": 1}, dtype=object), **{n[:-4]: np.zeros(1, np.float32)
                                                                for n in names if n != "__meta__.npy"})
    for p in ("trunc.npz", "junk.npz", "obj.npz", "missing.npz"):
        with pytest.raises(edgegru.ModelFormatError):
            edgegru.load(tmp_path / p)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, model):
    edgegru.save(model, tmp_path / "m.npz")
    edgegru.save(model, tmp_path / "m.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_saved_file_is_readable_by_others_as_the_umask_allows(tmp_path, model):
    old = os.umask(0o022)
    try:
        edgegru.save(model, tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644


# -- from_state_dict -----------------------------------------------------------------------

def test_from_state_dict_finds_gru_and_head():
    model = edgegru.from_state_dict(state_dict(CASES[1]))
    assert (model.input_size, model.hidden_size, model.num_layers, model.output_size) == (4, 64, 2, 4)
    assert model.meta["provenance"]["source"]["head_prefix"] == "fc."
    no_head = edgegru.from_state_dict(state_dict(CASES[1]), head=False)
    assert no_head.output_size == 64


def test_from_state_dict_without_prefix_and_bias():
    sd = {k[len("gru."):]: v for k, v in state_dict(CASES[3]).items()}
    model = edgegru.from_state_dict(sd)
    assert not model.config.bias and model.num_layers == 2


def test_from_state_dict_several_heads_needs_a_choice():
    sd = state_dict(CASES[1])
    sd["other.weight"], sd["other.bias"] = np.zeros((2, 64), np.float32), np.zeros(2, np.float32)
    with pytest.raises(edgegru.ModelFormatError, match="several possible heads.*head="):
        edgegru.from_state_dict(sd)
    assert edgegru.from_state_dict(sd, head="other").output_size == 2
    assert edgegru.from_state_dict(sd, head="fc.").output_size == 4


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("gru.weight_hh_l1"), r"missing key\(s\) gru.weight_hh_l1"),
    (lambda sd: sd.update({"gru.weight_ih_l1": np.zeros((192, 63), np.float32)}),
     r"gru.weight_ih_l1 has shape \(192, 63\), expected \(192, 64\)"),
    (lambda sd: sd.update({"gru.weight_hh_l0": np.zeros((10, 10), np.float32)}),
     r"expected \(3\*H, H\)"),
    (lambda sd: [sd.pop(k) for k in list(sd) if "_l1" in k] and sd.update(
        {"gru.weight_ih_l2": np.zeros(1)}), "not numbered"),
    (lambda sd: sd.clear(), "no GRU weights"),
    (lambda sd: sd.update({"gru.bias_ih_l0": np.array(["a"] * 192)}), "dtype"),
])
def test_from_state_dict_errors(edit, match):
    sd = state_dict(CASES[1])
    edit(sd)
    with pytest.raises(edgegru.ModelFormatError, match=match):
        edgegru.from_state_dict(sd)


def test_from_state_dict_refuses_nan_weights():
    sd = state_dict(CASES[0])
    sd["gru.weight_hh_l0"][0, 0] = np.nan
    with pytest.raises(edgegru.ModelFormatError, match="NaN"):
        edgegru.from_state_dict(sd)


def test_stepper_equals_step_and_reads_x_in_place(backend):
    a = make_model(backend, input_size=3, hidden_size=9, num_layers=2, output_size=2)
    b = make_model(backend, input_size=3, hidden_size=9, num_layers=2, output_size=2)
    X = np.random.default_rng(5).standard_normal((30, 3)).astype(np.float32)
    x, y = np.zeros(3, np.float32), np.zeros(2, np.float32)
    step = b.stepper(x, y)
    x.shape = (1, 3)          # the stepper keeps its own view: this cannot confuse it
    for row in X:
        x[0] = row
        step()
        assert np.array_equal(y, a.step(row))
    assert np.array_equal(a.state, b.state)


def test_stepper_checks_its_buffers_once(backend):
    model = make_model(backend, input_size=3, hidden_size=4, output_size=1)
    good_x, good_y = np.zeros(3, np.float32), np.zeros(1, np.float32)
    for x, y in [(np.zeros(3), good_y), (np.zeros(4, np.float32), good_y),
                 (np.zeros(6, np.float32)[::2], good_y), (good_x, np.zeros(2, np.float32)),
                 (good_x, np.zeros(1, np.float32)[:0]), ([0.0, 0.0, 0.0], good_y)]:
        with pytest.raises(ValueError):
            model.stepper(x, y)
    y = np.zeros(1, np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        model.stepper(good_x, y)
    bi = make_model(backend, input_size=3, hidden_size=4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        bi.stepper(good_x, np.zeros(8, np.float32))


def test_step_with_the_same_buffers_again_reads_their_new_contents(backend):
    """The same x and out objects as the last call skip the checks, not the reading: values
    written into x in place are used, and other arrays are checked as before."""
    a = make_model(backend, input_size=3, hidden_size=6, output_size=2)
    b = make_model(backend, input_size=3, hidden_size=6, output_size=2)
    X = np.random.default_rng(6).standard_normal((20, 3)).astype(np.float32)
    x, y = np.zeros(3, np.float32), np.zeros(2, np.float32)
    for row in X:
        x[:] = row
        assert b.step(x, out=y) is y
        assert np.array_equal(y, a.step(row))
    with pytest.raises(ValueError):
        b.step(np.zeros(4, np.float32), out=y)
    with pytest.raises(ValueError):
        b.step(x, out=np.zeros(3, np.float32))
    assert b.step(x, out=y) is y


def test_step_on_a_new_array_each_call_equals_run(backend):
    """Rows of an array, columns of one, integers with float32's item size and a reshaped out
    all give run()'s outputs: only a float32, contiguous, one-dimensional x of the right length
    is read in place; anything else is converted first."""
    a = make_model(backend, input_size=3, hidden_size=7, num_layers=2, output_size=2)
    b = make_model(backend, input_size=3, hidden_size=7, num_layers=2, output_size=2)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((24, 3)).astype(np.float32)
    wide = np.zeros((24, 6), np.float32)
    wide[:, ::2] = X                                    # rows with strides (8,)
    Xi = rng.integers(-3, 3, (24, 3)).astype(np.int32)  # item size 4, like float32
    out = np.zeros(2, np.float32)
    Y = a.run(np.concatenate([X, X, Xi.astype(np.float32)]))
    got = [b.step(row, out=out).copy() for row in X]
    got += [b.step(wide[t, ::2]) for t in range(24)]
    for t, row in enumerate(Xi):
        if t == 10:
            out.shape = (1, 2)      # out was checked once: its reshaping cannot confuse step
        got.append(b.step(row, out=out).reshape(2).copy())
    assert np.array_equal(np.array(got), Y)


@pytest.mark.parametrize("kw", [dict(hidden_size=19), dict(hidden_size=8, num_layers=2,
                                                            bidirectional=True)])
def test_a_batch_split_over_threads_equals_one_thread(kw):
    model = make_model(input_size=3, output_size=2, **kw)
    L = model.num_layers * model.num_directions
    rng = np.random.default_rng(11)
    X = rng.standard_normal((7, 30, 3)).astype(np.float32)
    h0 = rng.standard_normal((L, 7, model.hidden_size)).astype(np.float32)
    one = model.run(X, h0=h0, return_state=True)
    for threads in (2, 3, 7, 16):           # parts of 4+3, 3+2+2, one each, more threads than B
        Y, h_n = model.run(X, h0=h0, return_state=True, threads=threads)
        assert np.array_equal(Y, one[0]) and np.array_equal(h_n, one[1])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be"):
            model.run(X, threads=bad)


class _Reading:
    """Not an ndarray, but with a float32 dtype and one dimension (as a pandas Series has)."""
    dtype, ndim = np.dtype(np.float32), 1

    def __init__(self, values):
        self.values = np.asarray(values, np.float32)

    def __array__(self, dtype=None, copy=None):
        return self.values


def test_step_reads_float64_rows_and_odd_arrays_as_run_does(backend):
    """float64 rows (a fresh np.array of a reading is float64) are read in place and rounded to
    float32 as run() rounds them: huge values to inf, NaN kept; a float64 column too. Objects
    that only look like arrays are converted; the wrong length or dimensions are refused."""
    a = make_model(backend, input_size=3, hidden_size=7, num_layers=2, output_size=2)
    b = make_model(backend, input_size=3, hidden_size=7, num_layers=2, output_size=2)
    X = np.random.default_rng(9).standard_normal((30, 3)) * 3
    wide = np.zeros((30, 3, 2))
    wide[:, :, 1] = X                                   # columns of rows: strides (16,)
    Y = a.run(np.concatenate([X, X, X[:5]]))
    out = np.zeros(2, np.float32)
    got = [b.step(row, out=out).copy() for row in X]
    got += [b.step(wide[t, :, 1]) for t in range(30)]
    got += [b.step(_Reading(row)) for row in X[:5]]
    assert np.array_equal(np.array(got), Y)
    for bad, match in [(np.zeros(4, np.float32), r"shape \(3,\)"),
                       (np.zeros(2), r"shape \(3,\)"),
                       (np.zeros((1, 3), np.float32), r"use run\(\)"),
                       (np.float32(1.0), r"shape \(3,\)"), (np.zeros((), np.float32), "shape")]:
        for o in (out, None):
            with pytest.raises(ValueError, match=match):
                b.step(bad, out=o)
    assert np.array_equal(a.state, b.state)             # refused calls changed nothing
    Z = np.array([[1e300, 0.5, -1e39], [np.nan, 1.0, 2.0]])
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(a.run(Z), [b.step(z).copy() for z in Z], equal_nan=True)


def test_step_with_the_same_x_reshaped_in_place_reads_the_same_values(backend):
    """A loop over the same x is bound to a view of it: reshaping x in place afterwards cannot
    make the kernel read another layout."""
    a = make_model(backend, input_size=3, hidden_size=5, output_size=2)
    b = make_model(backend, input_size=3, hidden_size=5, output_size=2)
    X = np.random.default_rng(10).standard_normal((6, 3)).astype(np.float32)
    x, y = np.zeros(3, np.float32), np.zeros(2, np.float32)
    for t, row in enumerate(X):
        if t == 3:
            x.shape = (1, 3)
        x[...] = row
        b.step(x, out=y)
        assert np.array_equal(y, a.step(row))
