"""How far W_hh in bfloat16 moves a model's outputs: max |y_bf16 - y_float32| over one sequence
of T=10,000 N(0, 1) inputs, random models (GRUWeights.random, seed=H; input 4, one layer, a
linear head of 1 output, as tools/bench_compare.py), and the same for the float32 model of the
rounded W_hh (what the bfloat16 kernels compute: 0 means bitwise).

    python tools/accuracy_bf16.py [--sizes 16,32,64,128,256] [--T 10000]
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import edgegru  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,32,64,128,256")
    parser.add_argument("--T", type=int, default=10000)
    args = parser.parse_args(argv)
    X = np.random.default_rng(0).standard_normal((args.T, 4)).astype(np.float32)
    print("| H | max \\|y_bf16 - y_f32\\| | max \\|y_bf16 - float32 model of the rounded W_hh\\| |")
    print("|---|---|---|")
    for H in (int(s) for s in args.sizes.split(",") if s):
        config = edgegru.GRUConfig(input_size=4, hidden_size=H, output_size=1)
        weights = edgegru.GRUWeights.random(config, seed=H)
        narrow = edgegru.Model(dataclasses.replace(config, recurrent_dtype="bfloat16"), weights)
        y = narrow.run(X)
        y32 = edgegru.Model(config, weights).run(X)
        y_rounded = edgegru.Model(config, narrow.weights).run(X)
        print(f"| {H} | {np.abs(y - y32).max():.1e} | {np.abs(y - y_rounded).max():.1e} |")


if __name__ == "__main__":
    main()
