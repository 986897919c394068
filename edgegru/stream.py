"""CSV sensor rows in, one scored row out per input row: ``edgegru run`` as a library: the run
loop, reading and writing, the ``--state`` file and signals. What a line means (layout, the
parsers, the output format) is :mod:`edgegru.csvio`.

>>> import sys, edgegru
>>> from edgegru.stream import score_stream
>>> scorer = edgegru.AnomalyScorer.load("weights/model.npz")  # doctest: +SKIP
>>> result = score_stream(scorer, sys.stdin.buffer, sys.stdout.buffer)  # doctest: +SKIP

Reading. Bytes are read as soon as they are available (``os.read`` on the file descriptor, after
``select`` says there is something): a row that trickles in is scored, written and flushed at
once, and a big file arrives in blocks of up to 256 KiB whose complete lines are parsed
together (a compiled byte parser, :func:`edgegru.csvio.parse_lines`) and scored together
(``score_many``, the sequence kernel). The scores are the same either way: ``score_many``
equals ``score_one`` row by row, and the compiled parser hands every field it is not sure of to
the plain Python parser (:func:`edgegru.csvio.parse_line`), which defines what a row means.

The first non-blank line is a header unless every field in it is a number (or empty); then the
input is headerless and must have exactly the model's columns, in the model's order. With
``header=False`` every line is a row, its fields named in order by ``columns`` (default: the
model's columns), as a header would name them. The field delimiter (``,``, ``;`` or tab) is
sniffed from the first line unless given. With a header, the model's columns are picked by
name (``columns`` maps other names), and the other columns can be passed through to the output
(``keep``; by default all of them) or name the stream a row belongs to (``group_by``).

What each kind of input does (a *bad row* is an error under ``on_error="fail"``: the rows before
it are written, the state is saved, and :class:`~edgegru.errors.InputError` names the line and
column; under ``on_error="skip"`` it is dropped with a one-line message on stderr, no output row,
and the state untouched):

=============================================  ================================================
input                                          policy
=============================================  ================================================
empty field, ``nan``, ``inf``, a number too    a *missing value*, not an error: the scorer
big for float32                                imputes it from its forecast (residual 0, the
                                               state moves on as if it were the expected value)
a field that is not a number                   bad row ("'abc' is not a number")
fewer or more fields than the header           bad row ("4 fields, the header has 5")
no header, and the first row has the wrong     bad row (under ``on_error="skip"`` the next line
number of fields (a serial port opened in      decides whether there is a header)
the middle of a line)
a first line that is not text (binary, not     bad row (under ``on_error="skip"`` the next line
UTF-8, NUL, broken quoting)                    decides)
a line repeating the field names (a header)    ignored (not a row)
invalid UTF-8, a NUL byte (binary garbage)     bad row
a line longer than 1 MiB                       bad row (the rest of it is discarded)
blank or whitespace-only line                  ignored (not a row; line numbers count it)
CRLF line endings, a UTF-8 BOM                 accepted
last line without a newline                    read like any other line
quoted fields (``"a,b"``)                      accepted (one physical line is one row)
empty stream, header-only stream               no rows, a note on stderr, not an error
header without a column the model reads        error (``InputError``), whatever ``on_error``
=============================================  ================================================

Numbers are what Python's ``float()`` reads (``22.5``, ``-1e-3``, `` 7 ``, ``nan``, ``inf``).

State (``state="FILE"``): the scorer state(s), the model's fingerprint, and how much of the input
has been consumed (lines, bytes, CRC-32 of those bytes) are saved atomically at the end, on
SIGINT/SIGTERM/SIGHUP, on a bad row with ``on_error="fail"``, when the output cannot be written
(its reader has gone, a full disk) and every ``checkpoint_every`` rows; always right after the
output of the rows they include has been written. That its directory can take the file is
checked before the first row (and the temporary files of saves killed half way are removed
then); a periodic checkpoint that fails is a note on stderr, the scoring goes on.

Output errors: each block of rows is written whole or taken back (a regular file is cut back to
where the block began), the state goes back to before that block, is saved, and
:class:`~edgegru.errors.WriteError` says what failed; the output then holds whole rows only, and
a rerun with the same state file continues with the rows that did not get out.

A run given an existing state file resumes from it:

- if the input is a regular file (``--input FILE`` or ``< FILE``) that begins with exactly the
  bytes the state has consumed (the same file again, or that file grown), those lines are skipped
  and scoring continues at the first line not yet scored: re-running an interrupted command
  finishes the job, and the output of both runs together is that of one uninterrupted run
  (a resumed run writes no header line when its output is a file that already holds
  something, as ``>> scores.csv`` onto the first run's output is; otherwise it does);
- otherwise (a pipe, or another file) the whole input is the continuation of the stream: feed it
  only the rows that come after.

A SIGKILL or power loss between a flush and the next checkpoint can make the resumed run repeat
the rows scored since the last checkpoint (never lose one). On a pipe, a line still incomplete
(no newline yet) when a signal arrives is not scored.
"""
import contextlib
import dataclasses
import io
import os
import select
import signal
import stat
import sys
import tempfile
import threading
import time
import zlib

