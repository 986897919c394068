"""``edgegru run``: through Click's CliRunner (fast, in-process) and through real subprocesses on
pipes (a row trickled in gets its score before the next row is written; SIGTERM then resume
gives the scores of one uninterrupted run)."""
import csv
import io
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegru
from conftest import make_model
from edgegru.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sensor.csv"
COMMAND = [sys.executable, "-c", "from edgegru.cli import main; main()", "run"]


@pytest.fixture(scope="module")
def example():
    """The first 600 rows of examples/sensor.csv (with header), their values, their scores."""
    lines = EXAMPLE.read_bytes().split(b"\n")[:601]
    X = np.array([[float(v) for v in line.split(b",")[1:]] for line in lines[1:]])
    return b"\n".join(lines) + b"\n", X


def expected_scores(model_path, X):
    return edgegru.AnomalyScorer.from_model(edgegru.load(model_path)).score_many(X)


def invoke(*args, input=None):
    return CliRunner().invoke(main, ["run", *map(str, args)], input=input)


def scores_of(text):
    rows = list(csv.reader(io.StringIO(text)))
    i = rows[0].index("score")
    return np.array([float(r[i]) for r in rows[1:]])


def test_one_output_row_per_input_row_equal_to_score_many(scoring_model_path, example):
    data, X = example
    result = invoke("--weights", scoring_model_path, "--precision", 17, input=data)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "timestamp,score,anomaly"
    assert len(result.stdout.splitlines()) == len(X) + 1
    assert np.array_equal(scores_of(result.stdout), expected_scores(scoring_model_path, X))
    assert result.stderr == ""


def test_input_file_group_by_jsonl_and_explain(scoring_model_path, example, tmp_path):
    data, X = example
    path = tmp_path / "in.csv"
    path.write_bytes(data.replace(b"\n2026-01-01T0", b"\nb,2026-01-01T0").replace(
        b"\n2026", b"\na,2026").replace(b"timestamp,", b"device,timestamp,", 1))
    result = invoke("--weights", scoring_model_path, "--input", path, "--group-by", "device",
                    "--format", "jsonl", "--explain", "--keep", "device")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(X) and lines[0].startswith('{"device": "')
    assert '"contrib_pressure": ' in lines[0]


def test_run_help_has_examples_and_exit_codes():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "edgegru run --weights" in result.output
    assert "Exit codes" in result.output and "143" in result.output


def test_a_bad_row_exits_1_with_one_line_after_writing_the_rows_before(scoring_model_path):
    data = (b"timestamp,temperature,vibration,current,pressure\n" + b"t,30,1.9,9,2.8\n" * 3
            + b"t,30,oops,9,2.8\n" + b"t,30,1.9,9,2.8\n")
    result = invoke("--weights", scoring_model_path, input=data)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 4                       # header + 3 rows
    assert result.stderr == "Error: line 5, column 'vibration': 'oops' is not a number\n"
    result = invoke("--weights", scoring_model_path, "--on-error", "skip", input=data)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 5
    assert result.stderr.startswith("edgegru: line 5, column 'vibration'")


@pytest.mark.parametrize("args, message", [
    (["--checkpoint-every", "10"], "needs --state"),
    (["--columns", "a,b"], "names 2 columns, the model reads 4"),
    (["--format", "xml"], "'xml' is not one of"),
    (["--precision", "0"], "0 is not in the range"),
])
def test_usage_errors_exit_2(scoring_model_path, args, message):
    result = invoke("--weights", scoring_model_path, *args, input=b"")
    assert result.exit_code == 2 and message in result.output


