"""The seeded reference cases shared by tools/make_reference.py (which runs PyTorch on them) and
the tests (which run edgegru on them and compare with what PyTorch wrote).

Weights and inputs come from a seeded NumPy generator, drawn the way PyTorch's default init draws
them (U(-1/sqrt(H), 1/sqrt(H)); inputs ~ N(0, 1)), so the committed file holds only PyTorch's
outputs and stays small.
"""
import dataclasses
import os

import numpy as np

REFERENCE_FILE = os.path.join(os.path.dirname(__file__), "data", "torch_reference.npz")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    head: int = 0            # nn.Linear(H * dirs, head) on every step, 0 for none
    T: int = 1000
    batch: int = 0           # 0: one sequence (T, I); B: (B, T, I), batch_first
    h0: bool = False         # start from a random state instead of zeros
    cell: bool = False       # nn.GRUCell stepped T times
    stride: int = 1          # keep every stride-th output row (big cases)
    seed: int = 0


CASES = [
    Case("l1_i1_h8", 1, 8, seed=1),
    Case("l2_i4_h64_head_h0", 4, 64, num_layers=2, head=4, h0=True, seed=2),
    Case("l3_i32_h256", 32, 256, num_layers=3, stride=25, seed=3),
    Case("l2_i3_h16_nobias", 3, 16, num_layers=2, bias=False, seed=4),
    Case("l1_i7_h128", 7, 128, stride=10, seed=5),
    Case("bidir_l2_i5_h32_head", 5, 32, num_layers=2, bidirectional=True, head=3, T=300, seed=6),
    Case("batch_l2_i4_h24", 4, 24, num_layers=2, T=200, batch=4, seed=7),
    Case("batch_bidir_l1_i2_h8_h0", 2, 8, bidirectional=True, T=50, batch=3, h0=True, seed=8),
    Case("cell_i6_h12", 6, 12, T=100, cell=True, seed=9),
]


def state_dict(case):
    """{PyTorch key: float32 array}, as nn.GRU (or nn.GRUCell) + nn.Linear would name them."""
    rng = np.random.default_rng(case.seed)
    H, D = case.hidden_size, 2 if case.bidirectional else 1
    k = 1.0 / np.sqrt(H)
    sd = {}
    for l in range(case.num_layers):
        in_size = case.input_size if l == 0 else H * D
        for d in range(D):
            sfx = "" if case.cell else f"_l{l}" + ("_reverse" if d else "")
            sd[f"gru.weight_ih{sfx}"] = rng.uniform(-k, k, (3 * H, in_size))
            sd[f"gru.weight_hh{sfx}"] = rng.uniform(-k, k, (3 * H, H))
            if case.bias:
                sd[f"gru.bias_ih{sfx}"] = rng.uniform(-k, k, 3 * H)
                sd[f"gru.bias_hh{sfx}"] = rng.uniform(-k, k, 3 * H)
    if case.head:
        kh = 1.0 / np.sqrt(H * D)
        sd["fc.weight"] = rng.uniform(-kh, kh, (case.head, H * D))
        sd["fc.bias"] = rng.uniform(-kh, kh, case.head)
    return {key: v.astype(np.float32) for key, v in sd.items()}


def inputs(case):
    """(X, h0): X (T, I) or (B, T, I); h0 (L*D, H) or (L*D, B, H), or None."""
    rng = np.random.default_rng(1000 + case.seed)
    shape = (case.batch, case.T, case.input_size) if case.batch else (case.T, case.input_size)
    X = rng.standard_normal(shape).astype(np.float32)
    h0 = None
    if case.h0:
        D = 2 if case.bidirectional else 1
        hshape = (case.num_layers * D,) + ((case.batch,) if case.batch else ()) + (case.hidden_size,)
        h0 = (0.5 * rng.standard_normal(hshape)).astype(np.float32)
    return X, h0


def load_expected():
    """{case name: (Y, h_n)} as PyTorch computed them (Y thinned by case.stride along T)."""
    with np.load(REFERENCE_FILE, allow_pickle=False) as f:
        return {c.name: (f[c.name + ".Y"], f[c.name + ".h_n"]) for c in CASES}
