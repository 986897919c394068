"""edgegru, PyTorch and ONNX Runtime on the same weights, single-threaded, in one process.

For each hidden size (input 4, one layer, a linear head with one output, float32) it times:

- **step**: one sample per call from Python, the state fed back (edgegru ``Model.step(x,
  out=buf)``, and under the table ``Model.stepper(x, out)``, the same without per-call
  checks; PyTorch ``nn.GRUCell`` + ``nn.Linear``; ONNX Runtime a T=1 ``GRU`` graph with
  ``initial_h`` in and ``Y_h`` out);
- **sequence**: a whole sequence of T steps per call, reported per time step (edgegru
  ``Model.run``; PyTorch ``nn.GRU`` + ``nn.Linear``; ONNX Runtime a ``GRU`` graph);
- **batch**: B independent sequences at once, reported per time step of the whole batch.

The ONNX graph is written here with ``onnx.helper`` (gate order z | r | h, linear_before_reset=1,
which is PyTorch's variant), so no exporter is involved. Every peer's output is compared with
edgegru's (column "max diff"). A peer that is not installed is skipped. Each time is the best
of 15 timings (``--median``: their median), taken in turns (each round times every peer
once), so that a shared machine getting busier or quieter during the run slows every peer alike
and the ratios hold.

RTNeural (C++, https://github.com/jatinchowdhury18/RTNeural) joins with ``--rtneural DIR``, a
checkout of it (with its Eigen and xsimd submodules under ``modules/``): the same model as
``ModelT<float, 4, 1, GRULayerT, DenseT>`` from ``tools/rtneural_bench.cpp``, built here with g++
``-O3 -march=native``, one binary per hidden size and backend (Eigen, xsimd), kept in
``~/.cache/edgegru/rtneural``. It calls ``forward()`` once per sample from C++, so it appears in
the sequence rows (time per step); it times itself (a separate process), in the same turns.

    pip install onnx onnxruntime torch==2.13.0
    python tools/bench_compare.py                 # the table in BENCHMARKS.md
    python tools/bench_compare.py --rtneural ../shared/peers/rtneural
    python tools/bench_compare.py --sizes 16,64 --quick
    python tools/bench_compare.py --json > results.json
    python tools/bench_compare.py --weights-dtype bf16   # + edgegru with W_hh in bfloat16
    python tools/bench_compare.py --weights-dtype bf16 --median --rtneural ../shared/peers/rtneural
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import edgegru  # noqa: E402


def best_of(fn, repeats, number):
    """Seconds per call of fn(), the best of `repeats` timings of `number` calls each."""
    return best_of_each({"fn": (fn, number)}, repeats)["fn"]


def best_of_each(timed, repeats, statistic=min):
    """best_of for several functions, {name: (fn, number)} -> {name: seconds per call}, timed
    in turns: each round times every function once, so that when the machine gets busier or
    quieter during a measurement (a shared machine drifts by 30-50 % within minutes), every
    peer sees the same drift, and the ratios between them hold. Each timing starts with one
    untimed call, so that no peer pays for the caches another one has just emptied.

    The best rather than the median: on a shared machine other processes only ever add time,
    so the minimum is the figure that repeats from run to run. statistic: another one of the
    repeats' timings (--median: np.median)."""
    times = {name: [] for name in timed}
    turns = list(timed.items())
    for r in range(repeats):
        # every other round in the other order: the first function timed in a round can be
        # slower for coming first (after another peer's work), which would bias a median
        for name, (fn, number) in turns if r % 2 == 0 else turns[::-1]:
            if isinstance(fn, SelfTimed):
                times[name].append(fn())
                continue
            fn()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return {name: float(statistic(t)) for name, t in times.items()}


class SelfTimed:
    """A peer's timing that the peer measures itself (a separate process): calling it returns
    seconds per call, taken in best_of_each's turns like the others."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        return self.fn()


def calls_for(fn, seconds=0.02):
    """How many calls of fn() take about `seconds` (at least one): long enough a timing that a
    single interruption by another process does not decide it."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, round(seconds / max(time.perf_counter() - t0, 1e-9)))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# -- the peers --------------------------------------------------------------------------------

