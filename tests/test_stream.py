"""edgegru.stream: every bad-input policy, chunked == trickled == score_many, group-by == each
group alone, state files, and fuzzing (the parsers themselves: tests/test_csvio.py)."""
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

import edgegru
from conftest import SENSOR_COLUMNS, make_scoring_model
from edgegru import stream
from test_csvio import mutate
from edgegru.errors import EdgeGRUError, InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sensor.csv"
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "model.npz"
HEADER = b"timestamp,temperature,vibration,current,pressure\n"


def make_scorer(**kw):
    return edgegru.AnomalyScorer.from_model(make_scoring_model(**kw))


@pytest.fixture(scope="module")
def example():
    """The first 600 rows of examples/sensor.csv (header included) and their values."""
    lines = EXAMPLE.read_bytes().split(b"\n")[:601]
    data = b"\n".join(lines) + b"\n"
    X = np.array([[float(v) for v in line.split(b",")[1:]] for line in lines[1:]])
    return data, X


class Trickle:
    """A non-seekable source that hands out the data in the given piece sizes (cycled)."""

    def __init__(self, data, sizes=(1,)):
        self.data, self.sizes, self.pos, self.k = data, sizes, 0, 0

    def read1(self, n):
        size = min(n, self.sizes[self.k % len(self.sizes)])
        self.k += 1
        piece = self.data[self.pos:self.pos + size]
        self.pos += len(piece)
        return piece


class Lines(Trickle):
    """A non-seekable source that hands out one line per read."""

    def read1(self, n):
        end = self.data.find(b"\n", self.pos) + 1 or len(self.data)
        piece = self.data[self.pos:end]
        self.pos = end
        return piece


def run(data, scorer=None, source=None, **kw):
    """score_stream on bytes: (output text, StreamResult or the InputError, stderr notes)."""
    out, notes = io.BytesIO(), []
    kw.setdefault("precision", 17)
    try:
        result = stream.score_stream(scorer or make_scorer(), source or io.BytesIO(data), out,
                                     log=notes.append, handle_signals=False, **kw)
    except InputError as exc:
        result = exc
    return out.getvalue().decode(), result, notes


def table(text):
    """Output CSV -> (column names, rows as lists of str)."""
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0], rows[1:]) if rows else ([], [])


def scores_of(text):
    names, rows = table(text)
    i = names.index("score")
    return np.array([float(r[i]) for r in rows])


# -- scores --------------------------------------------------------------------------------------

def test_output_equals_score_many_row_for_row(example):
    data, X = example
    text, result, notes = run(data)
    names, rows = table(text)
    assert names == ["timestamp", "score", "anomaly"]
    assert result.rows == len(rows) == len(X) and result.lines == len(X) + 1 and not notes
    expected = make_scorer().score_many(X)
    assert np.array_equal(scores_of(text), expected)
    assert [r[0] for r in rows] == [l.split(b",")[0].decode() for l in data.split(b"\n")[1:-1]]
    assert [int(r[2]) for r in rows] == (expected > 3.0).astype(int).tolist()


def test_trickled_and_chunked_input_give_identical_output(example):
    data = example[0]
    whole = run(data)[0]
    assert run(data, source=Lines(data))[0] == whole                 # a row per read
    assert run(data, source=Trickle(data, (1, 7, 300, 2)))[0] == whole   # lines cut anywhere
    assert run(data, source=Trickle(data, (5000,)))[0] == whole


