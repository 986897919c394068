"""``edgegru run`` when the system says no: a full disk under the output or the state, a
missing or read-only state directory, stdout closed, the reader of the output gone, leftovers of
a killed save. Real subprocesses on real file systems: a small tmpfs mounted here when running as
root (skipped otherwise), and /dev/full. Each ends with one line on stderr and exit code 74 (or
141 for a closed pipe), never a traceback; the output holds whole rows only; the state is saved
where it can be and resumes."""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edgegru
from edgegru.stream import StateFile, score_stream

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sensor.csv"
COMMAND = [sys.executable, "-c", "from edgegru.cli import main; main()", "run"]


def rows_of_example(n):
    return b"\n".join(EXAMPLE.read_bytes().split(b"\n")[:n + 1]) + b"\n"


def run(*args, stdin=None, stdout=subprocess.PIPE, shell_redirect=None):
    command = COMMAND + [str(a) for a in args]
    if shell_redirect is not None:           # e.g. ">&-": the shell sets the descriptor up
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh"] + command
    return subprocess.run(command, cwd=ROOT, stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=120)


def one_line_error(proc, start):
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + start), err
    return lines[0]


def mount_tmpfs(path, options):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


def mounted_tmpfs(path, options):
    """A tmpfs mounted at path for the test (skipped where that cannot be), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_tmpfs(path, options)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB file system, a real one that fills up."""
    yield from mounted_tmpfs(tmp_path / "small", "size=64k")


@pytest.fixture
def read_only_fs(tmp_path):
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=64k")


def expected_output(model_path, data, **kw):
    out = io.BytesIO()
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(model_path))
    score_stream(scorer, io.BytesIO(data), out,
                 handle_signals=False, log=lambda msg: None, **kw)
    return out.getvalue()


def test_output_on_a_full_disk_keeps_whole_rows_saves_the_state_and_resumes(
        scoring_model_path, small_fs, tmp_path):
    data = rows_of_example(3000)             # ~95 KB of output for a 64 KiB file system
    src, state, out = tmp_path / "in.csv", tmp_path / "s.npz", small_fs / "scores.csv"
    src.write_bytes(data)
    with open(src, "rb") as stdin, open(out, "wb") as stdout:
        first = run("--weights", scoring_model_path, "--state", state,
                    "--checkpoint-every", 200, stdin=stdin, stdout=stdout)
    assert first.returncode == 74
    line = one_line_error(first, f"cannot write the output ({out}): No space left on device")
    assert f"state saved to {state}" in line
    written = out.read_bytes()
    assert written.endswith(b"\n")           # no half row: cut back to the last whole block
    rows = written.decode().splitlines()
    assert 1 < len(rows) < 3001 and all(len(r.split(",")) == 3 for r in rows)
    # the same command again, with room for the output: both together = one uninterrupted run
    with open(src, "rb") as stdin:
        second = run("--weights", scoring_model_path, "--state", state, stdin=stdin)
    assert second.returncode == 0, second.stderr
    both = written + second.stdout.split(b"\n", 1)[1]
    assert both == expected_output(scoring_model_path, data)


def test_output_to_dev_full_is_one_line_and_exit_74(scoring_model_path):
    with open(ROOT / "examples" / "sensor.csv", "rb") as stdin, open("/dev/full", "wb") as full:
        proc = run("--weights", scoring_model_path, stdin=stdin, stdout=full)
    assert proc.returncode == 74
    one_line_error(proc, "cannot write the output (/dev/full): No space left on device")


def test_state_on_a_full_disk_does_not_stop_the_rows(scoring_model_path, small_fs, tmp_path):
    data = rows_of_example(49)
    with open(small_fs / "filler", "wb", buffering=0) as f:     # fill it to the brim
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    state = small_fs / "s.npz"
    proc = subprocess.run(COMMAND + ["--weights", str(scoring_model_path), "--state", str(state),
                                     "--checkpoint-every", "10"],
                          cwd=ROOT, input=data, capture_output=True, timeout=120)
    assert proc.returncode == 74
    # every row is scored and written: a failed checkpoint is a note, the end's save the error
    assert proc.stdout == expected_output(scoring_model_path, data)
    err = proc.stderr.decode()
    assert "Traceback" not in err
    notes, error = err.splitlines()
    assert notes == (f"edgegru: cannot save the state to {state}: No space left on device; "
                     "scoring goes on, the next checkpoint tries again")
    assert error == (f"Error: cannot save the state to {state}: No space left on device "
                     "(all 49 rows are written)")
    assert sorted(os.listdir(small_fs)) == ["filler"]    # no temporary file left behind