try:
    import fcntl
except ImportError:                      # Windows: no O_APPEND to ask about
    fcntl = None

import numpy as np

from edgegru.csvio import (BAD, BOM, MAX_LINE, OK, BadRow, FirstRowFieldCount, Layout, Writer,
                           decode_line, parse_lines, sniff_delimiter, split_fields)
from edgegru.errors import EdgeGRUError, InputError, WriteError
from edgegru.npzfile import RUN_STATE, StateFileError, load_state, save_state, why
from edgegru.scoring import GroupScorer, valid_threshold

READ_SIZE = 1 << 18          # bytes per read: up to ~7000 rows of a 4-channel sensor file
MAX_REPORTED = 20            # skipped rows reported one by one; later ones are only counted
ADVICE_ROWS = (100, 300)     # a run whose rows in this range all alarm is checked once for a
ADVICE_SHARE = 0.95          # level far from the model's normal (ADVICE_Z stds) and told of it
ADVICE_Z = 5.0


class _Output:
    """The output, written one block of whole rows at a time. On a file descriptor the bytes go
    straight to it (``os.write``), so that a block that fails half way (a full disk) can be
    taken back: a regular file is cut back to where the block began, which leaves only whole
    rows in it. ``write`` raises BrokenPipeError when the reader has gone, and WriteError for
    any other refusal."""

    def __init__(self, out):
        self.out = out
        self.fd = _fileno(out)
        self.regular = self.append = False
        if self.fd is not None:
            try:
                out.flush()              # what the caller wrote before comes first
                st = os.fstat(self.fd)
                self.regular = stat.S_ISREG(st.st_mode)
                self.append = bool(fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_APPEND) \
                    if fcntl is not None else False
            except (OSError, ValueError):
                self.fd = None

    def name(self):
        """How a message names the output: its path when the system says, else "the output"."""
        try:
            path = os.readlink(f"/proc/self/fd/{self.fd}")
        except (OSError, TypeError):
            return "the output"
        return f"the output ({path})" if path.startswith("/") else "the output"

    def write(self, data):
        if self.fd is None:
            try:
                if data:
                    self.out.write(data)
                self.out.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise WriteError(f"cannot write {self.name()}: {why(exc)}") from None
            return
        start = None
        view, done = memoryview(data), 0
        try:
            if self.regular:
                # where this block begins: the end of the file when appending (>>)
                start = os.fstat(self.fd).st_size if self.append else \
                    os.lseek(self.fd, 0, os.SEEK_CUR)
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except BrokenPipeError:
            raise
        except OSError as exc:
            if done and start is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start)
                    if not self.append:
                        os.lseek(self.fd, start, os.SEEK_SET)
            raise WriteError(f"cannot write {self.name()}: {why(exc)}") from None


# -- state file ------------------------------------------------------------------------------

@dataclasses.dataclass
class Position:
    """How much of the input the state has consumed."""
    lines: int = 0               # physical lines, header and blank lines included
    bytes: int = 0
    crc32: int = 0               # of those bytes
    rows: int = 0                # rows scored, over all runs that built this state