def test_explain_jsonl_threshold_keep_and_columns(example):
    data, X = example
    text = run(data, fmt="jsonl", explain=True, threshold=0.5, keep=[])[0]
    records = [json.loads(line) for line in text.splitlines()]
    assert list(records[0]) == ["score", "anomaly"] + [f"contrib_{c}" for c in SENSOR_COLUMNS]
    scores, contrib = make_scorer().score_many(X, explain=True)
    got = np.array([[r[f"contrib_{c}"] for c in SENSOR_COLUMNS] for r in records])
    assert np.array_equal(got, contrib)
    assert np.array_equal([r["score"] for r in records], scores)
    assert [r["anomaly"] for r in records] == (scores > 0.5).astype(int).tolist()
    # other names for the model's columns, in the model's order; a chosen kept column
    renamed = b"time,p,i,v,t\n" + b"\n".join(
        b",".join([l.split(b",")[k] for k in (0, 4, 3, 2, 1)]) for l in data.split(b"\n")[1:-1])
    text = run(renamed, columns=["t", "v", "i", "p"], keep=["time"], precision=6)[0]
    assert text == run(data, precision=6)[0].replace("timestamp,", "time,", 1)


def test_headerless_input_with_the_model_columns(example):
    data, X = example
    body = b"\n".join(b",".join(l.split(b",")[1:]) for l in data.split(b"\n")[1:-1])
    text, result, _ = run(body)
    assert table(text)[0] == ["score", "anomaly"]
    assert np.array_equal(scores_of(text), make_scorer().score_many(X))
    text, error, _ = run(data.split(b"\n", 1)[1])          # 5 fields: timestamps, no header
    assert isinstance(error, InputError) and "header" in str(error) and error.line == 1


NAMES = ["timestamp"] + SENSOR_COLUMNS


def test_no_header_names_the_fields_with_columns_or_the_model(example):
    """``tail -f`` of a log does not repeat its header: header=False reads every line as a row,
    its fields named by ``columns`` (as a header would) or by the model's columns."""
    data, X = example
    body = data.split(b"\n", 1)[1]
    whole = run(data)[0]
    assert run(body, header=False, columns=NAMES)[0] == whole
    assert run(body, header=False, columns=NAMES, source=Lines(body))[0] == whole
    text = run(body, header=False, columns=NAMES, group_by="timestamp", keep=[])[0]
    assert table(text)[0] == ["score", "anomaly"]
    bare = b"".join(l.split(b",", 1)[1] + b"\n" for l in body.splitlines())
    assert scores_of(run(bare, header=False)[0]).tolist() == scores_of(whole).tolist()
    # the header itself, repeated (a rotated log, tail -f of a short one): not a row
    text, result, notes = run(data + data.split(b"\n", 1)[0] + b"\n", header=False,
                              columns=NAMES)
    assert text == whole and result.rows == len(X) and not notes
    # a field count that does not fit the names is a bad row like any other, line 1 included
    text, error, _ = run(bare, header=False, columns=NAMES)
    assert isinstance(error, InputError) and error.line == 1 and "5" in str(error)
    text, result, notes = run(b"1,2\n" + body, header=False, columns=NAMES, on_error="skip")
    assert text == whole and result.skipped == 1
    with pytest.raises(ValueError, match="lacks the model's 'pressure'"):
        run(body, header=False, columns=NAMES[:-1])


def test_a_first_line_of_row_data_hints_at_no_header(example):
    body = example[0].split(b"\n", 1)[1]
    error = run(body)[1]
    assert isinstance(error, InputError) and "use --no-header" in str(error)


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02", b"\xff\xfe,\x80", b"ab\x00c,1,2",
                                     b'"unclosed,1'])
