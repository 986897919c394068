"""Without numba: the same API on plain NumPy, the same numbers, and one note on stderr.

Two fresh processes (no compiling in either, about a second each): one with EDGEGRU_NO_JIT=1,
and one where numba cannot be imported at all, as on 32-bit Raspberry Pi OS, simulated by a
meta-path finder that refuses ``numba`` and ``llvmlite``.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
NOTE = "running on the plain NumPy fallback"

BLOCK_NUMBA = textwrap.dedent("""
    import sys

    class NoNumba:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("numba", "llvmlite"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoNumba())
""")

# Reference cases against PyTorch's outputs, through the public API only: a stacked model with
# a head from a non-zero state, a batch, and a GRUCell stepped; then a scorer and `edgegru run`
# on 50 rows of the example data in the same process (more models built: the note must still
# appear once).
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import edgegru
    from reference import CASES, inputs, load_expected, state_dict

    EXAMPLE = sys.argv[1]
    expected = load_expected()
    worst = 0.0
    for case in CASES:
        if case.name not in ("l2_i4_h64_head_h0", "batch_l2_i4_h24", "cell_i6_h12"):
            continue
        model = edgegru.from_state_dict(state_dict(case))
        X, h0 = inputs(case)
        if case.cell:
            Y = np.stack([model.step(x).copy() for x in X])
        elif case.batch:
            Y = model.run(X, h0=h0)
        else:
            model.state = h0
            Y = model.run(X)
        worst = max(worst, float(np.abs(Y - expected[case.name][0]).max()))

    cfg = edgegru.GRUConfig(input_size=2, hidden_size=4, output_size=2)
    model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    model.meta["preprocessing"] = {"columns": ["a", "b"], "mean": [0, 0], "std": [1, 1]}
    model.meta["scoring"] = {"residual_std": [1, 1], "threshold": 3.0}
    scorer = edgegru.AnomalyScorer.from_model(model)
    scores = [scorer.score_one({"a": 0.1 * i, "b": 1.0}) for i in range(5)]

    # the command on the example data: one row out per row in
    from conftest import make_scoring_model
    from edgegru.cli import main
    edgegru.save(make_scoring_model(), "model.npz")
    with open("sensor.csv", "wb") as f:
        f.write(b"\\n".join(open(EXAMPLE, "rb").read().split(b"\\n")[:51]) + b"\\n")
    main(["run", "--weights", "model.npz", "--input", "sensor.csv"], standalone_mode=False)
    sys.stdout.flush()
    print(json.dumps({"jit": edgegru.JIT, "numba_imported": "numba" in sys.modules,
                      "worst": worst, "scores_finite": bool(np.isfinite(scores).all())}))
""")


def run_python(code, no_jit, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS]),
           "EDGEGRU_NO_JIT": "1" if no_jit else ""}
    example = os.path.join(ROOT, "examples", "sensor.csv")
    proc = subprocess.run([sys.executable, "-c", code, example], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *csv_lines, result = proc.stdout.strip().splitlines()
    return json.loads(result), csv_lines, proc.stderr


@pytest.mark.parametrize("how", ["EDGEGRU_NO_JIT=1", "numba absent"])
def test_same_numbers_without_numba_and_one_note(how, tmp_path):
    if how == "EDGEGRU_NO_JIT=1":
        result, csv_lines, stderr = run_python(SCRIPT, no_jit=True, cwd=tmp_path)
    else:
        result, csv_lines, stderr = run_python(BLOCK_NUMBA + SCRIPT, no_jit=False, cwd=tmp_path)
    assert result["jit"] is False
    assert result["numba_imported"] is False       # import edgegru never needs numba
    assert result["worst"] <= 1e-5
    assert result["scores_finite"]
    assert csv_lines[0] == "timestamp,score,anomaly" and len(csv_lines) == 51
    assert stderr.count(NOTE) == 1, stderr
