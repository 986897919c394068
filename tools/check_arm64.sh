#!/usr/bin/env bash
# edgegru on aarch64 (64-bit Raspberry Pi OS: Debian bookworm, Python 3.11), on any x86 Linux box,
# under qemu user-mode emulation. Needs root (apt-get, update-binfmts, chroot).
#
#   sudo tools/check_arm64.sh                              # the check (a few minutes)
#   sudo NUMBA_CPU_NAME=cortex-a72 tools/check_arm64.sh    # compile for a Pi 4 (cortex-a76: Pi 5)
#   sudo EDGEGRU_ARM64_REBUILD=1 tools/check_arm64.sh      # rebuild the arm64 root first
#
# What it does:
#  1. installs qemu-user-static, binfmt-support and mmdebstrap if missing, and enables qemu's
#     aarch64 binfmt handler (so an aarch64 program started inside the root, such as a test's
#     subprocess or the `edgegru` command, runs under qemu too);
#  2. builds, once, an arm64 bookworm root in $EDGEGRU_ARM64_ROOT (default
#     /var/tmp/edgegru-arm64; kept between runs, rebuilt when missing or when the list below
#     changes): Debian's python3.11 extracted by mmdebstrap (no package scripts run), and the
#     aarch64 wheels of numba, numpy, click and pytest installed by the host's pip;
#  3. copies this working tree to /src in the root, runs `edgegru compile` there (it prints the
#     emulated compile or cache-load time of each kernel), then, in ONE emulated pytest process,
#     the subset below; emulated numba compiles ~10x slower than native, so its cache
#     (NUMBA_CACHE_DIR) lives in the root and survives between runs;
#  4. runs `edgegru run` on the example data in the root and compares its scores with the same
#     command run natively (when the command and weights/model.npz exist).
# It prints what ran (machine, Python, numpy, numba, the CPU numba compiles for) and how many
# tests passed, and exits non-zero if anything failed (2: could not set up, 1: a test failed).
#
# Subprocesses: the tests run under `chroot` with binfmt (not `qemu-aarch64-static -L`), so a
# test that starts `sys.executable` or the `edgegru` command gets an emulated aarch64 process.
set -euo pipefail