@pytest.mark.parametrize("where", ["missing", "read-only"])
def test_an_unwritable_state_directory_stops_the_run_before_the_first_row(
        where, scoring_model_path, tmp_path, request):
    directory = tmp_path / "no-such-dir" if where == "missing" else \
        request.getfixturevalue("read_only_fs")
    state = directory / "s.npz"
    proc = subprocess.run(COMMAND + ["--weights", str(scoring_model_path), "--state", str(state),
                                     "--checkpoint-every", "10"],
                          cwd=ROOT, input=rows_of_example(49), capture_output=True, timeout=120)
    assert proc.returncode == 74 and proc.stdout == b""
    why = f"the directory {directory} does not exist" if where == "missing" else \
        "Read-only file system"
    assert one_line_error(proc, "") == f"Error: cannot save the state to {state}: {why}"


def test_stdout_closed_is_one_line_and_exit_74(scoring_model_path):
    proc = run("--weights", scoring_model_path, stdin=subprocess.DEVNULL, stdout=None,
               shell_redirect=">&-")
    assert proc.returncode == 74
    one_line_error(proc, "the output (stdout) is closed")


def test_a_closed_output_pipe_saves_the_state(scoring_model_path, tmp_path):
    # `... --state s.npz | head -101`: head reads its lines and goes
    state = tmp_path / "s.npz"
    header, *rows = rows_of_example(600).split(b"\n")[:-1]
    proc = subprocess.Popen(COMMAND + ["--weights", str(scoring_model_path), "--state",
                                       str(state)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b"\n".join([header] + rows[:100]) + b"\n")
    proc.stdin.flush()
    for _ in range(101):                     # the header and 100 scored rows have come back
        proc.stdout.readline()
    proc.stdout.close()                      # then the reader goes away
    proc.stdin.write(b"\n".join(rows[100:]) + b"\n")     # the next block's output hits EPIPE
    proc.stdin.close()
    assert proc.wait(60) == 141
    assert b"Traceback" not in proc.stderr.read()
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(scoring_model_path))
    _, pos = StateFile(state, scorer.fingerprint, None).load()
    assert pos.rows == 100                   # the rows that got out, not the block that did not


def test_leftovers_of_a_killed_save_are_removed_by_the_next_run(scoring_model_path, tmp_path):
    state = tmp_path / "s.npz"
    # a save killed half way: a process makes its temporary file, then dies by SIGKILL
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from edgegru.stream import StateFile
fd, tmp = StateFile({str(state)!r}, "", None)._mkstemp()
os.write(fd, b"PK half a state")
os.kill(os.getpid(), signal.SIGKILL)
"""], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".s.npz.tmp-")]
    assert len(leftovers) == 1
    # another state's temporary file, and one of a live process saving this state: not ours
    other = tmp_path / ".t.npz.tmp-1-x"
    live = tmp_path / f".s.npz.tmp-{os.getpid()}-x"
    other.write_bytes(b"")
    live.write_bytes(b"")
    # edgegru 0.1.0's names: one an hour old (a killed save), one just made (maybe being written)
    old, recent = tmp_path / ".edgegru-state-abc.tmp", tmp_path / ".edgegru-state-def.tmp"
    old.write_bytes(b"")
    recent.write_bytes(b"")
    os.utime(old, (time.time() - 3600,) * 2)
    proc = subprocess.run(COMMAND + ["--weights", str(scoring_model_path), "--state", str(state)],
                          cwd=ROOT, input=rows_of_example(5), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["s.npz", other.name, live.name, recent.name])


def test_a_garbage_state_file_is_refused_without_numpys_advice(scoring_model_path, tmp_path):
    import pickle
    state = tmp_path / "s.npz"
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for content in [b"garbage", (tmp_path / "obj.npy").read_bytes(), pickle.dumps([1])]:
        state.write_bytes(content)
        proc = subprocess.run(COMMAND + ["--weights", str(scoring_model_path), "--state",
                                         str(state)], cwd=ROOT, input=rows_of_example(5),
                              capture_output=True, timeout=120)
        assert proc.returncode == 1
        line = one_line_error(proc, f"{state}: not an edgegru state file")
        assert "allow_pickle" not in line
        assert line.endswith("(not an .npz archive)" if content in (b"garbage", pickle.dumps([1]))
                             else "(it holds pickled Python objects, which edgegru never loads)")
