"""CSV rows: their layout, their two parsers and the writer of scored rows (``edgegru run``'s
text in and out; the run loop itself is :mod:`edgegru.stream`).

- :class:`Layout`: which field of a row feeds which model channel, which are passed through,
  which names the stream (``group_by``); read from the first line or given (no header).
- :func:`parse_line`: the Python reference parser, which defines what a line means (the module
  doc of :mod:`edgegru.stream` lists the rules).
- :func:`parse_lines`: a block of lines at once, through a compiled byte parser
  (:func:`_parse_lines`) for the plain-decimal common case; every field it is not sure of goes
  to :func:`parse_line`, so the two always agree (tests/test_csvio.py checks it).
- :class:`Writer`: scored rows out as CSV or JSON lines.
"""
import csv
import dataclasses
import json

import numpy as np

from edgegru._jit import JIT, NO_NRT, njit
from edgegru.errors import InputError

MAX_LINE = 1 << 20           # a longer line is a bad row (binary garbage without newlines)
BOM = b"\xef\xbb\xbf"


# line status, from the compiled parser and after the Python parser has looked at the rest
OK, BLANK, SLOW, BAD = 0, 1, 2, 3

# 10**k, exact in float64 for k <= 22
_POW10 = np.array([float(10 ** k) for k in range(16)])


# -- parsing ---------------------------------------------------------------------------------

@njit(cache=True, **NO_NRT)
def _parse_number(buf, a, b):
    """The number in buf[a:b] when it is plain decimal: (value, True); else (0.0, False).

    Plain means [+-]digits[.digits] with at most 15 digits: the digits make an integer m
    < 2**53 and the value is m / 10**k, both exact in float64, so the one division rounds
    correctly, exactly as Python's float() does. Anything else (exponents, nan, spaces, more
    digits) is left to Python. An empty field is a missing value: NaN.
    """
    if a == b:
        return np.nan, True
    neg = False
    c = buf[a]
    if c == 45:                 # '-'
        neg = True
        a += 1
    elif c == 43:               # '+'
        a += 1
    m = 0
    digits = 0
    frac = 0
    seen_point = False
    for i in range(a, b):
        c = buf[i]
        if 48 <= c <= 57:
            m = m * 10 + (c - 48)
            digits += 1
            if seen_point:
                frac += 1
        elif c == 46 and not seen_point:
            seen_point = True
        else:
            return 0.0, False
    if digits == 0 or digits > 15:
        return 0.0, False
    v = float(m) / _POW10[frac]
    return (-v if neg else v), True


@njit(cache=True, **NO_NRT)
def _parse_lines(X, status, spans, ends, buf, role, slot, delimiter):
    """Split buf into lines and fields and read the numbers of the fast, common case.

    buf (n,) uint8: whole lines, each ending in LF (a CR before it is dropped).
    delimiter: the byte between fields (44 ',', 59 ';', 9 tab).
    role (F,): for each of the F fields of a row, the model channel it feeds, or -1.
    slot (F,): for each field, where its span goes in ``spans``, or -1.
    Outputs, for line i: ends[i] the offset just after its LF; X[i, c] the value of channel c
    (NaN when empty); spans[i, k] = (start, stop) of the field in slot k; status[i] OK, BLANK
    (empty line) or SLOW (Python must decide: a field that is not plain decimal, quotes, a NUL
    byte, the wrong number of fields, a comma when the delimiter is another byte: a passed
    through field holding one is quoted in the CSV output).
    """
    F = role.shape[0]
    n = buf.shape[0]
    i = 0
    line = 0
    while i < n:
        start = i
        while buf[i] != 10:
            i += 1
        stop = i
        i += 1
        ends[line] = i
        if stop > start and buf[stop - 1] == 13:
            stop -= 1
        if stop == start:
            status[line] = BLANK
            line += 1
            continue
        st = OK
        f = 0
        a = start
        while True:
            b = a
            while b < stop and buf[b] != delimiter:
                c = buf[b]
                if c == 34 or c == 0 or c == 13 or c == 44:     # '"', NUL, CR, ','
                    st = SLOW
                b += 1
            if f < F:
                c = role[f]
                if c >= 0:
                    v, ok = _parse_number(buf, a, b)
                    if ok:
                        X[line, c] = v
                    else:
                        st = SLOW
                k = slot[f]
                if k >= 0:
                    spans[line, k, 0] = a
                    spans[line, k, 1] = b
            f += 1
            if b >= stop:
                break
            a = b + 1
        if f != F:
            st = SLOW
        status[line] = st
        line += 1
    return line


