"""W_hh held in bfloat16 (GRUConfig(recurrent_dtype="bfloat16")): the kernels compute exactly
the float32 model with the rounded W_hh, step, run and batch agree bitwise, the NumPy fallback
within 1e-5, and the native file stores W_hh in 16 bits."""
import dataclasses
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from edgegru import kernels
from edgegru.cli import main


def bf16_model(H, backend=None, seed=None, **kw):
    cfg = edgegru.GRUConfig(input_size=4, hidden_size=H, output_size=2, **kw)
    weights = edgegru.GRUWeights.random(cfg, seed=H if seed is None else seed)
    cfg16 = dataclasses.replace(cfg, recurrent_dtype="bfloat16")
    return edgegru.Model(cfg16, weights, backend=backend), cfg, weights


def inputs(T, seed=0):
    return np.random.default_rng(seed).standard_normal((T, 4)).astype(np.float32)


def test_rounding_is_to_nearest_even_and_widening_exact():
    a = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -9, -2.5, 3e-39, 1e30],
                 np.float32)
    bits = kernels.to_bfloat16(a)
    back = kernels.from_bfloat16(bits)
    # 1 + 2^-8 is a tie: to even (1.0); 1 + 3 * 2^-8 is a tie: to even (1 + 2^-6)
    assert back[:5].tolist() == [1.0, 1.0, 1 + 2 ** -6, 1.0, -2.5]
    normal = np.abs(a) >= np.finfo(np.float32).tiny             # subnormals: absolute error
    assert np.all(np.abs(back - a)[normal] <= np.abs(a)[normal] * 2 ** -8)
    assert np.array_equal(kernels.to_bfloat16(back), bits)          # already bfloat16: kept


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("nvec", [8, 4, 3, 1])
def test_pack_and_unpack_are_inverse(lanes, nvec):
    rng = np.random.default_rng(1)
    block = kernels.from_bfloat16(kernels.to_bfloat16(rng.standard_normal((5, nvec * lanes))))
    words = kernels.pack_bf16_block(block, lanes)
    assert words.shape == (5, (nvec + 1) // 2 * lanes) and words.dtype == np.float32
    back = kernels.unpack_bf16_block(words, lanes)
    assert np.array_equal(back[:, :nvec * lanes], block)
    assert not back[:, nvec * lanes:].any()             # an odd vector's partner: zeros


@pytest.mark.parametrize("lanes", [8, 16])
def test_chain_bf16_equals_axpy_chain_on_widened_weights_bitwise(lanes):
    """The intrinsic for either vector width: _axpy_chain's sums on the widened block, not a
    bit apart, with NaN in x."""
    if kernels.BACKEND != "numba":
        pytest.skip("numba not available")
    from numba import njit
    chain_bf16 = kernels._vector_intrinsics(lanes)[3]

    @njit(fastmath=kernels.FASTMATH, error_model="numpy")
    def both(by_chain, by_rows, x, words, widened):
        chain_bf16(by_chain, x, words, 4 * lanes, 0, 8)
        kernels._axpy_chain(by_rows, x, widened, 8 * lanes, 0)

    rng = np.random.default_rng(3)
    for m in (1, 5, 32):
        block = rng.standard_normal((m, 8 * lanes)).astype(np.float32)
        words = kernels.pack_bf16_block(block, lanes)
        widened = kernels.unpack_bf16_block(words, lanes)
        x = rng.standard_normal(m).astype(np.float32)
        if m == 5:
            x[2] = np.nan
        start = rng.standard_normal(8 * lanes).astype(np.float32)
        by_chain, by_rows = start.copy(), start.copy()
        both(by_chain, by_rows, x, words.ravel(), widened.ravel())
        assert np.array_equal(by_chain, by_rows, equal_nan=True), m


@pytest.mark.parametrize("lanes", [8, 16])
def test_panel_bf16_equals_axpy_on_widened_weights_bitwise(lanes):
    """The intrinsic for either vector width and every number of vectors, odd ones included:
    _axpy's sums (_rows4's order) on the widened block, not a bit apart, with NaN in x and
    rows left over after the groups of four."""
    if kernels.BACKEND != "numba":
        pytest.skip("numba not available")
    from numba import njit
    panel_bf16 = kernels._vector_intrinsics(lanes)[4]

    def of_width(nvec):
        @njit(fastmath=kernels.FASTMATH, error_model="numpy")
        def both(by_panel, by_rows, x, words, ld, widened):
            panel_bf16(by_panel, x, words, ld, 0, nvec)
            kernels._axpy(by_rows, x, widened, nvec * lanes, 0)
        return both

    rng = np.random.default_rng(4)
    for nvec in (1, 3, 4, 8):
        both = of_width(nvec)
        for m in (1, 7, 32):
            block = rng.standard_normal((m, nvec * lanes)).astype(np.float32)
            words = kernels.pack_bf16_block(block, lanes)
            widened = kernels.unpack_bf16_block(words, lanes)[:, :nvec * lanes]
            x = rng.standard_normal(m).astype(np.float32)
            if m == 7:
                x[5] = np.nan
            start = rng.standard_normal(nvec * lanes).astype(np.float32)
            by_panel, by_rows = start.copy(), start.copy()
            both(by_panel, by_rows, x, words.ravel(), words.shape[1],
                 np.ascontiguousarray(widened).ravel())
            assert np.array_equal(by_panel, by_rows, equal_nan=True), (nvec, m)


def test_which_w_hh_is_blocked_and_which_blocks_hold_bfloat16():
    """A bfloat16 W_hh is blocked past H=56 where its [r | z] is whole vectors; float32's past
    64; packed, its whole-vector blocks hold bfloat16 words, the others float32, and
    unpacking gives back the rounded weights."""
    assert not kernels.recurrent_blocked(64, 128) and kernels.recurrent_blocked(65, 128)
    assert kernels.recurrent_blocked(64, 128, True) and kernels.recurrent_blocked(60, 64, True)
    for H, P in ((56, 128), (60, 128), (48, 64), (64, 0)):
        assert not kernels.recurrent_blocked(H, P, True), (H, P)
    rng = np.random.default_rng(6)
    for H, P in ((64, 128), (80, 128), (150, 128), (60, 64)):
        w_t = kernels.from_bfloat16(kernels.to_bfloat16(rng.standard_normal((H, 3 * H))))
        packed = kernels.pack_recurrent(w_t, P, bf16=True)
        assert packed.size <= kernels.recurrent_size(H)
        parts, start, halves = [], 0, 0
        for part in (w_t[:, :2 * H], w_t[:, 2 * H:]):
            for c in range(0, part.shape[1], P):
                width = min(P, part.shape[1] - c)
                place = packed[start:start + H * kernels.aligned(width)]
                start += place.size
                if kernels.bf16_block(width, P):
                    halves += 1
                    words = place[:H * kernels.bf16_words(width * 8 // P, P // 8)]
                    block = kernels.unpack_bf16_block(words.reshape(H, -1), P // 8)
                    parts.append(block[:, :width])
                else:
                    parts.append(place.reshape(H, -1)[:, :width])
        assert halves > 0 and np.array_equal(np.hstack(parts), w_t), (H, P)


# H=16 and 48: row-major (float32 products on the rounded weights); 56: row-major, past L1;
# 64: blocked, bfloat16 blocks in _rows4's order; 80: a last block of 2 and one of 5 vectors,
# bfloat16; 96 and 200: full blocks and narrower last ones; 120: a last block of 120 columns,
# float32, padded to a full width; 128: full blocks only
@pytest.mark.parametrize("H, reset_after", [(16, True), (48, True), (56, True), (64, True),
                                            (64, False), (80, True), (96, True), (120, True),
                                            (128, True), (200, False)])
def test_kernels_compute_the_float32_model_of_the_rounded_weights(H, reset_after):
    model, cfg, weights = bf16_model(H, reset_after=reset_after)
    w_hh = model.weights.arrays["l0.w_hh"]
    assert np.array_equal(w_hh, kernels.from_bfloat16(kernels.to_bfloat16(w_hh)))
    assert not np.array_equal(w_hh, weights.arrays["l0.w_hh"])
    X = inputs(200)
    y = model.run(X)
    assert np.array_equal(y, edgegru.Model(cfg, model.weights).run(X))
    assert 0 < np.abs(y - edgegru.Model(cfg, weights).run(X)).max() < 1e-3


@pytest.mark.parametrize("H, reset_after", [(64, True), (64, False), (80, True), (96, True),
                                            (200, False)])
def test_step_run_and_batch_agree_bitwise(H, reset_after):
    model, _, _ = bf16_model(H, reset_after=reset_after)
    X = inputs(150)
    y = model.run(X)
    model.reset()
    steps = np.stack([model.step(x).copy() for x in X])
    assert np.array_equal(steps, y)
    Xb = np.stack([X, X[::-1], 0.5 * X])
    Yb = model.run(Xb)
    Yt = model.run(Xb, threads=2)
    for b in range(3):
        alone = edgegru.Model(model.config, model.weights).run(Xb[b])
        assert np.array_equal(Yb[b], alone) and np.array_equal(Yt[b], alone), b
    model.reset()
    assert np.array_equal(model.run(X[:70], return_state=True)[1],
                          edgegru.Model(model.config, model.weights)
                          .run(X[:70], return_state=True)[1])


@pytest.mark.parametrize("H", [16, 64, 128, 200])
def test_numpy_fallback_runs_the_rounded_weights(H):
    model, _, weights = bf16_model(H)
    fallback = edgegru.Model(model.config, weights, backend="numpy")
    X = inputs(100)
    assert np.abs(fallback.run(X) - model.run(X)).max() < 1e-5


def test_native_file_stores_w_hh_in_16_bits(tmp_path):
    model, cfg, weights = bf16_model(96, seed=5)
    path = tmp_path / "m16.npz"
    edgegru.save(model, path)
    with np.load(path) as npz:
        assert npz["l0.w_hh"].dtype == np.uint16 and npz["l0.w_ih"].dtype == np.float32
        meta = json.loads(str(npz["__meta__"]))
    assert meta["format_version"] == 4 and meta["config"]["recurrent_dtype"] == "bfloat16"
    back = edgegru.load(path)
    assert back.config == model.config
    X = inputs(50)
    assert np.array_equal(back.run(X), model.run(X))
    # a float32 model's file: version and arrays as before
    edgegru.save(edgegru.Model(cfg, weights), tmp_path / "m32.npz")
    with np.load(tmp_path / "m32.npz") as npz:
        assert npz["l0.w_hh"].dtype == np.float32
        assert json.loads(str(npz["__meta__"]))["format_version"] == 1


def test_uint16_w_hh_in_a_float32_model_is_refused(tmp_path):
    model, _, _ = bf16_model(16, seed=5)
    path = tmp_path / "m16.npz"
    edgegru.save(model, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(str(np.load(path)["__meta__"]))
    del meta["config"]["recurrent_dtype"]
    bad = tmp_path / "bad.npz"
    arrays = {n[:-4]: np.load(path)[n[:-4]] for n in entries}
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(bad, **arrays)
    with pytest.raises(edgegru.ModelFormatError, match="l0.w_hh has dtype uint16, expected "
                                                       "float32$"):
        edgegru.load(bad)


def test_convert_weights_dtype_and_info(tmp_path):
    cfg = edgegru.GRUConfig(input_size=4, hidden_size=16, output_size=1)
    src = tmp_path / "m.npz"
    edgegru.save(edgegru.Model(cfg, edgegru.GRUWeights.random(cfg, seed=2)), src)
    runner = CliRunner()
    dst = tmp_path / "m16.npz"
    result = runner.invoke(main, ["convert", str(src), "--weights-dtype", "bf16", "-o",
                                  str(dst)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("output_size=1 W_hh bfloat16>")
    assert edgegru.load(dst).config.recurrent_dtype == "bfloat16"
    info32 = runner.invoke(main, ["info", str(src)]).output
    info16 = runner.invoke(main, ["info", str(dst)]).output
    n_hh, rest = 3 * 16 * 16, 3 * 16 * 4 + 2 * 3 * 16 + 16 + 1
    assert f"weights:        float32, {4 * (n_hh + rest)} bytes" in info32
    assert f"weights:        float32, W_hh bfloat16, {2 * n_hh + 4 * rest} bytes" in info16


def test_a_weight_that_rounds_to_inf_is_refused():
    cfg = edgegru.GRUConfig(input_size=1, hidden_size=4, recurrent_dtype="bfloat16")
    weights = edgegru.GRUWeights.random(cfg)
    weights.arrays["l0.w_hh"][0, 0] = np.finfo(np.float32).max
    with pytest.raises(edgegru.ModelFormatError, match="array l0.w_hh does not fit bfloat16"):
        edgegru.Model(cfg, weights)


def test_config_refuses_other_dtypes():
    with pytest.raises(ValueError, match="recurrent_dtype must be one of"):
        edgegru.GRUConfig(input_size=1, hidden_size=4, recurrent_dtype="int8")


@pytest.mark.parametrize("kw", [
    dict(hidden_size=96, hidden_sizes=(128, 96), num_layers=2, output_size=1),
    dict(hidden_size=130, bidirectional=True, num_layers=2, output_size=1),
    dict(hidden_size=100, reverse=True, output_size=3, head_hidden=((8, "relu"),))])
def test_other_stacks_compute_the_float32_model_of_the_rounded_weights(kw):
    """Layers of different widths, bidirectional, reverse with a deeper head: a batch, bitwise
    the float32 model of the rounded W_hh."""
    cfg = edgegru.GRUConfig(input_size=4, **kw)
    narrow = edgegru.Model(dataclasses.replace(cfg, recurrent_dtype="bfloat16"),
                           edgegru.GRUWeights.random(cfg, seed=3))
    X = inputs(120, seed=1)
    Xb = np.stack([X, X[::-1]])
    assert np.array_equal(narrow.run(Xb), edgegru.Model(cfg, narrow.weights).run(Xb))
