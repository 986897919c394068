"""Score a detector's per-row output against labelled anomaly events.

    python tools/evaluate.py scores.csv --labels examples/sensor_labels.csv --threshold 4
    python tools/evaluate.py scores.csv --labels examples/sensor_labels.csv \
        --baseline examples/sensor.csv --json

``scores.csv`` has one row per data row, in the data's order, with a ``score`` column (high
means anomalous) and optionally an ``anomaly`` column (0/1, the detector's own alarms). Alarms
are ``score > --threshold`` when a threshold is given, else the ``anomaly`` column. The labels
file is the events CSV written by ``tools/make_demo_data.py``.

Definitions (``window`` of an event = rows ``start_row .. end_row + grace``):

- ROC-AUC, PR-AUC: of the per-row score against per-row labels (1 inside an event, grace rows
  not included). PR-AUC is the average precision, sum over thresholds of
  (recall step) x precision, as scikit-learn computes it. NaN scores (warm-up rows) rank lowest.
- events caught: an event is caught if any alarm falls in its window; time to detection is
  the first such alarm's row minus ``start_row``.
- false alarms: alarm rows outside every window, each run of consecutive such rows counted
  once; a run is cut where a window begins. Normal rows are the rows outside every window.

``--start-row N`` evaluates rows N and later only (events that start before N are left out),
for example the rows after a model's training part; scores and the baseline are still computed
on the whole file, so the state before row N is what it would be in a real run.

The z-score baseline (``--baseline DATA.csv``): for every numeric column,
``|x - mean| / std`` over the ``--window`` rows before the current one (not including it),
the score being the largest over channels, NaN for the first ``window`` rows. Its threshold is
the largest score in the first ``--calibration-fraction`` of the rows (the anomaly-free part),
so the baseline raises no alarm at all on the data it was calibrated on.

Other tools import the functions: ``sys.path.insert(0, "tools"); from evaluate import evaluate``.
"""

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass

import numpy as np

STD_FLOOR = 1e-9  # a flat window (stuck sensor) gives a large, finite z when the value moves


@dataclass(frozen=True)
class Event:
    event_id: int
    start_row: int
    end_row: int  # inclusive
    kind: str
    channels: tuple[str, ...]


def read_events(path):
    """The events CSV (event_id,start_row,end_row,...,kind,channels) -> [Event] sorted by start."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"start_row", "end_row", "kind"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} has no column {', '.join(sorted(missing))}; expected the "
                             f"events CSV written by tools/make_demo_data.py")
        events = [Event(int(row.get("event_id") or i), int(row["start_row"]), int(row["end_row"]),
                        row["kind"], tuple(filter(None, (row.get("channels") or "").split(";"))))
                  for i, row in enumerate(reader)]
    for ev in events:
        if not 0 <= ev.start_row <= ev.end_row:
            raise ValueError(f"{path}: event {ev.event_id} has start_row {ev.start_row} and "
                             f"end_row {ev.end_row}; need 0 <= start_row <= end_row")
    return sorted(events, key=lambda ev: ev.start_row)


def read_columns(path):
    """A CSV with a header -> {column: [str]}, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header line")
        columns = {name: [] for name in header}
        for row in reader:
            for name, value in zip(header, row):
                columns[name].append(value)
    return columns


def to_float(values):
    """[str] -> float64 array; empty cells and 'nan' become NaN."""
    return np.array([float(v) if v.strip() else math.nan for v in values], dtype=np.float64)


def read_scores(path, score_column="score", anomaly_column="anomaly"):
    """-> (scores (n,) float64, alarms (n,) bool or None when there is no anomaly column)."""
    columns = read_columns(path)
    if score_column not in columns:
        raise ValueError(f"{path} has no column {score_column!r} (columns: {', '.join(columns)}); "
                         f"pass --score-column NAME")
    scores = to_float(columns[score_column])
    alarms = None
    if anomaly_column in columns:
        alarms = to_float(columns[anomaly_column]) > 0.5
    return scores, alarms