def test_an_unreadable_first_line_is_skipped_under_on_error_skip(example, garbage):
    """A serial port opened in the middle of binary data: under on_error="skip" the first line
    is a bad row and the next one decides (a header here); under "fail" it stops the run."""
    data = example[0]
    text, result, notes = run(garbage + b"\n" + data, on_error="skip")
    assert text == run(data)[0] and result.skipped == 1 and notes[0].startswith("line 1: ")
    error = run(garbage + b"\n" + data)[1]
    assert isinstance(error, InputError) and error.line == 1
    # with the names known (no header), the same
    body = data.split(b"\n", 1)[1]
    text, result, _ = run(garbage + b"\n" + body, on_error="skip", header=False, columns=NAMES)
    assert text == run(data)[0] and result.skipped == 1


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_input_are_sniffed_or_given(example, delimiter):
    data = example[0]
    whole = run(data)[0]
    other = data.replace(b",", delimiter.encode())
    assert stream.sniff_delimiter(other.split(b"\n", 1)[0].decode()) == delimiter
    assert run(other)[0] == whole
    assert run(other, delimiter=delimiter, source=Trickle(other, (1, 7, 300)))[0] == whole
    body = other.split(b"\n", 1)[1]
    assert run(body, header=False, columns=NAMES)[0] == whole
    # a passed-through field holding a comma is quoted in the (comma-separated) output
    text = run(other.replace(b"T00:0", b"T00,0"))[0]
    assert table(text)[1][0][0] == "2026-01-01T00,00:00"
    assert table(text)[1] == [[r[0].replace("T00:0", "T00,0")] + r[1:]
                              for r in table(whole)[1]]



# -- bad input: each case under --on-error fail and skip -------------------------------------------

ROW = b"2026-01-01T00:00:00,30.5,1.9,9.1,2.8"


def case(*lines, ending=b"\n"):
    return ending.join(lines) + ending


