"""edgegru against PyTorch: the committed reference outputs, and torch itself when installed."""
import importlib.util
import os
import sys

import numpy as np
import pytest

import edgegru
from conftest import max_abs
from reference import CASES, inputs, load_expected, state_dict

TOL = 1e-5
EXPECTED = load_expected()


def _model(case, backend):
    return edgegru.from_state_dict(state_dict(case), backend=backend)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_pytorch(case, backend):
    model = _model(case, backend)
    X, h0 = inputs(case)
    Y_ref, h_ref = EXPECTED[case.name]
    if case.cell:
        Y = np.stack([model.step(x).copy() for x in X])
        h_n = model.state
    elif case.batch:
        Y, h_n = model.run(X, h0=h0, return_state=True)
    else:
        if h0 is not None:
            model.state = h0
        Y = model.run(X)
        h_n = model.state
    assert max_abs(Y[..., ::case.stride, :], Y_ref) <= TOL
    assert max_abs(h_n, h_ref) <= TOL


@pytest.mark.parametrize("case", [c for c in CASES if not (c.bidirectional or c.batch)],
                         ids=lambda c: c.name)
def test_step_by_step_equals_run(case, backend):
    model = _model(case, backend)
    X, h0 = inputs(case)
    X = X[:300]
    if h0 is not None:
        model.state = h0
    Y_run = model.run(X)
    h_run = model.state
    model.reset()
    if h0 is not None:
        model.state = h0
    out = np.empty(model.output_size, np.float32)
    Y_step = np.stack([model.step(x, out=out).copy() for x in X])
    assert max_abs(Y_step, Y_run) <= 1e-6
    assert max_abs(model.state, h_run) <= 1e-6


@pytest.mark.parametrize("chunks", [[1, 2, 3, 94, 200], [150, 150], [299, 1]])
def test_chunked_run_equals_one_run(chunks, backend):
    case = CASES[1]
    model = _model(case, backend)
    X, _ = inputs(case)
    X = X[:300]
    Y_once = model.run(X)
    model.reset()
    parts, start = [], 0
    for n in chunks:
        parts.append(model.run(X[start:start + n]))
        start += n
    assert max_abs(np.concatenate(parts), Y_once) == 0.0


def test_reference_file_is_current():
    """The committed outputs are what the PyTorch installed here computes (skips without torch)."""
    pytest.importorskip("torch")
    tools = os.path.join(os.path.dirname(__file__), "..", "tools")
    spec = importlib.util.spec_from_file_location("make_reference",
                                                  os.path.join(tools, "make_reference.py"))
    sys.path.insert(0, os.path.dirname(__file__))
    make_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_reference)
    for case in CASES:
        Y, h_n = make_reference.run_case(case)
        assert max_abs(Y, EXPECTED[case.name][0]) <= 1e-6
        assert max_abs(h_n, EXPECTED[case.name][1]) <= 1e-6


def test_torch_module_directly():
    """A real nn.GRU + nn.Linear, its state_dict of torch tensors passed straight in."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 48, num_layers=2, batch_first=True)
    fc = torch.nn.Linear(48, 2)
    sd = {**{"gru." + k: v for k, v in gru.state_dict().items()},
          **{"fc." + k: v for k, v in fc.state_dict().items()}}
    model = edgegru.from_state_dict(sd)
    X = torch.randn(1, 1000, 6)
    with torch.no_grad():
        out, h_n = gru(X)
        Y_ref = fc(out)[0].numpy()
    assert max_abs(model.run(X[0].numpy()), Y_ref) <= TOL
    assert max_abs(model.state, h_n[:, 0].numpy()) <= TOL