def read_channels(path):
    """The data CSV -> (names, values (n, c) float64) for every column that parses as numbers."""
    columns = read_columns(path)
    names, arrays = [], []
    for name, values in columns.items():
        try:
            arrays.append(to_float(values))
        except ValueError:
            continue  # timestamps and other text
        names.append(name)
    if not names:
        raise ValueError(f"{path} has no numeric column")
    return names, np.column_stack(arrays)


def row_labels(events, n_rows):
    """-> (n_rows,) bool, True inside an event."""
    labels = np.zeros(n_rows, dtype=bool)
    for ev in events:
        labels[ev.start_row:ev.end_row + 1] = True
    return labels


def event_windows(events, n_rows, grace):
    """-> (n_rows,) bool, True inside an event or its grace rows."""
    windows = np.zeros(n_rows, dtype=bool)
    for ev in events:
        windows[ev.start_row:ev.end_row + grace + 1] = True
    return windows


def _ranked(scores):
    """NaN -> -inf, so rows without a score rank lowest."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def roc_auc(scores, labels):
    """Probability that a random positive row outscores a random negative one (ties count
    half), from the rank sum. NaN if there are no positives or no negatives."""
    s, y = _ranked(scores), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])  # first of each tie group
    sizes = np.diff(np.r_[starts, len(s)])
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(starts + (sizes + 1) / 2.0, sizes)  # 1-based, ties averaged
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores, labels):
    """PR-AUC as sum_k (R_k - R_{k-1}) P_k over distinct thresholds, high to low. NaN if there
    are no positives."""
    s, y = _ranked(scores), np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    sorted_s, sorted_y = s[order], y[order]
    last = np.r_[sorted_s[1:] != sorted_s[:-1], True]  # last row of each tie group
    tp = np.cumsum(sorted_y)[last]
    fp = np.cumsum(~sorted_y)[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def count_runs(mask):
    """Number of runs of consecutive True values."""
    m = np.asarray(mask, dtype=bool)
    return int(np.count_nonzero(m[1:] & ~m[:-1]) + (1 if m.size and m[0] else 0))


def evaluate(scores, alarms, events, n_rows, grace=10):
    """Scores (n_rows,) float, alarms (n_rows,) bool, events [Event] -> dict of metrics.

    >>> ev = [Event(0, 4, 5, "spike", ("current",))]
    >>> alarms = np.zeros(20, dtype=bool); alarms[[1, 2, 6, 18]] = True
    >>> m = evaluate(alarms.astype(float), alarms, ev, 20, grace=2)
    >>> m["events_caught"], m["false_alarms"], m["detection_delay_max"]
    (1, 2, 2)
    """
    scores = np.asarray(scores, dtype=np.float64)
    alarms = np.asarray(alarms, dtype=bool)
    if scores.shape != (n_rows,) or alarms.shape != (n_rows,):
        raise ValueError(f"scores {scores.shape} and alarms {alarms.shape} must both have shape "
                         f"({n_rows},): one value per data row")
    if grace < 0:
        raise ValueError(f"grace must be >= 0, got {grace}")
    late = [ev for ev in events if ev.end_row >= n_rows]
    if late:
        raise ValueError(f"event {late[0].event_id} ends at row {late[0].end_row} but there are "
                         f"only {n_rows} rows; are the scores and labels for the same data?")

    labels = row_labels(events, n_rows)
    windows = event_windows(events, n_rows, grace)
    delays, per_kind, missed = [], {}, []
    for ev in events:
        hits = np.flatnonzero(alarms[ev.start_row:ev.end_row + grace + 1])
        kind = per_kind.setdefault(ev.kind, {"events": 0, "caught": 0})
        kind["events"] += 1
        if hits.size:
            kind["caught"] += 1
            delays.append(int(hits[0]))
        else:
            missed.append(ev.event_id)
    for kind in per_kind.values():
        kind["rate"] = kind["caught"] / kind["events"]

    normal_rows = int(np.count_nonzero(~windows))
    false_alarms = count_runs(alarms & ~windows)
    return {
        "rows": n_rows,
        "event_rows": int(labels.sum()),
        "normal_rows": normal_rows,
        "grace": grace,
        "roc_auc": roc_auc(scores, labels),
        "pr_auc": average_precision(scores, labels),
        "events": len(events),
        "events_caught": len(delays),
        "catch_rate": len(delays) / len(events) if events else math.nan,
        "false_alarms": false_alarms,
        "false_alarms_per_10k": 1e4 * false_alarms / normal_rows if normal_rows else math.nan,
        "alarm_rows": int(alarms.sum()),
        "detection_delay_median": float(np.median(delays)) if delays else math.nan,
        "detection_delay_max": max(delays) if delays else math.nan,
        "per_kind": dict(sorted(per_kind.items())),
        "missed_event_ids": missed,
    }


def rolling_zscore(values, window=60):
    """values (n, c) -> score (n,): max over channels of |x - mean| / std of the `window` rows
    before each row. NaN for the first `window` rows; NaN readings are left out of the sums."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n, c = x.shape
    if window < 2:
        raise ValueError(f"window must be at least 2 rows, got {window}")
    score = np.full(n, math.nan)
    if n <= window:
        return score
    valid = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        centre = np.nanmean(np.where(valid, x, np.nan), axis=0)  # keeps the running sums small
    d = np.where(valid, x - centre, 0.0)
    zeros = np.zeros((1, c))
    s1 = np.concatenate([zeros, np.cumsum(d, axis=0)])  # s[i] = sum of rows 0 .. i-1
    s2 = np.concatenate([zeros, np.cumsum(d * d, axis=0)])
    k = np.concatenate([zeros, np.cumsum(valid, axis=0)])
    cur = slice(window, n)  # row i sees rows i-window .. i-1
    count = k[window:n] - k[0:n - window]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (s1[window:n] - s1[0:n - window]) / count
        var = np.maximum((s2[window:n] - s2[0:n - window]) / count - mean * mean, 0.0)
        z = np.abs(d[cur] - mean) / np.maximum(np.sqrt(var), STD_FLOOR)
        z = np.where(valid[cur] & (count >= 2), z, np.nan)
    score[cur] = np.fmax.reduce(z, axis=1)
    return score