class EdgeGRU:
    name = "edgegru"

    def __init__(self, config, weights):
        self.model = edgegru.Model(config, weights)

    def stepper(self, x):
        model, out = self.model, np.empty(self.model.output_size, np.float32)
        model.reset()
        return lambda: model.step(x, out=out), lambda: out.copy()

    def sequence(self, X):
        model = self.model

        def run():
            model.reset()
            return model.run(X)
        return run

    def batch(self, X):
        return lambda: self.model.run(X)


class EdgeGRUBf16(EdgeGRU):
    """edgegru with W_hh held in bfloat16 (--weights-dtype bf16): its max diff is against the
    float32 model, its times in the same turns."""
    name = "edgegru bf16"

    def __init__(self, config, weights):
        import dataclasses
        super().__init__(dataclasses.replace(config, recurrent_dtype="bfloat16"), weights)


class Torch:
    name = "PyTorch"

    def __init__(self, config, weights):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        a = {k: torch.from_numpy(v) for k, v in weights.arrays.items()}
        I, H, O = config.input_size, config.hidden_size, config.output_size
        self.gru = torch.nn.GRU(I, H, batch_first=True).eval()
        self.gru.load_state_dict({"weight_ih_l0": a["l0.w_ih"], "weight_hh_l0": a["l0.w_hh"],
                                  "bias_ih_l0": a["l0.b_ih"], "bias_hh_l0": a["l0.b_hh"]})
        self.cell = torch.nn.GRUCell(I, H).eval()
        self.cell.load_state_dict({"weight_ih": a["l0.w_ih"], "weight_hh": a["l0.w_hh"],
                                   "bias_ih": a["l0.b_ih"], "bias_hh": a["l0.b_hh"]})
        self.fc = torch.nn.Linear(H, O).eval()
        self.fc.load_state_dict({"weight": a["head.weight"], "bias": a["head.bias"]})
        self.hidden_size = H

    def stepper(self, x):
        torch, cell, fc = self.torch, self.cell, self.fc
        xt = torch.from_numpy(x)[None]
        state = {"h": torch.zeros(1, self.hidden_size), "y": None}

        def step():
            with torch.inference_mode():
                state["h"] = cell(xt, state["h"])
                state["y"] = fc(state["h"])
        return step, lambda: state["y"][0].numpy().copy()

    def sequence(self, X):
        torch, gru, fc = self.torch, self.gru, self.fc
        xt = torch.from_numpy(X)[None]

        def run():
            with torch.inference_mode():
                return fc(gru(xt)[0])[0].numpy()
        return run

    def batch(self, X):
        torch, gru, fc = self.torch, self.gru, self.fc
        xt = torch.from_numpy(X)

        def run():
            with torch.inference_mode():
                return fc(gru(xt)[0]).numpy()
        return run