def test_model_and_column_problems_exit_1_without_traceback(tmp_path, scoring_model_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    plain = tmp_path / "plain.npz"
    edgegru.save(make_model(input_size=4, hidden_size=4, output_size=4), plain)
    for weights, data, message in [
            (junk, b"", "not a model file"), (plain, b"", "not a scoring model"),
            (scoring_model_path, b"time,temperature\n1,2\n", "no column 'vibration'")]:
        result = invoke("--weights", weights, input=data)
        assert result.exit_code == 1 and message in result.stderr, result.output
        assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1


def test_empty_input_is_not_an_error(scoring_model_path):
    result = invoke("--weights", scoring_model_path, input=b"")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == "edgegru: the input is empty: no header, no rows\n"


# -- real processes on pipes ------------------------------------------------------------------------

class LineReader:
    """Lines from a subprocess's stdout, each waited for at most ``timeout`` seconds (a guard
    against a hang, not a speed test)."""

    def __init__(self, stream, timeout=120):
        self.fd, self.timeout, self.buf = stream.fileno(), timeout, b""

    def line(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            ready = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]
            assert ready, "no output line: the row's score was not written and flushed"
            data = os.read(self.fd, 1 << 16)
            assert data, "the process ended"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def rest(self):
        chunks = [self.buf]
        while True:
            data = os.read(self.fd, 1 << 16)
            if not data:
                return b"".join(chunks).decode().splitlines()
            chunks.append(data)


def spawn(*args):
    return subprocess.Popen(COMMAND + [str(a) for a in args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_trickled_rows_are_scored_before_the_next_arrives_then_a_bulk(scoring_model_path,
                                                                       example):
    data, X = example
    header, *rows = data.split(b"\n")[:-1]
    proc = spawn("--weights", scoring_model_path, "--precision", 17)
    out = LineReader(proc.stdout)
    proc.stdin.write(header + b"\n")
    proc.stdin.flush()
    assert out.line() == "timestamp,score,anomaly"
    lines = []
    for row in rows[:150]:                  # one row at a time: its score comes back first
        proc.stdin.write(row + b"\n")
        proc.stdin.flush()
        lines.append(out.line())
    proc.stdin.write(b"\n".join(rows[150:]) + b"\n")     # then the rest at once: chunked
    proc.stdin.close()
    lines += out.rest()
    assert proc.wait(60) == 0
    # nothing on stderr but, without numba (EDGEGRU_NO_JIT=1), the note that NumPy runs
    assert [l for l in proc.stderr.read().splitlines() if b"NumPy fallback" not in l] == []
    assert len(lines) == len(X)
    assert [l.split(",")[0] for l in lines] == [r.split(b",")[0].decode() for r in rows]
    got = np.array([float(l.split(",")[1]) for l in lines])
    assert np.array_equal(got, expected_scores(scoring_model_path, X))


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_saves_the_state_and_a_rerun_finishes_the_file(signum, code,
                                                                     scoring_model_path, example,
                                                                     tmp_path):
    data, X = example
    path, state = tmp_path / "in.csv", tmp_path / "run.state"
    path.write_bytes(data)
    header, *rows = data.split(b"\n")[:-1]
    # a sensor pipe: 250 rows arrive and are scored, half a row more, then SIGTERM (systemd's
    # stop) or SIGHUP (the ssh session that ran it went away)
    proc = spawn("--weights", scoring_model_path, "--precision", 17, "--state", state)
    out = LineReader(proc.stdout)
    proc.stdin.write(b"\n".join([header] + rows[:250]) + b"\n" + rows[250][:10])
    proc.stdin.flush()
    first = [out.line() for _ in range(251)]
    proc.send_signal(signum)
    assert proc.wait(60) == code
    name = signal.Signals(signum).name.encode()
    assert proc.stderr.read().endswith(b"stopped by " + name + b" after 250 rows; state saved to "
                                       + str(state).encode() + b"\n")
    assert out.rest() == []
    # the same command on the whole file: the 251 lines already scored are skipped
    done = subprocess.run(COMMAND + ["--weights", str(scoring_model_path), "--precision", "17",
                                     "--state", str(state), "--input", str(path)],
                          cwd=ROOT, capture_output=True)
    assert done.returncode == 0
    assert b"continuing at line 252" in done.stderr
    second = done.stdout.decode().splitlines()
    lines = first[1:] + second[1:]
    assert len(lines) == len(X)
    got = np.array([float(l.split(",")[1]) for l in lines])
    assert np.array_equal(got, expected_scores(scoring_model_path, X))


@pytest.mark.skipif(not (ROOT / "weights" / "model.npz").exists(), reason="no shipped model")
def test_the_readme_command_on_the_shipped_model_and_the_example_data():
    # edgegru run --weights weights/model.npz < examples/sensor.csv (its first 3000 rows)
    data = b"\n".join(EXAMPLE.read_bytes().split(b"\n")[:3001]) + b"\n"
    result = invoke("--weights", ROOT / "weights" / "model.npz", input=data)
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "timestamp,score,anomaly" and len(lines) == 3001
    assert np.isfinite(scores_of(result.stdout)).all()


@pytest.mark.skipif(not (shutil.which("sh") and shutil.which("tail")),
                    reason="no sh or tail here (the emulated aarch64 root)")
def test_the_readme_streaming_pipeline_on_a_growing_log(scoring_model_path, example, tmp_path):
    """The README's `tail -n 0 -F /var/log/pump.csv | edgegru run --weights ... --no-header
    --columns timestamp,... --state pump.state`, through a real tail on a log that grows (and
    is over 10 lines long, with its header at the top), stopped by SIGTERM."""
    data, X = example
    header, *rows = data.split(b"\n")[:-1]
    log, state = tmp_path / "pump.csv", tmp_path / "pump.state"
    log.write_bytes(b"\n".join([header] + rows[:50]) + b"\n")
    command = shlex.join(COMMAND + [
        "--weights", str(scoring_model_path), "--no-header", "--columns",
        "timestamp,temperature,vibration,current,pressure", "--state", str(state),
        "--precision", "17"])
    proc = subprocess.Popen(["sh", "-c", f"tail -n 0 -F {shlex.quote(str(log))} | {command}"],
                            cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out = LineReader(proc.stdout)
    try:
        with open(log, "ab", buffering=0) as f:
            # tail starts following at a moment the test cannot see: the log grows a row at a
            # time until the output's header line says the rows are coming through
            n = 50
            while not select.select([proc.stdout], [], [], 0.2)[0]:
                f.write(rows[n] + b"\n")
                n += 1
                assert n < 250, "no output from the pipeline: " + proc.stderr.read1().decode()
            assert out.line() == "timestamp,score,anomaly"
            f.write(b"\n".join(rows[n:400]) + b"\n")
            lines = [out.line()]
            while not lines[-1].startswith(rows[399].split(b",")[0].decode()):
                lines.append(out.line())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    err = proc.stderr.read().decode()
    assert "Traceback" not in err
    first = [r.split(b",")[0].decode() for r in rows].index(lines[0].split(",")[0])
    assert 50 <= first < n
    assert [l.split(",")[0] for l in lines] == [r.split(b",")[0].decode()
                                                for r in rows[first:400]]
    got = np.array([float(l.split(",")[1]) for l in lines])
    assert np.array_equal(got, expected_scores(scoring_model_path, X[first:400]))
    assert f"stopped by SIGTERM after {400 - first} rows; state saved to {state}" in err


def test_no_header_and_delimiter_usage_errors_exit_2(scoring_model_path):
    for args, message in [(["--no-header", "--columns", "a,b"], "must name the model's"),
                          (["--delimiter", ";;"], "one character"),
                          (["--delimiter", '"'], "one character")]:
        result = invoke("--weights", scoring_model_path, *args, input=b"")
        assert result.exit_code == 2 and message in result.output, result.output


def test_python_dash_m_edgegru():
    proc = subprocess.run([sys.executable, "-m", "edgegru", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: edgegru ")


def run_on_a_terminal(args, cache, stdin):
    """`edgegru run` with stderr on a pseudo-terminal: the process and the terminal's end to
    read its stderr from."""
    import pty
    try:
        leader, follower = pty.openpty()
    except OSError as exc:                  # the emulated aarch64 root has no /dev/pts
        pytest.skip(f"no pseudo-terminal here ({exc})")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    proc = subprocess.Popen(COMMAND + [str(a) for a in args], cwd=ROOT, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    return proc, leader


def read_terminal(leader, until, timeout=60):
    text, deadline = b"", time.monotonic() + timeout
    while until.encode() not in text and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                data = os.read(leader, 4096)
            except OSError:                 # the process has gone (EIO on the terminal)
                break
            if not data:
                break
            text += data
    return text.decode()


@pytest.mark.skipif(not edgegru.JIT, reason="nothing compiles without numba")
def test_the_first_run_says_it_is_compiling_on_a_terminal_only(scoring_model_path, tmp_path):
    """With numba's cache empty, `edgegru run` says at once that it compiles (on a terminal,
    without -q); piped, or with -q, it says nothing. Stopped before anything compiles."""
    notice = "edgegru: compiling the kernels for this CPU, once"
    proc, leader = run_on_a_terminal(["--weights", scoring_model_path], tmp_path / "cache",
                                     subprocess.PIPE)
    try:
        text = read_terminal(leader, "does it ahead)")
        assert notice in text and "`edgegru compile` does it ahead)" in text
    finally:
        proc.kill()
        proc.wait()
        os.close(leader)
    proc, leader = run_on_a_terminal(["--weights", scoring_model_path, "-q"],
                                     tmp_path / "cache", subprocess.DEVNULL)
    text = read_terminal(leader, "the input is empty")
    assert proc.wait(60) == 0 and notice not in text and "the input is empty" in text
    os.close(leader)
    piped = subprocess.run(COMMAND + ["--weights", str(scoring_model_path)], cwd=ROOT,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert piped.returncode == 0 and notice not in piped.stderr


def test_fuzz_the_command_with_damaged_input_and_random_options(scoring_model_path, example):
    """Damaged streams through `edgegru run` with random options (in-process, CliRunner): every
    run ends with a documented exit code, whole output lines and at most one error line, never
    a traceback. EDGEGRU_FUZZ_CASES sets how many (10,000+ by hand)."""
    from test_stream import mutate_stream
    data = example[0]
    lines = data.split(b"\n")
    rng = np.random.default_rng(5)
    names = "timestamp,temperature,vibration,current,pressure"
    codes = {}
    for n in range(int(os.environ.get("EDGEGRU_FUZZ_CASES", "300"))):
        start = int(rng.integers(1, len(lines) - 12))
        body = lines[start:start + int(rng.integers(1, 12))]
        args = ["--weights", str(scoring_model_path)]
        head = [lines[0]] if rng.random() < 0.7 else []
        if not head and rng.random() < 0.7:
            args += ["--no-header", "--columns", names]
        delimiter = [",", ";", "\t"][int(rng.integers(0, 3))]
        if rng.random() < 0.5:
            args += ["--delimiter", {"\t": "tab"}.get(delimiter, delimiter)]
        stream_bytes = mutate_stream(b"\n".join(head + body).replace(b",", delimiter.encode())
                                     + b"\n", rng)
        for flag, chance in (("--explain", 0.3), ("-q", 0.3)):
            if rng.random() < chance:
                args.append(flag)
        args += ["--on-error", "skip" if rng.random() < 0.5 else "fail",
                 "--format", "jsonl" if rng.random() < 0.3 else "csv"]
        if head and rng.random() < 0.2:
            args += ["--group-by", "timestamp"]
        result = CliRunner().invoke(main, ["run", *args], input=stream_bytes)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, stream_bytes, result.exception)
        assert result.exit_code in (0, 1), (args, result.output)
        assert "Traceback" not in result.stderr
        assert result.stdout == "" or result.stdout.endswith("\n")
        errors = [l for l in result.stderr.splitlines() if l.startswith("Error: ")]
        assert len(errors) == (result.exit_code == 1), result.stderr
        codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
    assert codes.get(0) and codes.get(1)
