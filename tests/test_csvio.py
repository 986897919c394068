"""edgegru.csvio: the compiled parser agrees with the Python reference parser (which defines what
a line means) on mutated rows in every layout; the delimiter is sniffed."""
from pathlib import Path

import numpy as np
import pytest

import edgegru
from conftest import SENSOR_COLUMNS
from edgegru import csvio

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sensor.csv"
HEADER = b"timestamp,temperature,vibration,current,pressure\n"
NAMES = ["timestamp"] + SENSOR_COLUMNS


@pytest.fixture(scope="module")
def example():
    """The first 600 rows of examples/sensor.csv (header included)."""
    lines = EXAMPLE.read_bytes().split(b"\n")[:601]
    return (b"\n".join(lines) + b"\n",)


def test_sniff_delimiter_prefers_the_count_that_fits():
    assert csvio.sniff_delimiter("a;b;c;d") == ";"
    assert csvio.sniff_delimiter("a,b") == ","
    assert csvio.sniff_delimiter("nothing") == ","
    assert csvio.sniff_delimiter("a\tb,c\td") == "\t"
    # a headerless row with decimal commas: as many ',' as ';', and the field count decides
    assert csvio.sniff_delimiter("1,5;2,5;3;4", num_fields=4) == ";"
    assert csvio.sniff_delimiter('"x;y";1;2,0', num_fields=3) == ";"

ALPHABET = b'0123456789.,-+eE"  \t\r\x00\xff\xc3\xa9nanif_x;'


def mutate(line, rng):
    """One random edit of a line: replace, insert or delete bytes, drop or add fields, quote."""
    b = bytearray(line)
    for _ in range(rng.integers(1, 4)):
        op = rng.integers(0, 8)
        at = int(rng.integers(0, len(b) + 1))
        ch = ALPHABET[rng.integers(0, len(ALPHABET))]
        if op == 0 and b:
            b[min(at, len(b) - 1)] = ch
        elif op == 1:
            b.insert(at, ch)
        elif op == 2 and b:
            del b[min(at, len(b) - 1)]
        elif op == 3:
            b = bytearray(b",".join(b.split(b",")[:-1]))
        elif op == 4:
            b += b"," + bytes(rng.choice(list(b"0123456789."), rng.integers(0, 20)))
        elif op == 5:
            b.insert(at, 34)
            b.insert(min(len(b), at + int(rng.integers(1, 10))), 34)
        elif op == 6:
            digits = bytes(rng.choice(list(b"0123456789"), rng.integers(10, 25)))
            fields = b.split(b",")
            fields[int(rng.integers(0, len(fields)))] = b"-" + digits[:5] + b"." + digits[5:]
            b = bytearray(b",".join(fields))
        else:
            b = bytearray(rng.bytes(int(rng.integers(0, 30))))
    return bytes(b).replace(b"\n", b"")


def layouts():
    sensor, _ = csvio.Layout.from_first_line(HEADER[:-1].decode().split(","), SENSOR_COLUMNS)
    bare, _ = csvio.Layout.from_first_line(["1", "2", "3", "4"], SENSOR_COLUMNS)
    semicolon, _ = csvio.Layout.from_first_line(NAMES, SENSOR_COLUMNS, delimiter=";")
    tab = csvio.Layout.without_header(SENSOR_COLUMNS, NAMES, delimiter="\t")
    return sensor, bare, semicolon, tab


def test_compiled_parser_equals_the_python_reference_on_10000_mutated_rows(example):
    base = example[0].split(b"\n")[1:201]
    base += [b",".join(l.split(b",")[1:]) for l in base]             # headerless rows too
    rng = np.random.default_rng(7)
    seen = set()
    for layout in layouts():
        # the sensor lines in this layout's delimiter; mutations still cut at commas and insert
        # every delimiter
        ours = [l.replace(b",", layout.delimiter.encode()) for l in base]
        for start in range(0, 5000 if layout.delimiter == "," else 2500, 250):
            lines = [mutate(ours[rng.integers(0, len(ours))], rng) if rng.random() < 0.8
                     else ours[rng.integers(0, len(ours))] for _ in range(250)]
            block = b"\n".join(lines) + b"\n"
            rows = csvio.parse_lines(block, layout)
            for i, line in enumerate(lines):
                try:
                    ref = csvio.parse_line(line, layout)
                except csvio.BadRow as bad:
                    assert rows.status[i] == csvio.BAD and rows.errors[i] == (bad.field,
                                                                              bad.message)
                    seen.add("bad")
                    continue
                if ref is None:
                    assert rows.status[i] == csvio.BLANK
                    continue
                assert rows.status[i] == csvio.OK, line
                got = rows.values[i]
                assert np.array_equal(got, ref[0], equal_nan=True), line
                assert np.array_equal(np.signbit(got), np.signbit(ref[0])), line
                spans = [s if isinstance(s, str) else s.decode()
                         for s in (rows.spans(k, np.array([i]))[0]
                                   for k in range(len(layout.span_fields)))]
                assert spans == ref[1], line
                seen.add("fast" if i not in rows.parsed_spans else "python")
    assert seen == ({"bad", "fast", "python"} if edgegru.JIT else {"bad", "python"})
