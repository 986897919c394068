"""How close the sequence kernel is to the memory floor of this machine.

Every time step of a GRU reads the whole recurrent matrix W_hh (3H x H floats) once, and the
next step cannot start before this one ends. So no single-threaded float32 implementation can
take less per step than one read of 12 H^2 bytes from wherever they fit: L1 up to H≈48 on
a Zen 3 (32 KiB; H≈60 on a Zen 5, 48 KiB), L2 up to H≈200 (512 KiB; H≈280 with 1 MiB), L3
beyond. This prints, per H, the time of one such read
(a vectorised sum, reassociation allowed: the fastest read numba makes) next to
``Model.run``'s time per step, so a goal such as "3x ONNX Runtime" can be checked against what
memory allows before trying to meet it.

Two reads: the same direction every time, and alternating directions (forward, then backward),
which starts each read on what the previous one left in L1. Past L1 the second is the lower
floor (kernels._matvec alternates the order of its column panels for that reason).

    python tools/bench_floor.py                 # H = 16 32 64 128 256
    python tools/bench_floor.py --sizes 64,96
"""
import argparse
import os
import sys

import numpy as np
from numba import njit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import edgegru  # noqa: E402
from bench_compare import best_of  # noqa: E402  (tools/, beside this script)


@njit(fastmath=True, cache=True, inline="always")
def _sum(block):
    # two halves summed side by side: LLVM gives each reduction four vector accumulators, and
    # eight independent chains, not four, keep up with two loads per cycle from L1
    half = block.shape[0] // 2
    s0 = s1 = np.float32(0.0)
    for i in range(half):
        s0 += block[i]
        s1 += block[half + i]
    for i in range(2 * half, block.shape[0]):
        s0 += block[i]
    return s0 + s1


@njit(fastmath=True, cache=True)
def _read(a, reps):
    total = np.float32(0.0)
    for _ in range(reps):
        total += _sum(a)
    return total


@njit(fastmath=True, cache=True)
def _read_alternating(a, reps):
    # blocks of 1024 floats (4 KB), the blocks in alternating order, each read forward (a loop
    # that runs backward does not vectorise)
    total = np.float32(0.0)
    n = a.shape[0]
    blocks = (n + 1023) // 1024
    for r in range(reps):
        for k in range(blocks):
            b = 1024 * (k if r % 2 == 0 else blocks - 1 - k)
            total += _sum(a[b:min(n, b + 1024)])
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,32,64,128,256", help="hidden sizes")
    parser.add_argument("--seq-len", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'H':>5} {'W_hh':>9} {'one read of W_hh':>17} {'GB/s':>6} {'alternating':>12} "
          f"{'GB/s':>6} {'run() per step':>15} {'step / floor':>12}")
    for H in (int(h) for h in args.sizes.split(",")):
        w = np.ones(3 * H * H, np.float32)
        reps = max(10, int(2e8 // w.size))
        read = best_of(lambda: _read(w, reps), repeats=7, number=1) / reps
        alternating = best_of(lambda: _read_alternating(w, reps), repeats=7, number=1) / reps
        cfg = edgegru.GRUConfig(input_size=4, hidden_size=H, output_size=1)
        model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
        X = rng.standard_normal((args.seq_len, 4)).astype(np.float32)

        def run():
            model.reset()
            model.run(X)
        step = best_of(run, repeats=15, number=1) / args.seq_len
        floor = min(read, alternating)
        print(f"{H:>5} {w.nbytes / 1024:>7.1f}KB {read * 1e9:>14.0f} ns "
              f"{w.nbytes / read / 1e9:>6.1f} {alternating * 1e9:>9.0f} ns "
              f"{w.nbytes / alternating / 1e9:>6.1f} "
              f"{step * 1e9:>12.0f} ns {step / floor:>11.2f}x")


if __name__ == "__main__":
    main()