LEGACY_TMP = ".edgegru-state-"


class StateFile:
    """The ``--state`` file: one ``.npz`` (read with allow_pickle=False), written atomically."""

    def __init__(self, path, fingerprint, group_by):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        self.group_by = group_by or ""

    def load(self):
        """(scorer state dict, Position), or None when the file does not exist."""
        if not os.path.exists(self.path):
            return None
        state, data = load_state(self.path, RUN_STATE, self.fingerprint)
        if str(data["group_by"]) != self.group_by:
            was = str(data["group_by"])
            raise StateFileError(
                f"{self.path}: this state was saved "
                + (f"with --group-by {was}" if was else "without --group-by")
                + "; resume with the same setting, or delete it to start afresh")
        pos = Position(*(int(data[k]) for k in ("lines", "bytes", "crc32", "rows")))
        return state, pos

    def save(self, state, pos):
        """Write the state atomically (a temporary file renamed over it); WriteError when the
        file system refuses (the old state file, if any, is then left as it was)."""
        position = {"group_by": self.group_by, "lines": pos.lines, "bytes": pos.bytes,
                    "crc32": pos.crc32, "rows": pos.rows}
        try:
            save_state(self.path, RUN_STATE, self.fingerprint, state, position,
                       prefix=self._tmp_name_prefix())
        except OSError as exc:
            raise WriteError(f"cannot save the state to {self.path}: {why(exc)}") from None

    # The temporary file is named after the state file and the process writing it, so that a
    # later run with the same state path knows which leftovers (a SIGKILL during a save) are
    # its own to remove, and never touches another state's or a live process's.
    def _tmp_prefix(self):
        return f".{os.path.basename(self.path)}.tmp-"

    def _tmp_name_prefix(self):
        return f"{self._tmp_prefix()}{os.getpid()}-"

    def _mkstemp(self):
        return tempfile.mkstemp(dir=self.directory, prefix=self._tmp_name_prefix())

    @property
    def directory(self):
        return os.path.dirname(os.path.abspath(self.path))

    def check(self):
        """Before the first row: remove the temporary files killed saves left behind, and
        make sure a state can be written here (WriteError says why not)."""
        if os.path.isdir(self.path):
            raise WriteError(f"cannot save the state to {self.path}: it is a directory")
        if not os.path.isdir(self.directory):
            raise WriteError(f"cannot save the state to {self.path}: the directory "
                             f"{self.directory} does not exist")
        self._remove_leftovers()
        try:
            fd, tmp = self._mkstemp()
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise WriteError(f"cannot save the state to {self.path}: {why(exc)}") from None

    def _remove_leftovers(self):
        prefix = self._tmp_prefix()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith(LEGACY_TMP) and name.endswith(".tmp"):
                # edgegru 0.1.0 named them without the state file's name or the writer's pid:
                # one not touched for a minute is no save in progress
                path = os.path.join(self.directory, name)
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(path).st_mtime > 60:
                        os.unlink(path)
                continue
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue                 # another process saving this state right now
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                      # exists, owned by someone else
    return True


