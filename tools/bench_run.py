"""Measure ``edgegru run`` as a user runs it: throughput of a big file piped in, and the delay
from writing one row into the pipe to reading its score.

    python tools/bench_run.py --weights weights/model.npz [--rows 1000000] [--latency-rows 300]

Throughput: a file of --rows rows (examples/sensor.csv repeated) goes through
``edgegru run --weights W < big.csv > /dev/null`` (and ``cat big.csv | edgegru run ...``);
wall time includes the process start and loading the model from numba's cache (printed
separately, from a run on an empty input). Latency: one process, rows written one at a time
into its stdin; each delay is from just before the write to just after the score line is read.
"""
import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-c", "from edgegru.cli import main; main()", "run"]


def big_file(path, rows):
    lines = (ROOT / "examples" / "sensor.csv").read_bytes().split(b"\n")
    header, body = lines[0], [l for l in lines[1:] if l]
    with open(path, "wb") as f:
        f.write(header + b"\n")
        left = rows
        while left:
            part = body[:left]
            f.write(b"\n".join(part) + b"\n")
            left -= len(part)
    return header, body


def timed(cmd, stdin):
    t = time.perf_counter()
    subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, check=True, cwd=ROOT,
                   shell=isinstance(cmd, str))
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--latency-rows", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    cmd = COMMAND + ["--weights", a.weights]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.csv")
        header, body = big_file(path, a.rows)
        with open(os.devnull, "rb") as empty:
            start = min(timed(cmd, empty) for _ in range(a.repeat))
        print(f"start-up (empty input): {start:.2f} s")
        for how in ("< file", "cat | pipe"):
            walls = []
            for _ in range(a.repeat):
                if how == "< file":
                    with open(path, "rb") as f:
                        walls.append(timed(cmd, f))
                else:
                    walls.append(timed(f"cat {path} | " + " ".join(map(repr, cmd)), None))
            best = min(walls)
            print(f"{a.rows} rows, {how:11s}: best {best:.2f} s wall = {a.rows / best:,.0f} "
                  f"rows/s (runs: {', '.join(f'{w:.2f}' for w in walls)})")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    fd, buf = proc.stdout.fileno(), b""

    def line():
        nonlocal buf
        while b"\n" not in buf:
            select.select([fd], [], [])
            buf += os.read(fd, 65536)
        out, buf = buf.split(b"\n", 1)
        return out

    os.write(proc.stdin.fileno(), header + b"\n")
    line()
    delays = []
    for row in body[:a.latency_rows]:
        t = time.perf_counter()
        os.write(proc.stdin.fileno(), row + b"\n")
        line()
        delays.append(time.perf_counter() - t)
        time.sleep(0.002)
    proc.stdin.close()
    proc.wait()
    d = np.array(delays[10:]) * 1e6
    print(f"latency, row written -> score read, {len(d)} rows: median {np.median(d):.0f} us, "
          f"p99 {np.percentile(d, 99):.0f} us, max {d.max():.0f} us")


if __name__ == "__main__":
    main()
