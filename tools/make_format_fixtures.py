"""Write tests/data/formats/: small model files in foreign formats, made by the real tools, and
what those tools compute on a seeded input (expected.npz), so the import tests need none of them.

    pip install torch==2.13.0 onnx onnxruntime onnxscript safetensors keras==3.15.1 h5py
    python tools/make_format_fixtures.py

Keras runs on its PyTorch backend (KERAS_BACKEND=torch), so TensorFlow is not needed.
Every weight comes from torch.manual_seed / np.random.default_rng, so the files are reproducible.
"""
import json
import os
import sys
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "formats")
T, B = 12, 2
expected = {}


def record(name, X, Y):
    expected[name + ".X"] = np.asarray(X, np.float32)
    expected[name + ".Y"] = np.asarray(Y, np.float32)
    print(f"{name:28s} X {str(np.shape(X)):14s} Y {np.shape(Y)}")


class GRUWithHead(torch.nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, output_size, bidirectional=False):
        super().__init__()
        self.gru = torch.nn.GRU(input_size, hidden_size, num_layers=num_layers,
                                batch_first=True, bidirectional=bidirectional)
        self.fc = torch.nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y)


def torch_fixtures():
    torch.manual_seed(0)
    # the model: nn.GRU(10, 20, num_layers=2, batch_first=True) + nn.Linear(20, 1)
    gru2 = GRUWithHead(10, 20, 2, 1).eval()
    X = torch.randn(B, T, 10)
    with torch.no_grad():
        Y = gru2(X)
    torch.save(gru2.state_dict(), f"{OUT}/gru2_linear.pt")
    record("gru2_linear", X, Y)

    # the same weights stored as float64 and as bfloat16 (expected: torch on the rounded weights)
    for dtype, tag in ((torch.float64, "f64"), (torch.bfloat16, "bf16"), (torch.float16, "f16")):
        sd = {k: v.to(dtype) for k, v in gru2.state_dict().items()}
        torch.save(sd, f"{OUT}/gru2_{tag}.pt")
        m = GRUWithHead(10, 20, 2, 1).eval()
        m.load_state_dict({k: v.float() for k, v in sd.items()})
        with torch.no_grad():
            record(f"gru2_{tag}", X, m(X))

    # tensors that are views of larger storages: offsets and transposed strides
    sd = gru2.state_dict()
    big = torch.randn(10_000)
    views = {}
    offset = 17
    for k, v in sd.items():
        if v.ndim == 2 and k.endswith("weight_hh_l1"):
            views[k] = v.t().contiguous().t()          # stride (1, rows): a transposed view
        else:
            n = v.numel()
            big[offset:offset + n] = v.reshape(-1)
            views[k] = big[offset:offset + n].view(v.shape)
            offset += n + 5
    torch.save(views, f"{OUT}/gru2_views.pt")
    record("gru2_views", X, Y)

    # the file a big-endian machine writes: byteorder "big", every storage byte-swapped
    _big_endian_copy(f"{OUT}/gru2_linear.pt", f"{OUT}/gru2_bigendian.pt")
    record("gru2_bigendian", X, Y)

    # 2-layer bidirectional GRU with a head, a checkpoint dict around the state dict
    bi = GRUWithHead(3, 8, 2, 2, bidirectional=True).eval()
    Xb = torch.randn(B, T, 3)
    with torch.no_grad():
        record("gru_bidir", Xb, bi(Xb))
    torch.save({"epoch": 7, "model": bi.state_dict(), "note": "checkpoint"},
               f"{OUT}/gru_bidir_checkpoint.pth")

    # a GRUCell (no head): the output is the hidden state
    cell = torch.nn.GRUCell(4, 6)
    Xc = torch.randn(T, 4)
    h, hs = torch.zeros(6), []
    with torch.no_grad():
        for x in Xc:
            h = cell(x, h)
            hs.append(h)
    torch.save(cell.state_dict(), f"{OUT}/grucell.pt")
    record("grucell", Xc, torch.stack(hs))

    # files that must be refused with a message: a whole pickled module, a legacy file
    torch.save(torch.nn.GRU(2, 3), f"{OUT}/whole_module.pt")
    torch.save(torch.nn.GRU(2, 3).state_dict(), f"{OUT}/legacy.pt",
               _use_new_zipfile_serialization=False)

    # safetensors and a .npz of the same state dict
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in gru2.state_dict().items()},
              f"{OUT}/gru2_linear.safetensors")
    np.savez(f"{OUT}/gru2_linear_state_dict.npz",
             **{k: v.numpy() for k, v in gru2.state_dict().items()})

    # ONNX, from the legacy TorchScript exporter (dynamo=False: no onnxscript needed)
    torch.onnx.export(gru2, (X,), f"{OUT}/gru2_linear.onnx", dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    torch.onnx.export(bi, (Xb,), f"{OUT}/gru_bidir.onnx", dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}})
    # and from the torch.export-based exporter (the default since PyTorch 2.9; needs onnxscript)
    for model, x, stem in ((gru2, X, "gru2_linear"), (bi, Xb, "gru_bidir")):
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"],
                                    output_names=["y"])
        program.save(f"{OUT}/{stem}_dynamo.onnx")


