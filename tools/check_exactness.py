"""Sweep edgegru against PyTorch nn.GRU (float32, default init, inputs ~ N(0, 1)) and print the
max abs difference of outputs and final states per configuration.

    pip install torch==2.13.0
    python tools/check_exactness.py [--T 1000] [--backend numba|numpy]
"""
import argparse
import itertools

import numpy as np
import torch

import edgegru


def one(I, H, L, bias, bidirectional, batch, T, backend, seed):
    torch.manual_seed(seed)
    gru = torch.nn.GRU(I, H, num_layers=L, bias=bias, bidirectional=bidirectional,
                       batch_first=True)
    model = edgegru.from_state_dict(gru.state_dict(), backend=backend)
    X = torch.randn(batch or 1, T, I)
    h0 = 0.5 * torch.randn(L * (2 if bidirectional else 1), batch or 1, H)
    with torch.no_grad():
        Y_ref, h_ref = gru(X, h0)
    if batch:
        Y, h_n = model.run(X.numpy(), h0=h0.numpy(), return_state=True)
    else:
        model.state = h0[:, 0].numpy()
        Y, h_n = model.run(X[0].numpy())[None], model.state[:, None]
    return (float(np.abs(Y - Y_ref.numpy()).max()), float(np.abs(h_n - h_ref.numpy()).max()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--backend", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    grid = itertools.product([1, 2, 3], [8, 64, 256], [1, 32])
    for seed, (L, H, I) in enumerate(grid):
        rows.append((I, H, L, True, False, 0))
    rows += [(4, 64, 2, False, False, 0), (5, 32, 2, True, True, 0), (4, 64, 2, True, False, 8),
             (3, 16, 3, True, True, 4),
             # sizes whose rows are padded to cache lines (kernels.row_stride), blocked past 64
             (4, 60, 1, True, False, 0), (5, 72, 2, False, False, 0), (7, 100, 2, True, True, 3),
             (3, 200, 1, True, False, 4)]
    worst = 0.0
    print(f"{'I':>3} {'H':>4} {'L':>2} {'bias':>5} {'bidir':>5} {'B':>2}  {'max|dY|':>9} {'max|dh|':>9}")
    for seed, (I, H, L, bias, bi, B) in enumerate(rows):
        dy, dh = one(I, H, L, bias, bi, B, args.T, args.backend, seed)
        worst = max(worst, dy, dh)
        print(f"{I:>3} {H:>4} {L:>2} {bias!s:>5} {bi!s:>5} {B:>2}  {dy:9.2e} {dh:9.2e}")
    print(f"worst: {worst:.2e} over T={args.T} ({'within' if worst <= 1e-5 else 'OUTSIDE'} 1e-5)")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