class OnnxRuntime:
    name = "ONNX Runtime"

    def __init__(self, config, weights):
        import onnxruntime
        self.ort = onnxruntime
        self.config, self.weights = config, weights

    def _session(self, T, B):
        """A GRU + linear head graph for inputs X (T, B, I), initial_h (1, B, H)."""
        from onnx import TensorProto, helper, numpy_helper
        c, a = self.config, self.weights.arrays
        H = c.hidden_size

        def zrh(m):            # edgegru/PyTorch gate blocks r | z | n -> ONNX z | r | h
            return np.concatenate([m[H:2 * H], m[:H], m[2 * H:]])[None]
        inits = [numpy_helper.from_array(zrh(a["l0.w_ih"]), "W"),
                 numpy_helper.from_array(zrh(a["l0.w_hh"]), "R"),
                 numpy_helper.from_array(np.concatenate([zrh(a["l0.b_ih"]),
                                                         zrh(a["l0.b_hh"])], axis=1), "B"),
                 numpy_helper.from_array(np.ascontiguousarray(a["head.weight"].T), "W_head"),
                 numpy_helper.from_array(a["head.bias"], "b_head"),
                 numpy_helper.from_array(np.array([1], np.int64), "axis1")]
        nodes = [helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                                  hidden_size=H, linear_before_reset=1),
                 helper.make_node("Squeeze", ["Y", "axis1"], ["Y_seq"]),      # (T, B, H)
                 helper.make_node("MatMul", ["Y_seq", "W_head"], ["Y_lin"]),
                 helper.make_node("Add", ["Y_lin", "b_head"], ["out"])]      # (T, B, O)
        f = TensorProto.FLOAT
        graph = helper.make_graph(
            nodes, "gru", [helper.make_tensor_value_info("X", f, [T, B, c.input_size]),
                           helper.make_tensor_value_info("h0", f, [1, B, H])],
            [helper.make_tensor_value_info("out", f, [T, B, c.output_size]),
             helper.make_tensor_value_info("Y_h", f, [1, B, H])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return self.ort.InferenceSession(model.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"])

    def stepper(self, x):
        session = self._session(1, 1)
        feed = {"X": x.reshape(1, 1, -1), "h0": np.zeros((1, 1, self.config.hidden_size),
                                                         np.float32)}
        state = {}

        def step():
            state["y"], feed["h0"] = session.run(None, feed)
        return step, lambda: state["y"].reshape(-1).copy()

    def sequence(self, X):
        session = self._session(X.shape[0], 1)
        feed = {"X": X[:, None], "h0": np.zeros((1, 1, self.config.hidden_size), np.float32)}
        return lambda: session.run(None, feed)[0][:, 0]

    def batch(self, X):
        B, T, _ = X.shape
        session = self._session(T, B)
        feed = {"X": np.ascontiguousarray(X.transpose(1, 0, 2)),
                "h0": np.zeros((1, B, self.config.hidden_size), np.float32)}
        return lambda: session.run(None, feed)[0].transpose(1, 0, 2)


class RTNeural:
    """RTNeural's compile-time model (tools/rtneural_bench.cpp) for one hidden size and backend,
    built from the checkout given with --rtneural."""
    FLAGS = {"Eigen": ["-DRTNEURAL_USE_EIGEN=1", "-DRTNEURAL_DEFAULT_ALIGNMENT=32",
                       "-I{src}/modules/Eigen"],
             "xsimd": ["-DRTNEURAL_USE_XSIMD=1", "-DRTNEURAL_DEFAULT_ALIGNMENT=64",
                       "-I{src}/modules/xsimd/include"]}
    HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rtneural_bench.cpp")

    def __init__(self, config, weights, binary, backend):
        self.name = f"RTNeural {backend}"
        self.binary, self.H = binary, config.hidden_size
        self.tmp = tempfile.mkdtemp(prefix="edgegru-rtn-")
        a = weights.arrays
        self.weights = os.path.join(self.tmp, "weights.bin")
        np.concatenate([a[k].reshape(-1) for k in ("l0.w_ih", "l0.w_hh", "l0.b_ih", "l0.b_hh",
                                                   "head.weight", "head.bias")]
                       ).astype(np.float32).tofile(self.weights)

    def _run(self, *args):
        out = subprocess.run([self.binary, args[0], str(self.H), self.weights, *map(str, args[1:])],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{self.binary}: {out.stderr.strip() or out.returncode}")
        return out.stdout

    def sequence(self, X):
        """(the outputs for X, T, 1), and a SelfTimed of T forward() calls."""
        T = len(X)
        xs, ys = os.path.join(self.tmp, "x.bin"), os.path.join(self.tmp, "y.bin")
        np.ascontiguousarray(X, np.float32).tofile(xs)
        self._run("check", xs, T, ys)
        Y = np.fromfile(ys, np.float32).reshape(T, 1)
        n = {"calls": 20000}

        def timed():                    # about 50 ms of forward() calls per timing
            ns = float(self._run("bench", n["calls"]).split()[0])
            n["calls"] = max(20000, int(0.05e9 / max(ns, 1.0)))
            return ns * 1e-9 * T
        return Y, SelfTimed(timed)

    @classmethod
    def build(cls, source, hidden_sizes):
        """{(backend, H): binary}, built now or found in ~/.cache/edgegru/rtneural."""
        source = os.path.abspath(source)
        if not os.path.isfile(os.path.join(source, "RTNeural", "RTNeural.h")):
            sys.exit(f"--rtneural {source}: no RTNeural/RTNeural.h there (give the checkout's "
                     f"top directory, with its modules/)")
        base = ["g++", "-O3", "-march=native", "-std=c++17", "-DNDEBUG", f"-I{source}"]
        with open(cls.HARNESS, "rb") as f:
            key = hashlib.sha256(f.read() + " ".join(base).encode()).hexdigest()[:12]
        cache = os.path.join(os.path.expanduser("~"), ".cache", "edgegru", "rtneural", key)
        os.makedirs(cache, exist_ok=True)
        binaries, jobs = {}, []
        for H in hidden_sizes:
            for backend, flags in cls.FLAGS.items():
                binary = os.path.join(cache, f"rtn_{backend.lower()}_{H}")
                binaries[backend, H] = binary
                if not os.path.exists(binary):
                    extra = ["-DEIGEN_STACK_ALLOCATION_LIMIT=0"] if H >= 128 else []
                    jobs.append((binary, base + [f.format(src=source) for f in flags] + extra
                                 + [f"-DHSIZE={H}", cls.HARNESS, "-o", binary + ".tmp"]))
        if jobs:
            print(f"building RTNeural for {len(jobs)} (backend, H) pairs into {cache} ...",
                  file=sys.stderr)
        running = []
        for i, (binary, cmd) in enumerate(jobs):
            running.append((binary, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
            if len(running) == (os.cpu_count() or 1) or i == len(jobs) - 1:
                for binary, proc in running:
                    _, err = proc.communicate()
                    if proc.returncode:
                        sys.exit(f"building {os.path.basename(binary)} failed:\n{err[-2000:]}")
                    os.replace(binary + ".tmp", binary)
                running = []
        return binaries


PEERS = [EdgeGRU, OnnxRuntime, Torch]
MODULES = {"ONNX Runtime": ("onnxruntime", "onnx"), "PyTorch": ("torch",)}


def available_peers(weights_dtype="f32"):
    import importlib.util
    peers, skipped = [], []
    for peer in PEERS[:1] + [EdgeGRUBf16] * (weights_dtype == "bf16") + PEERS[1:]:
        missing = [m for m in MODULES.get(peer.name, ()) if importlib.util.find_spec(m) is None]
        (skipped if missing else peers).append((peer, missing))
    return [p for p, _ in peers], {p.name: m for p, m in skipped}


# -- the measurements -------------------------------------------------------------------------

def measure(hidden_sizes, input_size=4, T=2000, steps=20000, batch=32, batch_hidden=64,
            batch_T=500, repeats=15, rtneural=None, weights_dtype="f32", statistic=min):
    peers, skipped = available_peers(weights_dtype)
    if rtneural and input_size != 4:
        sys.exit("--rtneural: the RTNeural harness is built for input size 4")
    binaries = RTNeural.build(rtneural, hidden_sizes) if rtneural else {}
    rng = np.random.default_rng(0)
    rows = []
    for H in hidden_sizes:
        config = edgegru.GRUConfig(input_size=input_size, hidden_size=H, output_size=1)
        weights = edgegru.GRUWeights.random(config, seed=H)
        built = [peer(config, weights) for peer in peers]
        x = rng.standard_normal(input_size).astype(np.float32)
        X = rng.standard_normal((T, input_size)).astype(np.float32)
        step_calls = max(200, steps * 64 // max(H, 64))
        for kind in ("step", "sequence"):
            row = {"kind": kind, "hidden_size": H, "input_size": input_size, "times": {},
                   "max_diff": {}}
            reference = None
            timed = {}
            for p in built:
                if kind == "step":
                    fn, result = p.stepper(x)
                    for _ in range(50):          # same number of steps for every peer, then
                        fn()                     # compare the outputs
                    y = result()
                    timed[p.name] = (fn, step_calls if p.name == "edgegru"
                                     else max(200, step_calls // 20))
                else:
                    fn = p.sequence(X)
                    y = fn()
                    timed[p.name] = (fn, calls_for(fn))
                if reference is None:
                    reference = y
                else:
                    row["max_diff"][p.name] = max_diff(y, reference)
            if kind == "sequence":      # RTNeural: forward() per sample from C++
                for backend in RTNeural.FLAGS if binaries else ():
                    rtn = RTNeural(config, weights, binaries[backend, H], backend)
                    y, timed[rtn.name] = rtn.sequence(X)
                    timed[rtn.name] = (timed[rtn.name], 1)
                    row["max_diff"][rtn.name] = max_diff(y, reference)
            if kind == "step":          # edgegru's check-free variant, for the note under the table
                model, out = built[0].model, np.empty(1, np.float32)
                timed["edgegru_stepper"] = (model.stepper(x, out), step_calls)
            seconds = best_of_each(timed, repeats, statistic)
            per = 1 if kind == "step" else T
            row["times"] = {name: seconds[name] / per for name in timed
                            if name != "edgegru_stepper"}
            if kind == "step":
                row["edgegru_stepper"] = seconds["edgegru_stepper"]
            rows.append(row)
    if batch:
        config = edgegru.GRUConfig(input_size=input_size, hidden_size=batch_hidden, output_size=1)
        weights = edgegru.GRUWeights.random(config, seed=batch)
        Xb = rng.standard_normal((batch, batch_T, input_size)).astype(np.float32)
        row = {"kind": f"batch B={batch}", "hidden_size": batch_hidden, "input_size": input_size,
               "times": {}, "max_diff": {}}
        reference = None
        timed = {}
        for peer in peers:
            fn = peer(config, weights).batch(Xb)
            y = fn()
            if reference is None:
                reference = y
            else:
                row["max_diff"][peer.name] = max_diff(y, reference)
            timed[peer.name] = (fn, calls_for(fn))
        row["times"] = {name: s / batch_T
                        for name, s in best_of_each(timed, repeats, statistic).items()}
        rows.append(row)
    return rows, skipped


def machine():
    import numba
    info = {"cpu": platform.processor() or platform.machine(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "edgegru": edgegru.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["cores"] = os.cpu_count()
    except OSError:
        pass
    for name in ("torch", "onnxruntime"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def _fmt(seconds):
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs" if seconds < 1e-5 else f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def table(rows):
    """A markdown table: time per step for every peer, and each peer's time over edgegru's."""
    names = list(dict.fromkeys(n for r in rows for n in r["times"]))   # every peer, in order
    others = names[1:]
    head = (["what", "H"] + names + [f"{n} / edgegru" for n in others]
            + ["max diff vs edgegru"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["times"]
        cells = [r["kind"], str(r["hidden_size"])] + [_fmt(t[n]) if n in t else "-"
                                                      for n in names]
        cells += [f"{t[n] / t['edgegru']:.2f}×" if n in t else "-" for n in others]
        cells.append(", ".join(f"{n} {v:.1e}" for n, v in r["max_diff"].items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,32,64,128,256",
                        help="hidden sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="batch size, 0 to skip")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--rtneural", metavar="DIR",
                        help="an RTNeural checkout: add it to the sequence rows (needs g++)")
    parser.add_argument("--weights-dtype", choices=["f32", "bf16"], default="f32",
                        help="bf16: add edgegru with W_hh in bfloat16 beside its float32")
    parser.add_argument("--median", action="store_true",
                        help="the median of the repeats rather than the best (a machine "
                             "loaded by other work)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kwargs = dict(T=200, steps=2000, batch_T=50, repeats=3) if args.quick else {}
    rows, skipped = measure(sizes, input_size=args.input_size, batch=args.batch,
                            rtneural=args.rtneural, weights_dtype=args.weights_dtype,
                            statistic=np.median if args.median else min, **kwargs)
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, "rows": rows, "skipped": skipped}, indent=1))
        return
    print("Per time step, float32, input %d, one layer, linear head with 1 output, "
          "single-threaded." % args.input_size)
    print("step: one sample per call from Python; sequence: T=2000 per call; batch: B "
          "sequences of T=500 per call, time per step of the whole batch.\n")
    print(table(rows))
    print()
    print("edgegru model.stepper(x, out)() (the same step without per-call checks): "
          + ", ".join(f"H={r['hidden_size']} {_fmt(r['edgegru_stepper'])}"
                      for r in rows if "edgegru_stepper" in r))
    print()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for name, missing in skipped.items():
        print(f"(skipped {name}: {', '.join(missing)} not installed)")


if __name__ == "__main__":
    main()