def calibrate_threshold(scores, n_clean):
    """Largest finite score in the first n_clean rows: no alarm there at all."""
    clean = np.asarray(scores, dtype=np.float64)[:n_clean]
    clean = clean[np.isfinite(clean)]
    if clean.size == 0:
        raise ValueError(f"no finite baseline score in the first {n_clean} rows; use a larger "
                         f"--calibration-fraction or a smaller --window")
    return float(clean.max())


def _cell(value, fmt="{:.3f}"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(results):
    """{detector name: metrics dict} -> a text table, one column per detector."""
    names = list(results)
    first = results[names[0]]
    rows = [
        ("threshold", lambda m: _cell(m.get("threshold"), "{:.4g}")),
        ("ROC-AUC", lambda m: _cell(m["roc_auc"])),
        ("PR-AUC", lambda m: _cell(m["pr_auc"])),
        ("events caught", lambda m: f"{m['events_caught']}/{m['events']}"),
        ("false alarms", lambda m: str(m["false_alarms"])),
        ("false alarms / 10k normal rows", lambda m: _cell(m["false_alarms_per_10k"], "{:.2f}")),
        ("alarm rows", lambda m: str(m["alarm_rows"])),
        ("detection delay, median (rows)", lambda m: _cell(m["detection_delay_median"], "{:.1f}")),
        ("detection delay, max (rows)", lambda m: _cell(m["detection_delay_max"], "{}")),
    ]
    for kind in first["per_kind"]:
        rows.append((f"caught: {kind}", lambda m, kind=kind:
                     "{caught}/{events}".format(**m["per_kind"][kind])))
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(name), 10) for name in names]
    lines = [f"{first['rows']} rows, {first['events']} events ({first['event_rows']} rows), "
             f"{first['normal_rows']} normal rows, grace {first['grace']} rows",
             " " * label_width + "".join(f"  {name:>{w}}" for name, w in zip(names, widths))]
    for label, get in rows:
        cells = "".join(f"  {get(results[name]):>{w}}" for name, w in zip(names, widths))
        lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Compare per-row anomaly scores with labelled events; optionally run a "
                    "rolling z-score baseline side by side.",
        epilog="example: python tools/evaluate.py scores.csv --labels examples/sensor_labels.csv "
               "--threshold 4 --baseline examples/sensor.csv",
    )
    parser.add_argument("scores", help="CSV with one row per data row and a score column")
    parser.add_argument("--labels", required=True, help="events CSV (event_id,start_row,end_row,...)")
    parser.add_argument("--threshold", type=float,
                        help="alarm when score > T (default: use the anomaly column)")
    parser.add_argument("--score-column", default="score", help="score column name (score)")
    parser.add_argument("--anomaly-column", default="anomaly", help="0/1 alarm column name (anomaly)")
    parser.add_argument("--grace", type=int, default=10,
                        help="rows after an event's end in which an alarm still catches it (10)")
    parser.add_argument("--baseline", metavar="DATA.csv",
                        help="also score this data with the rolling z-score baseline")
    parser.add_argument("--window", type=int, default=60, help="baseline trailing window, rows (60)")
    parser.add_argument("--calibration-fraction", type=float, default=0.4,
                        help="leading, anomaly-free fraction of rows the baseline threshold is "
                             "taken from (0.4)")
    parser.add_argument("--start-row", type=int, default=0,
                        help="evaluate rows from this one on, e.g. after the training part (0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def run(args):
    scores, anomaly = read_scores(args.scores, args.score_column, args.anomaly_column)
    n_rows = len(scores)
    events = read_events(args.labels)
    if args.threshold is not None:
        alarms = scores > args.threshold
    elif anomaly is not None:
        alarms = anomaly
    else:
        raise ValueError(f"{args.scores} has no {args.anomaly_column!r} column; pass --threshold T")
    start = args.start_row
    if not 0 <= start < n_rows:
        raise ValueError(f"--start-row must be in [0, {n_rows}), got {start}")
    late = [Event(ev.event_id, ev.start_row - start, ev.end_row - start, ev.kind, ev.channels)
            for ev in events if ev.start_row >= start]
    detector = evaluate(scores[start:], alarms[start:], late, n_rows - start, args.grace)
    detector["threshold"] = args.threshold
    results = {"detector": detector}

    if args.baseline:
        names, values = read_channels(args.baseline)
        if len(values) != n_rows:
            raise ValueError(f"{args.baseline} has {len(values)} rows but {args.scores} has "
                             f"{n_rows}; the baseline needs the data the scores were made from")
        n_clean = int(args.calibration_fraction * n_rows)
        if any(ev.start_row < n_clean for ev in events):
            print(f"evaluate.py: warning: events start inside the first {n_clean} rows, which "
                  f"calibrate the baseline; lower --calibration-fraction", file=sys.stderr)
        z = rolling_zscore(values, args.window)
        threshold = calibrate_threshold(z, n_clean)
        baseline = evaluate(z[start:], z[start:] > threshold, late, n_rows - start, args.grace)
        baseline["threshold"] = threshold
        baseline["channels"] = names
        results["z-score baseline"] = baseline
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        results = run(args)
    except (OSError, ValueError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_jsonable(results), indent=2))
    else:
        print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