def _big_endian_copy(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        sd = torch.load(src)
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(info.filename, data)
    assert all(v.dtype == torch.float32 for v in sd.values())


def keras_fixtures():
    import keras
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, T, 5)).astype(np.float32)

    def bias_noise(model):  # Keras initialises biases to zero: make them matter
        for layer in model.layers:
            for w in layer.weights:
                if "bias" in w.path:
                    w.assign(rng.uniform(-0.5, 0.5, w.shape).astype(np.float32))

    m = keras.Sequential([keras.Input((None, 5)),
                          keras.layers.GRU(16, return_sequences=True),
                          keras.layers.GRU(16, return_sequences=True),
                          keras.layers.Dense(1)])
    bias_noise(m)
    m.save(f"{OUT}/keras_gru2.keras")
    m.save_weights(f"{OUT}/keras_gru2.weights.h5")
    record("keras_gru2", X, m.predict(X, verbose=0))

    inp = keras.Input((None, 5))
    h = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True,
                                                    reset_after=False))(inp)
    out = keras.layers.Dense(2, activation="sigmoid")(h)
    m = keras.Model(inp, out)
    bias_noise(m)
    m.save(f"{OUT}/keras_bidir_reset_before.keras")
    record("keras_bidir_reset_before", X, m.predict(X, verbose=0))

    # hard_sigmoid gates (Keras 3: relu6(x + 3) / 6), with weights big enough that gates
    # saturate, so the slope matters; in the .keras zip and in the legacy HDF5 format
    def scale(model, factor=3.0):
        for layer in model.layers:
            for w in layer.weights:
                if "kernel" in w.path:
                    w.assign(np.asarray(w.numpy()) * factor)

    m = keras.Sequential([keras.Input((None, 5)),
                          keras.layers.GRU(4, recurrent_activation="hard_sigmoid",
                                           return_sequences=True),
                          keras.layers.Dense(1)])
    bias_noise(m)
    scale(m)
    m.save(f"{OUT}/keras_hard_sigmoid.keras")
    record("keras_hard_sigmoid", X, m.predict(X, verbose=0))

    inp = keras.Input((None, 5))
    h = inp
    for _ in range(2):
        h = keras.layers.Bidirectional(keras.layers.GRU(6, recurrent_activation="hard_sigmoid",
                                                        reset_after=False,
                                                        return_sequences=True))(h)
    out = keras.layers.Dense(2, activation="sigmoid")(h)
    m = keras.Model(inp, out)
    bias_noise(m)
    scale(m)
    m.save(f"{OUT}/keras3_legacy_hard_sigmoid.h5")          # legacy HDF5, as Keras 3 writes it
    record("keras3_legacy_hard_sigmoid", X, m.predict(X, verbose=0))


def write_expected(out, expected):
    """expected.npz in ``out``, with the versions of the tools that computed it."""
    expected["versions"] = np.array(json.dumps({
        "torch": torch.__version__, "keras": __import__("keras").__version__,
        "onnx": __import__("onnx").__version__}))
    np.savez_compressed(f"{out}/expected.npz", **expected)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {len(os.listdir(out))} files to {out} ({total / 1024:.0f} KiB)")


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    torch_fixtures()
    keras_fixtures()
    write_expected(OUT, expected)


if __name__ == "__main__":
    sys.exit(main())