# name: (input, rows of values it holds (None = a bad row), (line, column) of the first bad row)
CASES = {
    "non-numeric field": (case(HEADER[:-1], ROW, b"t,30,abc,9,2.8", ROW), "vibration"),
    "missing field": (case(HEADER[:-1], ROW, b"t,30,1.9,9", ROW), "pressure"),
    "extra field": (case(HEADER[:-1], ROW, b"t,30,1.9,9,2.8,7", ROW), "#6"),
    "invalid UTF-8": (case(HEADER[:-1], ROW, b"t\xff\xfe,30,1.9,9,2.8", ROW), "timestamp"),
    "binary garbage": (case(HEADER[:-1], ROW, b"\x00\x13\x88\xffPK\x03\x04", ROW), "timestamp"),
    "bad quoting": (case(HEADER[:-1], ROW, b'"t,30,1.9,9,2.8', ROW), None),
    "line too long": (case(HEADER[:-1], ROW, b"9" * (stream.MAX_LINE + 5), ROW), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_rows_fail_after_writing_the_rows_before_or_are_skipped(name):
    data, column = CASES[name]
    text, error, notes = run(data)
    assert isinstance(error, InputError) and error.line == 3
    assert str(error).startswith("line 3") and (column is None or column in str(error))
    assert len(table(text)[1]) == 1 and not notes                   # the row before: written
    text, result, notes = run(data, on_error="skip")
    rows = table(text)[1]
    assert result.rows == len(rows) == 2 and result.skipped == 1
    assert [r[0] for r in rows] == ["2026-01-01T00:00:00"] * 2      # both good rows
    assert len(notes) == 1 and notes[0].startswith("line 3") and "skipped" in notes[0]
    assert np.array_equal(scores_of(text), make_scorer().score_many(np.array(
        [[30.5, 1.9, 9.1, 2.8]] * 2)))


def test_accepted_variants_give_the_same_output():
    rows = [b"2026-01-01T00:0%d:00,%d.5,1.%d,9.1,2.8" % (i, 30 + i, i) for i in range(8)]
    plain = case(HEADER[:-1], *rows)
    expected = run(plain)[0]
    variants = {
        "CRLF": case(HEADER[:-1], *rows, ending=b"\r\n"),
        "BOM": stream.BOM + plain,
        "no final newline": plain[:-1],
        "blank lines": case(b"", HEADER[:-1], b"", rows[0], b"  ", b"\r", *rows[1:], b""),
        "spaces and signs": plain.replace(b",1.", b", +1.").replace(b",9.1", b",9.10 "),
        "exponents": plain.replace(b",2.8", b",0.28e1"),
        "quoted fields": plain.replace(b"2026-01-01T", b'"2026-01-01T').replace(
            b":00,", b':00",'),
    }
    for name, data in variants.items():
        text, result, notes = run(data)
        assert text == expected, name
        assert result.rows == 8 and not notes, name
    _, result, _ = run(variants["blank lines"])
    assert result.lines == 14                                        # blank lines count


def test_missing_values_are_imputed_not_errors():
    data = case(HEADER[:-1], ROW, b"t,,1.9,9,2.8", b"t,nan,NaN,9,inf", b"t,,,,", b"t,1e300,2,9,2.8",
                ROW)
    X = np.array([[30.5, 1.9, 9.1, 2.8], [np.nan, 1.9, 9, 2.8], [np.nan, np.nan, 9, np.inf],
                  [np.nan] * 4, [1e300, 2, 9, 2.8], [30.5, 1.9, 9.1, 2.8]])
    text, result, notes = run(data)
    assert result.rows == 6 and not notes
    scores = scores_of(text)
    assert np.array_equal(scores, make_scorer().score_many(X))
    assert np.isfinite(scores).all()


def test_quoted_pass_through_fields_stay_one_column():
    data = case(b"id,temperature,vibration,current,pressure", b'"pump 1, east",30,1.9,9,2.8',
                b'"say ""hi""",30,1.9,9,2.8')
    names, rows = table(run(data)[0])
    assert [r[0] for r in rows] == ["pump 1, east", 'say "hi"']
    records = [json.loads(l) for l in run(data, fmt="jsonl")[0].splitlines()]
    assert [r["id"] for r in records] == ["pump 1, east", 'say "hi"']


@pytest.mark.parametrize("data, note", [(b"", "empty"), (b"\n\r\n  \n", "empty"),
                                        (HEADER, "no rows after its header"),
                                        (stream.BOM + HEADER[:-1], "no rows after its header")])
def test_empty_and_header_only_streams_are_not_errors(data, note):
    text, result, notes = run(data)
    assert result.rows == 0 and len(notes) == 1 and note in notes[0]
    assert text == ("" if note == "empty" else "timestamp,score,anomaly\n")


def test_header_problems_are_errors_even_when_skipping():
    for kw in ({}, {"on_error": "skip"}):
        _, error, _ = run(b"timestamp,temperature,vibration,current\n1,2,3,4\n", **kw)
        assert isinstance(error, InputError) and "'pressure'" in str(error) and error.line == 1
    _, error, _ = run(HEADER + ROW + b"\n", keep=["site"])
    assert "no column 'site'" in str(error)
    _, error, _ = run(b"\n\n\xff\xfe,1\n")
    assert isinstance(error, InputError) and error.line == 3 and "UTF-8" in str(error)


def test_skipped_rows_are_counted_after_the_first_twenty():
    data = case(HEADER[:-1], *[b"t,x,1,2,3"] * 30, ROW)
    _, result, notes = run(data, on_error="skip")
    assert result.skipped == 30 and result.rows == 1
    assert len(notes) == stream.MAX_REPORTED + 1 and "30 bad rows" in notes[-1]


# -- many streams ----------------------------------------------------------------------------------

def interleaved(example, devices=("a", "b", "c"), seed=0):
    data, X = example
    rng = np.random.default_rng(seed)
    keys = [devices[k] for k in rng.integers(0, len(devices), len(X))]
    X = X.copy()
    X[rng.integers(0, len(X), 15), rng.integers(0, 4, 15)] = np.nan
    lines = [b"device,timestamp,temperature,vibration,current,pressure"]
    for k, (i, x) in zip(keys, enumerate(X)):
        lines.append(b"%s,%d,%s" % (k.encode(), i, b",".join(b"%r" % v for v in x.tolist())))
    return b"\n".join(lines).replace(b"nan", b"") + b"\n", X, keys


def test_group_by_equals_each_group_alone(example):
    data, X, keys = interleaved(example)
    text, result, _ = run(data, group_by="device")
    names, rows = table(text)
    assert names == ["device", "timestamp", "score", "anomaly"]
    assert [r[0] for r in rows] == keys and [int(r[1]) for r in rows] == list(range(len(X)))
    scores = scores_of(text)
    for key in set(keys):
        mine = np.array(keys) == key
        assert np.array_equal(scores[mine], make_scorer().score_many(X[mine])), key
    assert run(data, group_by="device", source=Lines(data))[0] == text


def test_group_scorer_round_robin_batches_match(example):
    _, X = example
    keys = ["a", "b", "c", "d"] * (len(X) // 4)
    group = edgegru.scoring.GroupScorer(make_scorer())
    got = np.concatenate([group.score_many(keys[i:i + 40], X[i:i + 40])
                          for i in range(0, len(keys), 40)])
    for k in "abcd":
        mine = np.array(keys) == k
        assert np.array_equal(got[mine], make_scorer().score_many(X[:len(keys)][mine]))
    restored = edgegru.scoring.GroupScorer(make_scorer())
    restored.state = group.state
    assert np.array_equal(restored.score_many(keys[:8], X[:8]), group.score_many(keys[:8], X[:8]))
    with pytest.raises(ValueError, match="does not fit"):
        restored.state = {**group.state, "forecast": np.zeros((4, 3))}


# -- state files -----------------------------------------------------------------------------------

def lines_of(text):
    return text.splitlines()[1:]


def test_resume_on_the_same_file_continues_where_it_stopped(example, tmp_path):
    data = example[0]
    whole = lines_of(run(data)[0])
    state = tmp_path / "s.npz"
    cut = data.index(b"\n", 9000) + 1                     # the first run saw part of the file
    first, r1, _ = run(data[:cut], state=state)
    second, r2, notes = run(data, state=state)            # the same file, grown to full size
    assert r2.resumed_at == r1.lines and "continuing at line" in notes[0]
    assert lines_of(first) + lines_of(second) == whole
    third, r3, _ = run(data, state=state)                 # nothing left to score
    assert r3.rows == 0 and lines_of(third) == []


def test_resumed_run_appending_to_its_output_file_writes_no_second_header(example, tmp_path):
    """run --state s < in.csv > out.csv, interrupted; then the same with >> out.csv: out.csv
    is exactly one uninterrupted run's output (one header). A new file still gets a header."""
    data = example[0]
    whole = run(data)[0]
    src, out, state = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "s.npz"
    cut = data.index(b"\n", 9000) + 1
    for part, mode in ((data[:cut], "wb"), (data, "ab")):     # the file grew in between
        src.write_bytes(part)
        with open(src, "rb") as source, open(out, mode) as sink:
            stream.score_stream(make_scorer(), source, sink, state=state, precision=17,
                                log=lambda msg: None, handle_signals=False)
    assert out.read_text() == whole
    src.write_bytes(data + data[data.index(b"\n") + 1:cut])   # more rows: to a new file
    with open(src, "rb") as source, open(tmp_path / "new.csv", "wb") as sink:
        stream.score_stream(make_scorer(), source, sink, state=state, precision=17,
                            log=lambda msg: None, handle_signals=False)
    assert (tmp_path / "new.csv").read_text().splitlines()[0] == whole.splitlines()[0]


def test_resume_on_a_pipe_or_another_file_continues_the_stream(example, tmp_path):
    data = example[0]
    whole = lines_of(run(data)[0])
    cut = data.index(b"\n", 9000) + 1
    rest = HEADER + data[cut:]
    for i, source in enumerate([Lines(rest), None]):      # a pipe; another (seekable) file
        state = tmp_path / f"s{i}.npz"
        first = run(data[:cut], source=Lines(data[:cut]), state=state)[0]
        second, result, notes = run(rest, source=source, state=state)
        assert result.resumed_at == 0 and "continues that stream" in notes[0]
        assert lines_of(first) + lines_of(second) == whole


def test_group_states_resume(example, tmp_path):
    data = interleaved(example)[0]
    whole = lines_of(run(data, group_by="device")[0])
    cut = data.index(b"\n", 12000) + 1
    state = tmp_path / "g.npz"
    first = run(data[:cut], group_by="device", state=state)[0]
    second = run(data, group_by="device", state=state)[0]
    assert lines_of(first) + lines_of(second) == whole
    with pytest.raises(EdgeGRUError, match="with --group-by device"):
        run(data, state=state)


def test_periodic_checkpoints_and_failures_save_a_state_that_resumes(example, tmp_path):
    data = example[0]
    whole = lines_of(run(data)[0])
    state = tmp_path / "s.npz"
    snapshots = []

    class Snapshotting(Lines):                 # copies the state file as the run goes
        def read1(self, n):
            if state.exists():
                snapshots.append(state.read_bytes())
            return super().read1(n)

    run(data, source=Snapshotting(data), state=state, checkpoint_every=100)
    saved = list(dict.fromkeys(snapshots))                  # after rows 100, 200, ... 600
    assert len(saved) == 6
    snap = tmp_path / "snap.npz"
    for k, content in enumerate(saved, 1):                  # as if killed after row 100 k
        snap.write_bytes(content)
        resumed, result, _ = run(data, state=snap)
        assert result.resumed_at == 100 * k + 1 and lines_of(resumed) == whole[100 * k:]
    # a bad row with --on-error fail: the state holds the rows before it; fix it and re-run
    broken = data.replace(b"\n", b"\nbroken\n", 301)[:]
    bad_line = broken.split(b"\n").index(b"broken") + 1
    state = tmp_path / "f.npz"
    first, error, _ = run(broken, state=state)
    assert error.line == bad_line
    fixed = broken.replace(b"broken\n", b"")
    second = run(fixed, state=state)[0]
    assert lines_of(first) + lines_of(second) == whole


def test_a_partial_first_line_is_skipped_under_on_error_skip(example):
    """A headerless serial stream opened in the middle of a line: under on_error="skip" the
    fragment is a bad row and the next line sets the layout; under "fail" it stops the run."""
    data = example[0]
    body = data[data.index(b"\n") + 1:]
    rows = body.split(b"\n")
    headerless = b"\n".join(r.split(b",", 1)[1] for r in rows if r) + b"\n"   # no timestamps
    fragment = headerless[headerless.index(b",") + 1:]              # starts mid-line
    text, result, notes = run(fragment, on_error="skip")
    assert result.skipped == 1 and "line 1: 3 fields, the model reads 4" in notes[0]
    assert result.rows == len(lines_of(text)) == headerless.count(b"\n") - 1
    _, error, _ = run(fragment)
    assert isinstance(error, InputError) and error.line == 1


def test_checkpoints_come_every_n_rows_inside_a_big_block(example, tmp_path, monkeypatch):
    """A file read in one block is scored in pieces that end at the checkpoints: the state is
    saved after exactly rows 150, 300, ..., with bad rows skipped in between not counted."""
    data = example[0].replace(b"\n", b"\nbroken\n", 40)          # 40 bad rows early on
    saved = []
    real_save = stream.StateFile.save
    monkeypatch.setattr(stream.StateFile, "save", lambda self, state, pos: (
        saved.append((pos.rows, pos.lines)), real_save(self, state, pos)))
    text, result, _ = run(data, state=tmp_path / "s.npz", checkpoint_every=150,
                          on_error="skip")
    assert result.skipped == 40 and result.rows == 600 and len(data) < stream.READ_SIZE
    rows = [r for r, _ in saved]
    assert rows == [150, 300, 450, 600, 600]                # the last one: at the end
    assert lines_of(text) == lines_of(run(data, on_error="skip")[0])
    # each checkpoint's line count ends exactly after its 150 k-th good row
    good = [n for n, line in enumerate(data.split(b"\n")[1:], 2) if line and line != b"broken"]
    assert [l for _, l in saved[:-1]] == [good[r - 1] for r in rows[:-1]]


def test_state_file_is_refused_when_it_does_not_fit(example, tmp_path):
    data = example[0]
    state = tmp_path / "s.npz"
    run(data[:2000], state=state)
    with pytest.raises(EdgeGRUError, match="another model"):
        run(data, scorer=make_scorer(seed=1), state=state)
    with pytest.raises(EdgeGRUError, match="without --group-by"):
        run(data, group_by="timestamp", state=state)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(EdgeGRUError, match="not an edgegru state file"):
        run(data, state=junk)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(EdgeGRUError, match="not an edgegru state file"):
        run(data, state=pickled)


# -- fuzzing ---------------------------------------------------------------------------------

def mutate_stream(data, rng):
    """Stream-level damage: cut anywhere, CRLF, BOM, garbage, dropped newlines, mutated lines."""
    lines = data.split(b"\n")
    for _ in range(rng.integers(0, 4)):
        i = int(rng.integers(0, len(lines)))
        lines[i] = mutate(lines[i], rng)
    if rng.random() < 0.3:
        del lines[int(rng.integers(0, len(lines)))]
    data = (b"\r\n" if rng.random() < 0.2 else b"\n").join(lines)
    if rng.random() < 0.2:
        data = stream.BOM + data
    if rng.random() < 0.3:
        data = data[:int(rng.integers(0, len(data) + 1))]
    if rng.random() < 0.1:
        data = rng.bytes(int(rng.integers(0, 200)))
    return data


def test_fuzz_streams_through_score_stream(example, tmp_path):
    """3,000 damaged streams (over 10,000 rows): each run ends with one of the documented
    outcomes: scored rows (one output row each) and skipped rows, or an InputError naming a
    line; never another exception."""
    lines = example[0].split(b"\n")
    rng = np.random.default_rng(11)
    scorer = make_scorer()
    total = outcomes = 0
    cases = int(os.environ.get("EDGEGRU_FUZZ_CASES", "3000"))     # 10,000+ by hand
    for n in range(cases):
        start = int(rng.integers(1, len(lines) - 12))
        body = lines[start:start + int(rng.integers(1, 12))]
        head = [lines[0]] if rng.random() < 0.85 else []
        if not head:
            body = [b",".join(l.split(b",")[1:]) for l in body]
        data = mutate_stream(b"\n".join(head + body) + b"\n", rng)
        total += data.count(b"\n")
        on_error = "skip" if n % 2 else "fail"
        group = "timestamp" if n % 7 == 0 and head else None
        scorer.reset()
        text, result, notes = run(data, scorer=scorer, source=Trickle(data, (int(rng.integers(
            1, 64)),)) if n % 5 == 0 else None, on_error=on_error, group_by=group,
            fmt="jsonl" if n % 3 == 0 else "csv", precision=6)
        out = text.split("\n")
        assert out.pop() == ""                           # every output line ends in LF
        if n % 3 == 0:
            records = [json.loads(l) for l in out]
            assert all(set(r) >= {"score", "anomaly"} for r in records)
            scored = len(records)
        else:
            scored = max(0, len(out) - 1)
        if isinstance(result, InputError):
            assert result.line >= 1 and str(result).startswith("line ")
            if on_error == "skip":                       # only the header can stop a skip
                assert result.line <= data.count(b"\n") + 1 and result.line <= 20
            outcomes += 1
        else:
            assert result.rows == scored and result.skipped == len(
                [m for m in notes if "skipped" in m])
    assert total >= 10000 * cases // 3000 and 0 < outcomes < cases


def chunked_cases(rng, n, limit):
    """Streams with lines around ``limit`` bytes long (and CRLF, a last line without newline)."""
    rows = EXAMPLE.read_bytes().split(b"\n")[1:40]
    for _ in range(n):
        lines = [HEADER[:-1]] if rng.random() < 0.8 else []
        for _ in range(int(rng.integers(1, 8))):
            if rng.random() < 0.4:
                size = limit + int(rng.integers(-3, 4))
                lines.append(b"x" * size if rng.random() < 0.5 else
                             rows[0] + b"," + b"9" * max(0, size - len(rows[0]) - 1))
            else:
                lines.append(rows[int(rng.integers(0, len(rows)))])
        data = (b"\r\n" if rng.random() < 0.2 else b"\n").join(lines)
        yield data + (b"\n" if rng.random() < 0.8 else b"")


def test_the_same_bytes_give_the_same_result_however_they_are_chunked(monkeypatch):
    """Property: output, notes and outcome depend only on the bytes, never on how reads cut
    them, across the line-length limit. Here with the limit and the read size made small, so
    that thousands of streams cross both (EDGEGRU_FUZZ_CASES sets how many; 10,000+ by hand)."""
    monkeypatch.setattr(stream, "MAX_LINE", 96)
    monkeypatch.setattr(stream, "READ_SIZE", 128)
    rng = np.random.default_rng(23)
    scorer = make_scorer()
    n = int(os.environ.get("EDGEGRU_FUZZ_CASES", "400"))
    for k, data in enumerate(chunked_cases(rng, n, 96)):
        on_error = "skip" if k % 2 else "fail"
        results = []
        for source in (io.BytesIO(data), Lines(data),
                       Trickle(data, tuple(int(s) for s in rng.integers(1, 300, 4)))):
            scorer.reset()
            text, result, notes = run(data, scorer=scorer, source=source, on_error=on_error)
            results.append((text, str(result) if isinstance(result, InputError) else
                            (result.rows, result.skipped, result.lines), notes))
        assert results[1] == results[0] and results[2] == results[0], data


def test_a_line_just_over_one_mib_is_refused_from_a_file_and_from_a_pipe(example):
    data = example[0]
    long = data.replace(b"\n", b"\n" + b"1" * (stream.MAX_LINE + 10) + b"\n", 3)
    whole = run(long, on_error="skip")
    assert whole[1].skipped == 3 and "longer than 1048576 bytes" in whole[2][0]
    trickled = run(long, on_error="skip", source=Trickle(long, (4096,)))
    assert trickled[0] == whole[0] and trickled[2] == whole[2]


# -- advice -------------------------------------------------------------------------------------

def shifted(data, column, by):
    """The CSV bytes with ``by`` added to every value of the column at index ``column``."""
    lines = data.rstrip(b"\n").split(b"\n")
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split(b",")
        fields[column] = repr(float(float(fields[column]) + by)).encode()
        out.append(b",".join(fields))
    return b"\n".join(out) + b"\n"


def test_a_run_far_from_the_models_normal_is_told_once_what_to_do(example):
    data, X = example
    scorer = edgegru.AnomalyScorer.load(SHIPPED)
    far = shifted(data, 4, 50 * scorer.std[3])           # pressure, 50 standard deviations up
    text, result, notes = run(far, scorer)
    assert len(notes) == 1 and "rows 101-300 of this run are" in notes[0]
    assert "pressure averages" in notes[0] and "edgegru calibrate" in notes[0]
    assert "temperature" not in notes[0]                  # only the channels that are far
    scorer.reset()
    quiet, _, none = run(far, scorer, advise=False)
    assert quiet == text and none == []                   # a note, nothing else changes
    scorer.reset()
    assert run(data, scorer)[2] == []                     # at the model's normal: nothing
    assert run(far, scorer, group_by="timestamp")[2] == []    # not per stream
