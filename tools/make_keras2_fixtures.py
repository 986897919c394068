"""Write Keras 2 (tf_keras) model files into tests/data/formats/, plus what Keras 2 computes on a
seeded input (expected_keras2.npz), so edgegru's Keras loader can be tested against files that
Keras 2 really writes -- legacy HDF5 full models, a weights-only HDF5, and tf_keras' `.keras` zip --
without TensorFlow installed at test time.

Keras 2 defines hard_sigmoid as clip(0.2*x + 0.5, 0, 1); Keras 3 as relu6(x + 3) / 6. The
hard_sigmoid fixtures use weights big enough that the gates saturate, and the script checks with
numpy that the wrong slope (1/6) or the logistic sigmoid would miss Keras' output by far more than
1e-5.

Set up an isolated venv outside the repo (the system site-packages stay untouched) and run:

    python -m venv /tmp/tfk-venv
    /tmp/tfk-venv/bin/pip install tensorflow-cpu==2.21.0 tf_keras==2.21.0 h5py==3.14.0
    TF_USE_LEGACY_KERAS=1 /tmp/tfk-venv/bin/python tools/make_keras2_fixtures.py

Written with tensorflow-cpu 2.21.0, tf_keras 2.21.0, h5py 3.14.0, numpy 2.4.6, Python 3.11.7
(the files record keras_version "2.21.0", backend "tensorflow").
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

assert keras.__version__.startswith("2."), keras.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "formats")
B, T = 2, 12
expected = {}
rng = np.random.default_rng(20240611)


def inputs(n_in):
    return (rng.standard_normal((B, T, n_in)) * 2.0).astype(np.float32)


def record(name, model, X):
    Y = model.predict(X, verbose=0).astype(np.float32)
    expected[name + ".X"] = X
    expected[name + ".Y"] = Y
    print(f"{name:24s} X {str(X.shape):12s} Y {Y.shape}")
    return Y


# ---- numpy reference of Keras 2's GRU, to check the hard_sigmoid fixture really discriminates ----
def np_gru(x, kernel, rkernel, bias, act, reset_after, go_backwards=False):
    H = rkernel.shape[0]
    if reset_after:
        bi, br = bias[0], bias[1]
    else:
        bi, br = bias, np.zeros_like(bias)
    h = np.zeros((x.shape[0], H), np.float64)
    steps = range(x.shape[1])[::-1] if go_backwards else range(x.shape[1])
    out = np.zeros((x.shape[0], x.shape[1], H))
    for t in steps:
        xi = x[:, t] @ kernel + bi
        z = act(xi[:, :H] + h @ rkernel[:, :H] + br[:H])
        r = act(xi[:, H:2 * H] + h @ rkernel[:, H:2 * H] + br[H:2 * H])
        if reset_after:
            hh = np.tanh(xi[:, 2 * H:] + r * (h @ rkernel[:, 2 * H:] + br[2 * H:]))
        else:
            hh = np.tanh(xi[:, 2 * H:] + (r * h) @ rkernel[:, 2 * H:])
        h = z * h + (1 - z) * hh
        out[:, t] = h
    return out


ACTS = {
    "hard_sigmoid_keras2": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
    "hard_sigmoid_keras3": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
}


def check_single_gru(model, X, Y, reset_after):
    gru, dense = model.layers[0], model.layers[1]
    k, rk, b = [w.astype(np.float64) for w in gru.get_weights()]
    dk, db = dense.get_weights()
    for name, act in ACTS.items():
        y = np_gru(X.astype(np.float64), k, rk, b, act, reset_after) @ dk + db
        print(f"    numpy GRU with {name:20s} max |diff| vs Keras = {np.abs(y - Y).max():.3g}")
        if name == "hard_sigmoid_keras2":
            assert np.abs(y - Y).max() < 1e-4
        else:
            assert np.abs(y - Y).max() > 1e-3, name
    # how many gate pre-activations land in the saturated region of 0.2x+0.5 (|x| > 2.5)
    xi = X.astype(np.float64) @ k + b
    H = rk.shape[0]
    sat = (np.abs(xi[..., :2 * H]) > 2.5).mean()
    print(f"    fraction of z/r input pre-activations with |x|>2.5: {sat:.2f}")


def main():
    keras.utils.set_random_seed(1234)
    os.makedirs(OUT, exist_ok=True)

    # 1. GRU(8, hard_sigmoid, reset_after=False) + Dense(2): the old standalone-Keras default GRU.
    m1 = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.GRU(8, recurrent_activation="hard_sigmoid", reset_after=False,
                         return_sequences=True),
        keras.layers.Dense(2),
    ])
    k, rk, b = m1.layers[0].get_weights()
    b = rng.uniform(-0.5, 0.5, b.shape).astype(np.float32)
    m1.layers[0].set_weights([k * 3.0, rk * 3.0, b])
    X1 = inputs(3)
    Y1 = record("keras2_hard_sigmoid", m1, X1)
    check_single_gru(m1, X1, Y1, reset_after=False)
    m1.save(os.path.join(OUT, "keras2_hard_sigmoid.h5"), save_format="h5")
    try:
        m1.save(os.path.join(OUT, "keras2_hard_sigmoid.keras"))
        expected["keras2_hard_sigmoid_keras.X"] = X1
        expected["keras2_hard_sigmoid_keras.Y"] = Y1
    except Exception as e:  # pragma: no cover - depends on the tf_keras version
        print("tf_keras cannot save .keras:", repr(e))

    # 2. Two stacked GRU(6) with Keras 2 defaults (sigmoid, reset_after=True) + Dense(1, sigmoid).
    m2 = keras.Sequential([
        keras.Input((None, 4)),
        keras.layers.GRU(6, return_sequences=True),
        keras.layers.GRU(6, return_sequences=True),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    for layer in m2.layers[:2]:
        k, rk, b = layer.get_weights()
        layer.set_weights([k * 2.0, rk * 2.0, rng.uniform(-0.5, 0.5, b.shape).astype(np.float32)])
    X2 = inputs(4)
    Y2 = record("keras2_gru2_sigmoid", m2, X2)
    # numpy check of the stacked model (reset_after=True, logistic sigmoid)
    h = X2.astype(np.float64)
    for layer in m2.layers[:2]:
        h = np_gru(h, *[w.astype(np.float64) for w in layer.get_weights()],
                   ACTS["sigmoid"], reset_after=True)
    dk, db = m2.layers[2].get_weights()
    y = ACTS["sigmoid"](h @ dk + db)
    print(f"    numpy reference max |diff| = {np.abs(y - Y2).max():.3g}")
    assert np.abs(y - Y2).max() < 1e-4
    m2.save(os.path.join(OUT, "keras2_gru2_sigmoid.h5"), save_format="h5")

    # 3. weights-only legacy HDF5 of the same model (no model_config in the file).
    m2.save_weights(os.path.join(OUT, "keras2_weights_only.h5"), save_format="h5")
    expected["keras2_weights_only.X"] = X2
    expected["keras2_weights_only.Y"] = Y2

    # 4. Bidirectional(GRU(5, hard_sigmoid)) + Dense(2): default merge_mode="concat".
    m3 = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True,
                                                    recurrent_activation="hard_sigmoid")),
        keras.layers.Dense(2),
    ])
    ws = m3.layers[0].get_weights()  # fwd kernel, rkernel, bias, bwd kernel, rkernel, bias
    ws = [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) if i in (2, 5) else w * 3.0
          for i, w in enumerate(ws)]
    m3.layers[0].set_weights(ws)
    X3 = inputs(3)
    Y3 = record("keras2_bidir", m3, X3)
    w = [a.astype(np.float64) for a in m3.layers[0].get_weights()]
    dk, db = m3.layers[1].get_weights()
    for name, act in ACTS.items():
        f = np_gru(X3.astype(np.float64), *w[:3], act, reset_after=True)
        bw = np_gru(X3.astype(np.float64), *w[3:], act, reset_after=True, go_backwards=True)
        y = np.concatenate([f, bw], -1) @ dk + db
        d = np.abs(y - Y3).max()
        print(f"    numpy bidir with {name:20s} max |diff| vs Keras = {d:.3g}")
        assert (d < 1e-4) if name == "hard_sigmoid_keras2" else (d > 1e-3), name
    m3.save(os.path.join(OUT, "keras2_bidir.h5"), save_format="h5")

    expected["versions"] = np.array(
        f"tensorflow={tf.__version__} tf_keras={keras.__version__} h5py={h5py.__version__} "
        f"numpy={np.__version__}")
    np.savez(os.path.join(OUT, "expected_keras2.npz"), **expected)
    print(expected["versions"])
    for fn in sorted(os.listdir(OUT)):
        if fn.startswith("keras2_") or fn == "expected_keras2.npz":
            print(f"  {fn:28s} {os.path.getsize(os.path.join(OUT, fn)):7d} bytes")


if __name__ == "__main__":
    main()