class BadRow(Exception):
    """A bad row, as parse_line finds it: which field (index or None) and what is wrong."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field
        self.message = message


def split_fields(text, delimiter=","):
    """The fields of one line (str): plain splitting, or the csv module when quoted."""
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise BadRow(None, f"bad quoting ({exc})") from None


def _number(field):
    """A field's value: NaN when empty (a missing value), else what float() reads."""
    s = field.strip()
    if not s:
        return np.nan
    try:
        return float(s)
    except ValueError:
        return None


def decode_line(line, delimiter=b","):
    """One line (bytes, no LF, no CR) as text; BadRow for binary data."""
    nul = line.find(b"\x00")
    if nul >= 0:
        raise BadRow(line.count(delimiter, 0, nul), "binary data (a NUL byte)")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRow(line.count(delimiter, 0, exc.start),
                   f"not UTF-8 text (byte 0x{line[exc.start]:02x})") from None


def parse_line(line, layout):
    """The reference meaning of one line (bytes, without its LF) under ``layout``.

    Returns None for a blank line or one that repeats the field names (a header), else
    ``(values, spans)``: the model's channels as floats (NaN
    for missing) and the text of the fields ``layout.span_fields`` names. Raises ``BadRow``.
    The compiled parser gives the same for every line it marks OK (the tests check this).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    text = decode_line(line, layout.delimiter.encode())
    if not text.strip():
        return None
    fields = split_fields(text, layout.delimiter)
    F = layout.num_fields
    if layout.named and len(fields) == F and [f.strip() for f in fields] == layout.names:
        return None             # the header again (a rotated log, files concatenated): not a row
    if len(fields) != F:
        where = len(fields) if len(fields) < F else F
        raise BadRow(where, f"{len(fields)} field{'s' if len(fields) != 1 else ''} where the "
                          f"{layout.what} has {F}")
    values = []
    for f in layout.numeric:
        v = _number(fields[f])
        if v is None:
            raise BadRow(f, f"{_short(fields[f])} is not a number")
        values.append(v)
    return values, [fields[f] for f in layout.span_fields]


def _short(text, n=40):
    return repr(text if len(text) <= n else text[:n] + "...")


class Layout:
    """Where a row's fields go: which feed the model (in its column order), which are passed
    through to the output, which names the stream (``group_by``)."""

    def __init__(self, names, numeric, kept, group, has_header, delimiter=",", what=None):
        self.names = names                          # one per field
        self.num_fields = len(names)
        self.numeric = list(numeric)                # field index of each model channel
        self.kept = list(kept)                      # field indices passed through
        self.group = group                          # field index of the key, or None
        self.has_header = has_header
        self.named = has_header or what is not None     # the names are the user's, not "#3"
        self.what = what or ("header" if has_header else "model")
        self.delimiter = delimiter
        self.delimiter_byte = ord(delimiter)
        self.span_fields = list(dict.fromkeys(self.kept + ([group] if group is not None else [])))
        self.kept_slots = [self.span_fields.index(f) for f in self.kept]
        self.group_slot = None if group is None else self.span_fields.index(group)
        self.role = np.full(self.num_fields, -1, np.int64)
        self.role[self.numeric] = np.arange(len(self.numeric))
        self.slot = np.full(self.num_fields, -1, np.int64)
        self.slot[self.span_fields] = np.arange(len(self.span_fields))

    @property
    def kept_names(self):
        return [self.names[f] for f in self.kept]

    def column(self, field):
        """How a message names field ``field`` (an index, maybe past the last column)."""
        if field is None:
            return None
        if field < self.num_fields and self.named and self.names[field]:
            return repr(self.names[field])
        return f"#{field + 1}"

    @classmethod
    def from_first_line(cls, fields, model_columns, columns=None, keep=None, group_by=None,
                        line=1, delimiter=","):
        """The layout from the first non-blank line's fields; returns (layout, is_header)."""
        if all(_number(f) is not None for f in fields):
            return cls._headerless(fields, model_columns, columns, keep, group_by, line,
                                   delimiter), False
        return cls.from_names([f.strip() for f in fields], model_columns, columns, keep,
                              group_by, line, delimiter), True

    @classmethod
    def without_header(cls, model_columns, names=None, keep=None, group_by=None, delimiter=","):
        """The layout of an input without a header line (``--no-header``): ``names`` name its
        fields in order, as a header line would (default: the model's columns, exactly)."""
        what = "--columns list" if names else "model"
        return cls.from_names(list(names or model_columns), model_columns, None, keep,
                              group_by, None, delimiter, has_header=False, what=what)

    @classmethod
    def from_names(cls, names, model_columns, columns=None, keep=None, group_by=None, line=1,
                   delimiter=",", has_header=True, what=None):
        """The layout from the names of the fields (a header line's)."""
        index = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)

        # a "header" with numbers in it is likely a data row: tail -f does not repeat the header
        looks_like_a_row = has_header and any(_number(n) is not None and n for n in names)
        hint = "; if that line is a data row, the input has no header: use --no-header" \
            if looks_like_a_row else ""

        def find(name, option):
            if name not in index:
                raise InputError(
                    f"the input has no column {name!r} ({option}; "
                    f"{'its header has' if has_header else 'the fields are'} "
                    f"{', '.join(map(repr, names))}){hint}", line=line)
            return index[name]

        wanted = list(columns) if columns else list(model_columns)
        how = "given with --columns" if columns else \
            f"the model reads {', '.join(model_columns)}; map other names with --columns"
        numeric = [find(name, how) for name in wanted]
        if keep is None:
            kept = [i for i, name in enumerate(names)
                    if i not in numeric and name and index[name] == i]
        else:
            kept = [find(name, "given with --keep") for name in keep]
        group = None if group_by is None else find(group_by, "given with --group-by")
        return cls(names, numeric, kept, group, has_header, delimiter, what)

    @classmethod
    def _headerless(cls, fields, model_columns, columns, keep, group_by, line, delimiter):
        named = [opt for opt, v in (("--columns", columns), ("--keep", keep),
                                    ("--group-by", group_by)) if v]
        if named:
            raise InputError(f"the first line is all numbers, so the input has no header, and "
                             f"{'/'.join(named)} need(s) column names: add a header line, or "
                             f"use --no-header with --columns naming every field",
                             line=line)
        C = len(model_columns)
        if len(fields) != C:
            raise FirstRowFieldCount(
                f"the input has no header (the first line is all numbers) and {len(fields)} "
                f"fields, but the model reads {C} columns ({', '.join(model_columns)}): give "
                f"the input a header line naming them (a stream opened in the middle of a "
                f"line: --on-error skip)", line=line)
        return cls(list(model_columns), range(C), [], None, has_header=False,
                   delimiter=delimiter)


