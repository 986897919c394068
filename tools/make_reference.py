"""Write tests/data/torch_reference.npz: what PyTorch's nn.GRU / nn.GRUCell compute on the seeded
cases of tests/reference.py. The tests compare edgegru against this file, so they need no torch.

    pip install torch==2.13.0
    python tools/make_reference.py
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference import CASES, REFERENCE_FILE, inputs, state_dict  # noqa: E402


def run_case(case):
    """(Y, h_n) from PyTorch in float32, with the case's weights and inputs."""
    sd = {k: torch.from_numpy(v) for k, v in state_dict(case).items()}
    X, h0 = inputs(case)
    with torch.no_grad():
        if case.cell:
            cell = torch.nn.GRUCell(case.input_size, case.hidden_size, bias=case.bias)
            cell.load_state_dict({k[len("gru."):]: v for k, v in sd.items()})
            h = torch.zeros(case.hidden_size)
            ys = []
            for x in torch.from_numpy(X):
                h = cell(x, h)
                ys.append(h)
            Y, h_n = torch.stack(ys), h[None]
        else:
            gru = torch.nn.GRU(case.input_size, case.hidden_size, num_layers=case.num_layers,
                               bias=case.bias, batch_first=True, bidirectional=case.bidirectional)
            gru.load_state_dict({k[len("gru."):]: v for k, v in sd.items()
                                 if k.startswith("gru.")})
            x = torch.from_numpy(X if case.batch else X[None])
            h = None if h0 is None else torch.from_numpy(h0 if case.batch else h0[:, None])
            Y, h_n = gru(x, h)
            if not case.batch:
                Y, h_n = Y[0], h_n[:, 0]
            if case.head:
                Y = Y @ sd["fc.weight"].T + sd["fc.bias"]
    Y = Y.numpy()[..., ::case.stride, :]
    return Y.astype(np.float32), h_n.numpy().astype(np.float32)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {}
    for case in CASES:
        Y, h_n = run_case(case)
        out[case.name + ".Y"], out[case.name + ".h_n"] = Y, h_n
        print(f"{case.name:28s} Y {str(Y.shape):16s} h_n {h_n.shape}")
    out["torch_version"] = np.array(torch.__version__)
    os.makedirs(os.path.dirname(REFERENCE_FILE), exist_ok=True)
    np.savez_compressed(REFERENCE_FILE, **out)
    print(f"wrote {REFERENCE_FILE} ({os.path.getsize(REFERENCE_FILE) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