# -- reading ---------------------------------------------------------------------------------

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class _Signals:
    """While active, SIGINT, SIGTERM and SIGHUP (the terminal or ssh session went away) ask for
    a clean stop (``received``) instead of killing
    the process, and wake up a read that is waiting for input. A second signal interrupts at
    once (KeyboardInterrupt). Only in the main thread: elsewhere nothing changes."""

    def __init__(self, enabled=True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = None
        self.wake_fd = None

    def __enter__(self):
        if self.enabled:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._pipe = (r, w)
            self.wake_fd = r
            self._old_wakeup = signal.set_wakeup_fd(w)
            self._old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        if self.enabled:
            for s, handler in self._old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
        return False



def _nonempty_regular_file(out):
    fd = _fileno(out)
    try:
        st = os.fstat(fd) if fd is not None else None
    except OSError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size > 0


def _fileno(source):
    if isinstance(source, int):
        return source
    try:
        return source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def _blocks(source, signals):
    """Bytes from ``source`` as soon as they are available; stops at EOF or a stop signal."""
    fd = _fileno(source)
    read = getattr(source, "read1", None) or getattr(source, "read", None)
    while signals.received is None:
        if fd is not None and signals.wake_fd is not None:
            ready = select.select([fd, signals.wake_fd], [], [])[0]
            if signals.wake_fd in ready:
                try:
                    os.read(signals.wake_fd, 512)
                except BlockingIOError:
                    pass
            if fd not in ready or signals.received is not None:
                continue
        data = os.read(fd, READ_SIZE) if fd is not None else read(READ_SIZE)
        if not data:
            return
        yield data


def _is_regular_file(source):
    fd = _fileno(source)
    if fd is not None:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    seekable = getattr(source, "seekable", None)
    return bool(seekable and seekable())


# -- the loop --------------------------------------------------------------------------------

@dataclasses.dataclass
class StreamResult:
    """What one :func:`score_stream` call did."""
    lines: int = 0               # physical lines consumed in this run
    rows: int = 0                # rows scored and written in this run
    skipped: int = 0             # bad rows dropped (on_error="skip")
    resumed_at: int = 0          # lines of this input skipped because the state had them
    signal: int = None           # the signal that stopped the run, if one did


def score_stream(scorer, source, out, *, columns=None, keep=None, group_by=None, explain=False,
                 threshold=None, fmt="csv", precision=6, on_error="fail", state=None,
                 checkpoint_every=0, progress=None, log=None, handle_signals=True, header=None,
                 delimiter=None, advise=True):
    """Score every CSV row of ``source`` into ``out``: what ``edgegru run`` does.

    scorer: an :class:`~edgegru.AnomalyScorer`. source: a binary file (or file descriptor);
    out: a binary file, flushed after each block of rows. columns: input column names for the
    model's channels, in its order (default: the model's own names); with header=False, the
    names of the input's fields in order, as a header line would give them (default: the
    model's columns). header: None to tell from the first line (a header unless all numbers),
    False when the input has none (``tail -f`` of a log, a serial port). delimiter: ",", ";",
    "\\t" (default: sniffed from the first line, :func:`edgegru.csvio.sniff_delimiter`).
    keep: names of columns to pass through (default: every column the model does not read).
    group_by: a column whose value names independent streams (one state each). threshold:
    overrides ``scorer.threshold``.
    fmt: "csv" or "jsonl"; precision: significant digits of scores. on_error: "fail" or "skip"
    (see the module doc). state: path of the state file to resume from and checkpoint to;
    checkpoint_every: rows between checkpoints (0: only at the end and on signals).
    progress: called with the number of bytes consumed after each block. log: called with each
    note for stderr (default: printed to sys.stderr). advise: when nearly every row of a run's
    rows 100-299 is an alarm and the input's level is far from the model's normal, say so once
    in a note, with what to do if that level is the machine's new normal (``edgegru
    calibrate``); it changes no score (not for ``group_by``). Returns a :class:`StreamResult`; raises
    :class:`~edgegru.errors.InputError` for bad input under on_error="fail",
    :class:`~edgegru.errors.WriteError` when ``out`` or the state file cannot be written, and
    BrokenPipeError when the reader of ``out`` has gone (the state saved first, in both).
    """
    run = _Run(scorer, out, columns=columns, keep=keep, group_by=group_by, explain=explain,
               threshold=threshold, fmt=fmt, precision=precision, on_error=on_error,
               state=state, checkpoint_every=checkpoint_every, progress=progress, log=log,
               header=header, delimiter=delimiter, advise=advise)
    with _Signals(handle_signals) as signals:
        return run.run(source, signals)


class _Run:
    def __init__(self, scorer, out, *, columns, keep, group_by, explain, threshold, fmt,
                 precision, on_error, state, checkpoint_every, progress, log, header=None,
                 delimiter=None, advise=False):
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        if header not in (None, False):
            raise ValueError(f"header must be None (tell from the first line) or False, "
                             f"got {header!r}")
        if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
            raise ValueError(f"the delimiter must be one character other than a quote or a "
                             f"line end, got {delimiter!r}")
        if header is False:
            # the names of every field: the model's columns must be among them
            missing = [c for c in scorer.columns if c not in (columns or scorer.columns)]
            if missing:
                raise ValueError(f"columns names the input's fields (there is no header), and "
                                 f"lacks the model's {', '.join(map(repr, missing))}")
        elif columns is not None and len(columns) != scorer.num_channels:
            raise ValueError(f"columns names {len(columns)} input columns, the model reads "
                             f"{scorer.num_channels} ({', '.join(scorer.columns)})")
        if checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        self.scorer = scorer
        self.group = GroupScorer(scorer) if group_by is not None else None
        self.out = _Output(out)
        self.columns, self.keep, self.group_by = columns, keep, group_by
        self.explain, self.fmt, self.precision = explain, fmt, precision
        self.threshold = (scorer.threshold if threshold is None
                          else valid_threshold(threshold, "the threshold"))
        self.on_error = on_error
        self.state_file = None if state is None else \
            StateFile(state, scorer.fingerprint, group_by)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.log = log or _note
        Writer(fmt, [], scorer.columns, explain, precision)       # check the options early
        self.layout = None
        self.writer = None
        self.pos = Position()
        self.result = StreamResult()
        self.since_checkpoint = 0
        self.discarding = False      # inside an over-long line being skipped
        self.stream_end = float("inf")   # set at EOF when the last line lacks its newline
        self.write_header = True         # False: a resumed run appending to its earlier output
        self.checkpoint_failing = False
        self.header, self.delimiter = header, delimiter
        self.advice = _LevelAdvice(scorer) if advise and group_by is None else None

    # -- the state of the scorer(s), for checkpoints
    @property
    def _scoring(self):
        return self.scorer if self.group is None else self.group

    def _scorer_state(self):
        return self._scoring.state

    def _save(self):
        if self.state_file is not None:
            self.state_file.save(self._scorer_state(), self.pos)
            self.since_checkpoint = 0

    def _checkpoint(self):
        """A periodic save. One that fails (a full disk) does not stop the scoring: the rows
        keep coming, the next checkpoint tries again, and the end of the run must succeed."""
        try:
            self._save()
        except WriteError as exc:
            self.since_checkpoint = 0
            if not self.checkpoint_failing:
                self.log(f"{exc}; scoring goes on, the next checkpoint tries again")
            self.checkpoint_failing = True
            return
        if self.checkpoint_failing:
            self.log(f"state saved to {self.state_file.path} again")
        self.checkpoint_failing = False

    def _save_after_failure(self):
        """Save the state when the run fails; returns what became of it, for the message."""
        if self.state_file is None:
            return ""
        try:
            self._save()
        except WriteError as exc:
            return f"; {exc}"
        return f"; state saved to {self.state_file.path}"

    def _resume(self, source):
        loaded = self.state_file.load() if self.state_file is not None else None
        if loaded is None:
            return
        state, pos = loaded
        # a resumed run whose output goes to a file that already holds something (`>>` onto
        # the first run's output) continues that file: no second header line in the middle
        self.write_header = not _nonempty_regular_file(self.out.out)
        try:
            self._scoring.state = state
        except ValueError as exc:
            raise EdgeGRUError(f"{self.state_file.path}: {exc}") from None
        self.pos.rows = pos.rows
        if pos.bytes and _is_regular_file(source) and self._same_prefix(source, pos):
            self.pos = pos
            self.result.resumed_at = pos.lines
            self.log(f"resuming from {self.state_file.path}: lines 1-{pos.lines} of this input "
                     f"were scored before, continuing at line {pos.lines + 1}")
        else:
            self.log(f"resuming from {self.state_file.path} (after {pos.rows} rows): this input "
                     f"continues that stream")

    def _same_prefix(self, source, pos):
        """Whether the input starts with the bytes the state consumed; if so, leave the file
        just after them with the layout read from its first line."""
        fd = _fileno(source)
        if fd is not None:
            seek = lambda offset: os.lseek(fd, offset, os.SEEK_SET)
            read = lambda n: os.read(fd, n)
            start = os.lseek(fd, 0, os.SEEK_CUR)
        else:
            seek, read, start = source.seek, source.read, source.tell()
        crc, done, head = 0, 0, b""
        while done < pos.bytes:
            data = read(min(READ_SIZE, pos.bytes - done))
            if not data:
                break
            if len(head) < MAX_LINE:
                head += data[:MAX_LINE]
            crc = zlib.crc32(data, crc)
            done += len(data)
        if done != pos.bytes or crc != pos.crc32:
            seek(start)
            return False
        # the layout comes from the first non-blank line, which the skipped part holds
        for number, line in enumerate(head.split(b"\n")[:pos.lines], 1):
            if number == 1 and line.startswith(BOM):
                line = line[len(BOM):]
            if self._first_line(line, number, self.write_header, quiet=True) is not None:
                break
        seek(start + pos.bytes)
        return True

    def _first_line(self, line, number, write_header, quiet=False):
        """Sets the layout from the first non-blank line; returns None for a blank line (or,
        with on_error="skip", a first line that tells nothing: unreadable, or headerless with
        the wrong number of fields; it is skipped and the next line decides), True when the line
        was a header (consumed), False when it is the first data row."""
        try:
            raw = line[:-1] if line.endswith(b"\r") else line
            if not raw.strip():
                return None
            text = decode_line(raw, (self.delimiter or ",").encode())
            delimiter = self.delimiter or sniff_delimiter(
                text, None if self.header is None else len(self.columns or self.scorer.columns))
            fields = split_fields(text, delimiter)
        except BadRow as bad:
            return self._unreadable_first_line(number, bad.message, quiet)
        try:
            if self.header is False:
                self.layout, is_header = Layout.without_header(
                    self.scorer.columns, self.columns, self.keep, self.group_by,
                    delimiter), False
            else:
                self.layout, is_header = Layout.from_first_line(
                    fields, self.scorer.columns, self.columns, self.keep, self.group_by,
                    line=number, delimiter=delimiter)
        except FirstRowFieldCount:
            if self.on_error != "skip":
                raise
            if not quiet:
                self._bad(number, None, f"{len(fields)} fields, the model reads "
                                        f"{self.scorer.num_channels} (no header)")
            return None
        self.writer = Writer(self.fmt, self.layout.kept_names, self.scorer.columns,
                              self.explain, self.precision)
        if write_header:
            self._write(self.writer.header())
        return is_header

    def _unreadable_first_line(self, number, message, quiet):
        """A first line that is not text (a serial port opened in the middle of binary data):
        fatal, since the input's layout is unknown, unless bad rows are skipped; then the next
        line decides."""
        if self.on_error != "skip":
            raise InputError(f"the first line is not a CSV header or row: {message}",
                             line=number)
        if not quiet:
            self._bad(number, None, f"{message} (the first line)")
        return None

    def _write(self, data):
        self.out.write(data)

    def _consume(self, data, lines):
        over = self.pos.bytes + len(data) - self.stream_end
        if over > 0:
            data = data[:-over]
        self.pos.bytes += len(data)
        self.pos.crc32 = zlib.crc32(data, self.pos.crc32)
        self.pos.lines += lines
        self.result.lines += lines
        if self.progress is not None:
            self.progress(len(data))

    # -- the loop
    def run(self, source, signals):
        if self.state_file is not None:
            self.state_file.check()
        self._resume(source)
        pending = bytearray()
        try:
            for data in _blocks(source, signals):
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    self._block(bytes(pending[:cut]))
                    del pending[:cut]
                if len(pending) > MAX_LINE:
                    self._too_long(pending)
            if signals.received is None and pending:
                # a last line without newline: read as if it had one, which is not consumed
                self.stream_end = self.pos.bytes + len(pending)
                self._block(bytes(pending) + b"\n")
        except InputError:
            note = self._save_after_failure()
            if note and not note.startswith("; state saved"):
                self.log(note[2:])
            raise
        except WriteError as exc:
            n = self.result.rows
            raise WriteError(f"{exc} ({n} row{'' if n == 1 else 's'} written before it, none "
                             f"cut short){self._save_after_failure()}") from None
        except BrokenPipeError:
            self._save_after_failure()
            raise
        self.result.signal = signals.received
        try:
            self._save()
        except WriteError as exc:
            raise WriteError(f"{exc} (all {self.result.rows} rows are written)") from None
        if signals.received is not None:
            self.log(f"stopped by {signal.Signals(signals.received).name} after "
                     f"{self.result.rows} rows" + (f"; state saved to {self.state_file.path}"
                                                   if self.state_file is not None else ""))
        if signals.received is None:
            if self.layout is None:
                self.log("the input is empty: no header, no rows")
            elif self.result.rows == 0 and self.result.skipped == 0 and \
                    not self.result.resumed_at:
                self.log("the input has no rows" + (" after its header"
                                                     if self.layout.has_header else ""))
        if self.result.skipped > MAX_REPORTED:
            self.log(f"skipped {self.result.skipped} bad rows in all")
        return self.result

    def _too_long(self, pending):
        """A line of over MAX_LINE bytes without a newline: a bad row; its bytes are dropped
        up to the next newline."""
        if not self.discarding:
            self.discarding = True
            self._bad(self.pos.lines + 1, None, _too_long())
        self.pos.bytes += len(pending)
        self.pos.crc32 = zlib.crc32(pending, self.pos.crc32)
        if self.progress is not None:
            self.progress(len(pending))
        del pending[:]

    def _bad(self, line, column, message):
        where = f"line {line}" + (f", column {column}" if column else "")
        if self.on_error == "fail":
            raise InputError(f"{where}: {message}", line=line, column=column)
        self.result.skipped += 1
        if self.result.skipped <= MAX_REPORTED:
            self.log(f"{where}: {message}; row skipped"
                     + (" (further bad rows are counted, not shown)"
                        if self.result.skipped == MAX_REPORTED else ""))

    def _block(self, buf):
        """Whole lines (ending in LF): header first, then rows, scored and written."""
        if self.discarding:          # the end of an over-long bad line
            nl = buf.index(b"\n") + 1
            self._consume(buf[:nl], 1)
            self.discarding = False
            buf = buf[nl:]
        while self.layout is None and buf:
            nl = buf.index(b"\n") + 1
            if nl - 1 > MAX_LINE:            # as if it had come in pieces: see _rows
                self._bad(self.pos.lines + 1, None, _too_long())
                self._consume(buf[:nl], 1)
                buf = buf[nl:]
                continue
            line, skip = buf[:nl - 1], 0
            if self.pos.bytes == 0 and line.startswith(BOM):
                line, skip = line[len(BOM):], len(BOM)
            is_header = self._first_line(line, self.pos.lines + 1, self.write_header)
            if is_header is False:               # headerless: this line is the first row
                self._consume(buf[:skip], 0)
                buf = buf[skip:]
                break
            self._consume(buf[:nl], 1)
            buf = buf[nl:]
        if buf:
            self._rows(buf)

    def _rows(self, buf):
        rows = parse_lines(buf, self.layout)
        # A line over MAX_LINE bytes is a bad row however it arrives: in pieces (run() drops it
        # once it outgrows MAX_LINE without its newline) or whole within one big read (here)
        lengths = np.diff(rows.ends, prepend=0) - 1
        for i in np.flatnonzero(lengths > MAX_LINE).tolist():
            rows.status[i] = BAD
            rows.errors[i] = (None, _too_long())
        status = rows.status
        L = len(status)
        bad = np.flatnonzero(status == BAD)
        cut = int(bad[0]) if bad.size and self.on_error == "fail" else L
        first_line = self.pos.lines + 1
        ok = np.flatnonzero(status[:cut] == OK)
        start = 0
        while True:
            # lines start..stop-1: up to the row at which a checkpoint falls due, so that a
            # checkpoint comes every checkpoint_every rows even inside a big block
            stop, use = cut, ok[np.searchsorted(ok, start):]
            due = self.checkpoint_every - self.since_checkpoint
            if self.checkpoint_every and use.size > due:
                use = use[:due]
                stop = int(use[-1]) + 1
            if use.size:
                self._score(rows, use)
            for i in bad[(bad >= start) & (bad < stop)].tolist():
                field, message = rows.errors[i]
                self._bad(first_line + i, self.layout.column(field), message)
            begin = int(rows.ends[start - 1]) if start else 0
            self._consume(buf[begin:int(rows.ends[stop - 1]) if stop else 0], stop - start)
            if self.checkpoint_every and self.since_checkpoint >= self.checkpoint_every:
                self._checkpoint()
            if stop >= cut:
                break
            start = stop
        if cut < L:
            field, message = rows.errors[cut]
            self._bad(first_line + cut, self.layout.column(field), message)

    def _score(self, rows, use):
        before = self._scorer_state() if self.state_file is not None else None
        X = rows.values[use]
        lay = self.layout
        if self.group is not None:
            keys = [_text(k) for k in rows.spans(lay.group_slot, use)]
            scores, contrib = self.group.score_many(keys, X, explain=True)
        else:
            scores, contrib = self.scorer.score_many(X, explain=True)
        kept = [rows.spans(k, use) for k in lay.kept_slots]
        anomaly = (scores > self.threshold).astype(np.int64)
        if self.advice is not None:
            note = self.advice.rows(X, anomaly)
            if note:
                self.log(note)
            if self.advice.done:
                self.advice = None
        try:
            self._write(self.writer.rows(kept, scores, anomaly, contrib))
        except (WriteError, BrokenPipeError):
            # these rows did not get out whole: the state goes back to before them, so that the
            # state saved next resumes with them
            if before is not None:
                self._scoring.state = before
            raise
        self.result.rows += len(use)
        self.pos.rows += len(use)
        self.since_checkpoint += len(use)


class _LevelAdvice:
    """Watches a run's rows ADVICE_ROWS: when nearly all of them alarm (ADVICE_SHARE) and their
    average is far from the model's normal on some channel, a note names those channels and
    what to do if the machine now runs there (a new operating point, another machine)."""

    def __init__(self, scorer):
        self.scorer, self.seen = scorer, 0
        C = scorer.num_channels
        self.alarms, self.total, self.count = 0, np.zeros(C), np.zeros(C)

    @property
    def done(self):
        return self.seen >= ADVICE_ROWS[1]

    def rows(self, X, anomaly):
        """X (n, C) raw rows and their anomaly flags, in order -> a note, or None."""
        a, b = ADVICE_ROWS
        lo, hi = max(a - self.seen, 0), max(min(b - self.seen, len(X)), 0)
        self.seen += len(X)
        if lo < hi:
            part = X[lo:hi]
            ok = np.isfinite(part)
            self.alarms += int(anomaly[lo:hi].sum())
            self.total += np.where(ok, part, 0.0).sum(axis=0)
            self.count += ok.sum(axis=0)
        if not self.done:
            return None
        if self.alarms < ADVICE_SHARE * (b - a):
            return None
        sc = self.scorer
        with np.errstate(invalid="ignore", divide="ignore"):
            level = self.total / self.count
            z = (level - sc.mean) / sc.std
        far = [c for c in np.argsort(-np.abs(np.nan_to_num(z))) if abs(z[c]) > ADVICE_Z][:3]
        if not far:
            return None
        where = ", ".join(f"{sc.columns[c]} averages {level[c]:.4g} (normal: {sc.mean[c]:.4g}, "
                          f"std {sc.std[c]:.3g})" for c in far)
        return (f"rows {a + 1}-{b} of this run are {self.alarms / (b - a):.0%} alarms, at a "
                f"level far from the model's normal: {where}. If the machine now runs there as "
                f"its normal (another operating point, another machine), calibrate the model on "
                f"its normal rows: edgegru calibrate MODEL normal.csv -o new.npz")


def _note(msg):
    """A note on stderr; lost, not fatal, when stderr is gone (the terminal hung up)."""
    try:
        print(f"edgegru: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def _too_long():
    return f"longer than {MAX_LINE} bytes (binary data?)"


def _text(value):
    return value if value.__class__ is str else value.decode()