DELIMITERS = (",", ";", "\t")


def sniff_delimiter(first_line, num_fields=None):
    """The field delimiter of a CSV input, from its first line (str): ``,``, ``;`` (SKAB, Excel
    in much of Europe) or tab, whichever the line holds most of outside quotes (a comma when
    none or a tie). With ``num_fields``, a delimiter that splits the line into exactly that many
    fields wins.

    >>> sniff_delimiter("datetime;Accelerometer1RMS;Temperature")
    ';'
    >>> sniff_delimiter("timestamp,temperature")
    ','
    """
    counts = {}
    for d in DELIMITERS:
        try:
            counts[d] = len(split_fields(first_line, d)) - 1
        except BadRow:
            counts[d] = first_line.count(d)
    if num_fields is not None:
        fits = [d for d in DELIMITERS if counts[d] == num_fields - 1]
        if fits:
            return fits[0]
    best = max(DELIMITERS, key=lambda d: counts[d])      # the first of a tie: ','
    return best if counts[best] > 0 else ","


@dataclasses.dataclass
class Rows:
    """One block of lines, parsed: per physical line a status; for OK lines the values."""
    buf: bytes
    status: np.ndarray           # (L,) OK, BLANK or BAD
    values: np.ndarray           # (L, C) float64
    ends: np.ndarray             # (L,) offset just after each line's LF
    span_ix: np.ndarray          # (L, K, 2) start, stop of the span fields in buf
    parsed_spans: dict           # line index -> span field texts, for lines Python parsed
    errors: dict                 # line index -> (field index or None, message)

    def spans(self, k, use):
        """Span field k of lines ``use``: bytes as in the input, or str if Python parsed it."""
        buf = self.buf
        ix = self.span_ix[use, k]
        col = [buf[s:e] for s, e in zip(ix[:, 0].tolist(), ix[:, 1].tolist())]
        if self.parsed_spans:
            for j, i in enumerate(use.tolist()):
                if i in self.parsed_spans:
                    col[j] = self.parsed_spans[i][k]
        return col