ROOT=${EDGEGRU_ARM64_ROOT:-/var/tmp/edgegru-arm64}
MIRROR=${EDGEGRU_ARM64_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# Debian packages: python3.11 and what numpy's and numba's wheels link against (libstdc++6:
# without it numpy does not import).
DEBS=python3.11,libpython3.11-stdlib,libstdc++6,libgcc-s1,zlib1g
WHEELS="numba numpy click pytest"
STAMP="edgegru-arm64 root v1: bookworm arm64 debs=$DEBS wheels=$WHEELS"
# The subset run under emulation, by file (missing files are skipped):
#   test_reference   the numerics against PyTorch's reference outputs, numba and NumPy backends
#   test_kernels     tanh/sigmoid approximations and the cell against tests/naive.py (FMA on ARM)
#   test_bf16        W_hh in bfloat16: the widening intrinsics (8 and 16 lanes) and models at
#                    H=16-200 bitwise the float32 model of the rounded weights, step/run/batch
#   test_model       native .npz save/load, refused files, state-dict import
#   test_formats     the other loaders (torch-free .pt, safetensors, ...; ONNX and Keras skip:
#                    no onnx or h5py in the root)
#   test_scoring     AnomalyScorer
#   test_csvio       the compiled CSV parser against the Python one (exact floats)
#   test_stream      bad-row policies, chunking, state files
#   test_run_cli     `edgegru run` on the example data, in-process and as real processes on
#                    pipes (three emulated subprocesses: they load the numba cache)
# Left out: test_alloc (a fresh process compiling an uncached function: ~1 min emulated; the
# allocation-freedom it proves is not platform-specific), test_no_jit and test_cache (extra
# processes; they run natively), test_formats_fuzz (10,000 mutated files: parsing robustness, not
# platform-specific, ~40 s emulated) and tests of tools/ (scripts for x86 development machines).
SUBSET="tests/test_reference.py tests/test_kernels.py tests/test_bf16.py tests/test_model.py
        tests/test_formats.py tests/test_scoring.py tests/test_csvio.py tests/test_stream.py
        tests/test_run_cli.py"

say() { echo "check_arm64: $*"; }
die() { echo "check_arm64: FAILED: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, update-binfmts, chroot); run it with sudo"
CHROOT=$(PATH=$PATH:/usr/sbin:/sbin command -v chroot) || die "no chroot command (coreutils)"
[ "$(uname -m)" = x86_64 ] || say "note: host is $(uname -m), not x86_64; trying anyway"

# -- 1. host tools ---------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    say "installing qemu-user-static binfmt-support mmdebstrap"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        qemu-user-static binfmt-support mmdebstrap >/dev/null; } \
        || die "apt-get install qemu-user-static binfmt-support mmdebstrap did not work"
fi
# the host's pip fetches the aarch64 wheels (with --target: fine on an externally managed Python)
if ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing python3-pip"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip; } \
        >/dev/null 2>&1 || true
    python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip (apt-get install python3-pip)"
fi
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/status" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null \
        || die "binfmt_misc is not mounted and cannot be (in a container? it needs --privileged)"
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null \
    || die "qemu's aarch64 binfmt handler is not enabled (update-binfmts --enable qemu-aarch64)"
# F (fix binary): the kernel keeps qemu open, so it need not exist inside the chroot
grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
    || die "the qemu-aarch64 binfmt handler lacks the F flag; install Debian's qemu-user-static"

# -- 2. the arm64 root (cached) --------------------------------------------------------------
# one run at a time per root: another run would replace /src (or the root) under this one
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
if ! flock -n 9; then
    say "waiting for another check_arm64 run using $ROOT"
    flock 9
fi

host_python311() {   # a host Python 3.11 writes .pyc files the emulated 3.11 can use
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$py"; return
        fi
    done
}

if [ -n "${EDGEGRU_ARM64_REBUILD:-}" ] || [ "$(cat "$ROOT/.edgegru-stamp" 2>/dev/null)" != "$STAMP" ]; then
    say "building the arm64 root in $ROOT"
    t0=$SECONDS
    new="$ROOT.new"
    rm -rf "$new"
    mmdebstrap --quiet --arch=arm64 --variant=extract --include="$DEBS" bookworm "$new" "$MIRROR" \
        || die "mmdebstrap could not build an arm64 bookworm root from $MIRROR"
    # shellcheck disable=SC2086
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 \
        --target "$new/opt/pkgs" $WHEELS 2>&1 | { grep -v '^WARNING: Location' || true; }
    [ "${PIPESTATUS[0]}" = 0 ] || die "the host's pip could not fetch the aarch64 wheels of: $WHEELS"
    # qemu-user does not emulate /proc/cpuinfo for aarch64: without this file LLVM prints "Can't
    # read /proc/cpuinfo" on every compile; with it empty, LLVM sees what it would see anyway:
    # the CPU "generic" and no optional features (set NUMBA_CPU_NAME to pick a real one)
    mkdir -p "$new/proc" "$new/usr/local/bin" "$new/var/cache/edgegru"
    : > "$new/proc/cpuinfo"
    # the console script pip would write for edgegru
    printf '#!/usr/bin/python3.11\nimport sys\nfrom edgegru.cli import main\nsys.exit(main())\n' \
        > "$new/usr/local/bin/edgegru"
    chmod +x "$new/usr/local/bin/edgegru"
    # byte-compile once (emulated, every stdlib import would otherwise compile and be 2x slower)
    py=$(host_python311)
    if [ -n "$py" ]; then
        "$py" -m compileall -q -j0 -s "$new" -p / "$new/usr/lib/python3.11" "$new/opt/pkgs" >/dev/null || true
    else
        "$CHROOT" "$new" /usr/bin/python3.11 -m compileall -q -j0 /usr/lib/python3.11 /opt/pkgs >/dev/null || true
    fi
    echo "$STAMP" > "$new/.edgegru-stamp"
    rm -rf "$ROOT"
    mv "$new" "$ROOT"
    say "root built in $((SECONDS - t0)) s ($(du -sh "$ROOT" | cut -f1))"
else
    say "using the arm64 root in $ROOT"
fi

# -- 3. the tests, in one emulated process ---------------------------------------------------
rm -rf "$ROOT/src"
mkdir -p "$ROOT/src"
(cd "$REPO" && tar cf - --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.pyc' \
    pyproject.toml edgegru tests examples $(ls -d weights tools 2>/dev/null)) \
    | tar xf - -C "$ROOT/src"
files=""
for f in $SUBSET; do
    for g in "$REPO"/$f; do [ -e "$g" ] && files="$files ${g#"$REPO"/}"; done
done

cat > "$ROOT/var/cache/edgegru/run_tests.py" <<'EOF'
"""Inside the emulated root: say what runs, then pytest; the last line counts the tests."""
import os
import platform
import sys
import time

t0 = time.perf_counter()
os.chdir("/src")
import numpy, numba, pytest                                    # noqa: E401,E402
from numba.core import codegen                                 # noqa: E402

cpu = numba.config.CPU_NAME or codegen.ll.get_host_cpu_name()
features = numba.config.CPU_FEATURES
if features is None:
    features = codegen.get_host_cpu_features()
print(f"arm64 check: machine {platform.machine()} (uname -m: {os.uname().machine}), "
      f"Python {platform.python_version()}, numpy {numpy.__version__}, "
      f"numba {numba.__version__}; numba compiles for CPU {cpu!r}, features {features or 'none'!r}"
      f" (imports took {time.perf_counter() - t0:.1f} s)", flush=True)


class Count:
    stats = {}

    def pytest_terminal_summary(self, terminalreporter):
        Count.stats = {k: len(v) for k, v in terminalreporter.stats.items() if k}


code = pytest.main(["-p", "no:cacheprovider", "-o", "addopts=", "-q", "--durations=8", *sys.argv[1:]],
                   plugins=[Count()])
s = Count.stats
print(f"arm64 check: {s.get('passed', 0)} passed, {s.get('skipped', 0)} skipped, "
      f"{s.get('failed', 0) + s.get('error', 0)} failed, on {platform.machine()} with numba "
      f"{numba.__version__} (CPU {cpu}), {time.perf_counter() - t0:.0f} s", flush=True)
sys.exit(int(code))
EOF

# a clean environment: nothing of the host's Python leaks in
run_in_root() {
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONPATH=/src:/opt/pkgs \
        NUMBA_CACHE_DIR=/var/cache/edgegru/numba \
        ${NUMBA_CPU_NAME:+NUMBA_CPU_NAME=$NUMBA_CPU_NAME} \
        ${NUMBA_CPU_FEATURES:+NUMBA_CPU_FEATURES=$NUMBA_CPU_FEATURES} \
        ${EDGEGRU_NO_JIT:+EDGEGRU_NO_JIT=$EDGEGRU_NO_JIT} \
        "$CHROOT" "$ROOT" "$@"
}

# the kernels first, as a Pi user would (docs/raspberry-pi.md): its timings are the emulated
# compile times on a cold cache, and the cache-load times on a warm one
if [ -f "$REPO/weights/model.npz" ] && grep -q '"compile"' "$REPO/edgegru/cli.py"; then
    say "edgegru compile weights/model.npz, emulated:"
    t0=$SECONDS
    run_in_root /usr/bin/python3.11 -c \
        'import os, sys; os.chdir("/src"); from edgegru.cli import main; main()' \
        compile weights/model.npz | sed 's/^/    /'
    [ "${PIPESTATUS[0]}" = 0 ] || { say "FAILED: edgegru compile under emulation"; exit 1; }
    say "edgegru compile took $((SECONDS - t0)) s in all (starting Python and numba included)"
fi

say "running under qemu:$files"
t0=$SECONDS
status=0
# shellcheck disable=SC2086
run_in_root /usr/bin/python3.11 /var/cache/edgegru/run_tests.py $files || status=$?
say "tests took $((SECONDS - t0)) s"
[ "$status" = 0 ] || { say "FAILED: tests failed under emulation (pytest exit $status)"; exit 1; }

# -- 4. the command on the example data, against the same command run natively ---------------
if [ -f "$REPO/weights/model.npz" ] && [ -f "$REPO/examples/sensor.csv" ]; then
    say "edgegru run --weights weights/model.npz --input examples/sensor.csv, aarch64 vs native"
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    t0=$SECONDS
    args=(run --weights weights/model.npz --input examples/sensor.csv --precision 17)
    run_in_root /usr/bin/python3.11 -c \
        'import os, sys; os.chdir("/src"); from edgegru.cli import main; sys.argv[0] = "edgegru"; main()' \
        "${args[@]}" > "$out/arm64.csv" || { say "FAILED: edgegru run under emulation"; exit 1; }
    say "emulated edgegru run took $((SECONDS - t0)) s"
    # natively for this machine's CPU, whatever NUMBA_CPU_NAME the emulated run was given
    (cd "$REPO" && PYTHONPATH="$REPO" env -u NUMBA_CPU_NAME -u NUMBA_CPU_FEATURES \
        python3 -c 'from edgegru.cli import main; main()' \
        "${args[@]}" > "$out/native.csv") || { say "FAILED: edgegru run natively"; exit 1; }
    python3 - "$out/arm64.csv" "$out/native.csv" <<'PY' || exit 1
import csv, sys
import numpy as np
def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["score"]) for r in rows]), np.array([r["anomaly"] for r in rows])
(a, fa), (b, fb) = read(sys.argv[1]), read(sys.argv[2])
if a.shape != b.shape:
    sys.exit(f"check_arm64: FAILED: {a.size} scores on aarch64, {b.size} natively")
rel = np.abs(a - b) / np.maximum(np.abs(b), 1.0)
flips = int((fa != fb).sum())
print(f"check_arm64: {a.size} rows: largest score difference aarch64 vs native "
      f"{float(rel.max()):.2e} (relative), {flips} anomaly flags differ, "
      f"{int((fb == '1').sum())} anomalous rows natively")
# float32 kernels compiled for two CPUs (FMA contraction, vector widths) need not agree bitwise;
# an anomaly flag can then only differ for a score within that distance of the threshold
if rel.max() > 1e-4:
    sys.exit("check_arm64: FAILED: the aarch64 scores differ from the native ones")
PY
else
    say "no weights/model.npz: the command was checked by tests/test_run_cli.py only"
fi
say "passed"