def parse_lines(buf, layout):
    """Parse a block of whole lines (bytes, each ending in LF) under ``layout``."""
    L = buf.count(b"\n")
    C = len(layout.numeric)
    K = len(layout.span_fields)
    X = np.empty((L, C))
    status = np.empty(L, np.int8)
    span_ix = np.zeros((L, K, 2), np.int64)
    ends = np.empty(L, np.int64)
    if JIT:
        _parse_lines(X, status, span_ix, ends, np.frombuffer(buf, np.uint8), layout.role,
                     layout.slot, layout.delimiter_byte)
    else:                       # without numba a byte loop is slow: Python parses every line
        lengths = [len(line) + 1 for line in buf.split(b"\n")[:-1]]
        ends[:] = np.cumsum(lengths)
        status[:] = SLOW
    starts = np.concatenate(([0], ends[:-1]))
    if not _ascii_or_utf8(buf):
        # bytes that are not UTF-8 somewhere: the lines holding them are for Python to judge
        for i in np.flatnonzero(status == OK).tolist():
            try:
                buf[starts[i]:ends[i]].decode("utf-8")
            except UnicodeDecodeError:
                status[i] = SLOW
    parsed_spans, errors = {}, {}
    for i in np.flatnonzero(status == SLOW).tolist():
        try:
            parsed = parse_line(buf[starts[i]:ends[i] - 1], layout)
        except BadRow as bad:
            status[i] = BAD
            errors[i] = (bad.field, bad.message)
            continue
        if parsed is None:
            status[i] = BLANK
            continue
        status[i] = OK
        X[i], parsed_spans[i] = parsed
    return Rows(buf, status, X, ends, span_ix, parsed_spans, errors)


def _ascii_or_utf8(buf):
    if buf.isascii():
        return True
    try:
        buf.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# -- output ----------------------------------------------------------------------------------

class Writer:
    """Output rows as CSV or JSON lines: kept fields, score, anomaly, [contributions]."""

    def __init__(self, fmt, kept_names, channels, explain, precision):
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"format must be 'csv' or 'jsonl', got {fmt!r}")
        if not 1 <= precision <= 17:
            raise ValueError(f"precision must be 1..17 significant digits, got {precision}")
        self.fmt, self.explain = fmt, explain
        self.num = f"%.{precision}g"
        names = list(kept_names) + ["score", "anomaly"]
        if explain:
            names += [f"contrib_{c}" for c in channels]
        self.names = names
        K = len(kept_names)
        if fmt == "csv":
            fields = ["%s"] * K + [self.num, "%d"] + [self.num] * (len(channels) if explain else 0)
        else:
            key = lambda n: json.dumps(n).replace("%", "%%")
            fields = [f"{key(n)}: %s" for n in kept_names] + ['"score": %s', '"anomaly": %d'] + \
                     [f"{key(n)}: %s" for n in names[K + 2:]]
        self.row = ((",".join(fields) if fmt == "csv" else "{" + ", ".join(fields) + "}")
                    + "\n").encode()

    def header(self):
        if self.fmt == "jsonl":
            return b""
        return (",".join(_csv_quote(n) for n in self.names) + "\n").encode()

    def rows(self, kept, scores, anomaly, contrib):
        """kept: per kept column a list of bytes/str; scores (N,), anomaly (N,), contrib (N, C)."""
        N = len(scores)
        cols = [self._text(col) for col in kept]
        if self.fmt == "csv":
            cols += [scores.tolist(), anomaly.tolist()]
            if self.explain:
                cols += contrib.T.tolist()
        else:
            cols += [self._json_numbers(scores), anomaly.tolist()]
            if self.explain:
                cols += [self._json_numbers(c) for c in contrib.T]
        W = len(cols)
        flat = [None] * (N * W)
        for j, col in enumerate(cols):
            flat[j::W] = col
        return (self.row * N) % tuple(flat)

    def _text(self, col):
        if self.fmt == "csv":
            return [v if v.__class__ is bytes else _csv_quote(v).encode() for v in col]
        return [json.dumps(v if v.__class__ is str else v.decode()).encode() for v in col]

    def _json_numbers(self, x):
        num = self.num
        if np.isfinite(x).all():
            return [(num % v).encode() for v in x.tolist()]
        return [(num % v).encode() if np.isfinite(v) else b"null" for v in x.tolist()]


def _csv_quote(text):
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text




class FirstRowFieldCount(InputError):
    """A headerless input's first row has the wrong number of fields: with on_error="skip"
    it is skipped like any bad row (a serial port opened in the middle of a line), and the
    next line decides."""

