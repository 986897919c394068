"""Write a seeded, labelled demo data set: one centrifugal pump, one row per minute.

    python tools/make_demo_data.py                          # examples/sensor.csv + labels
    python tools/make_demo_data.py --seed 1 -o examples/sensor_heldout.csv \
        --labels examples/sensor_heldout_labels.csv

The pump
--------
A latent *load* ``L`` (pump speed as a fraction of full speed, 0.45..1.0) drives everything:

    L = daily demand profile          low at night, morning rise, evening peak
      + operator set-point offsets    held 30-240 min, N(0, 0.07), reached by linear ramps
                                      of 0.004-0.012 per minute (the drive's acceleration limit)
      + slow wander                   AR(1), time constant 30 min, std 0.01

The channels follow ``L`` the way a pump on a variable-speed drive does (affinity laws:
head ~ speed^2, power ~ speed^3):

    current     (A)     2.5 + 15 L_m^3                     L_m = L through a 1-min lag (motor)
    pressure    (bar)   0.2 + 5 L_h^2                      L_h = L through a 0.5-min lag (hydraulics)
    temperature (degC)  ambient + dT                       dT: first-order response, tau 40 min,
                                                           towards 32 L_m^3 (heat ~ power)
    vibration   (mm/s)  0.9 + 1.8 L_m^2 + wear + AR(1) turbulence (tau 10 min, std 0.04)

The ambient temperature has a daily cycle (18 +- 3 degC, warmest at 15:00), weather-like
wander (AR(1), tau 3 h, std 0.3 degC) and a normal seasonal drift of +0.1 degC/day; normal
bearing wear adds 0.01 mm/s/day to the vibration. Each channel then gets white sensor noise
with the standard deviation in ``NOISE_SIGMA``; anomaly sizes below are in those units
("sigma"). So the next row is predictable from the recent past up to the sensor noise and
the unannounced set-point changes.

Anomalies
---------
Events never overlap, at least ``MIN_GAP`` normal rows separate them, and the first
``--clean-fraction`` of the rows (default 0.4, the part training takes as normal) has none.
Kinds are dealt in turn so each appears about equally often:

    spike               one channel, 1-3 rows, +-6..10 sigma (vibration spikes only go up)
    level_shift         one channel, 30-120 rows, offset of +-4..6 sigma, then back
    variance_burst      one channel, 30-120 rows, noise std multiplied by 3..5
    stuck               one channel, 60-240 rows, repeats the last good reading exactly
    drift               one channel, 150-250 rows, offset ramping linearly to +-4..8 sigma
                        (30-50 times faster than the normal drift), gone after the event
                        (sensor recalibrated)
    broken_correlation  two channels, 60-180 rows: the first moves as if the load changed by
                        0.08..0.15 (ramped in and out over 5-20 rows) while the second does
                        not follow: ``current;pressure`` = current rises, pressure stays
                        (mechanical drag); ``pressure;current`` = pressure drops, current
                        stays (leak or worn impeller)

Output
------
``sensor.csv``: ``timestamp,temperature,vibration,current,pressure``, ISO 8601 timestamps
from 2026-01-01T00:00:00, values with 3 decimals.
``sensor_labels.csv``: one row per event,
``event_id,start_row,end_row,start_timestamp,end_timestamp,kind,channels``; rows are 0-based
data-row indices (the header is not a row), ``end_row`` is inclusive, ``channels`` are
joined with ``;``. The same arguments give byte-identical files.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHANNELS = ("temperature", "vibration", "current", "pressure")
NOISE_SIGMA = {"temperature": 0.08, "vibration": 0.05, "current": 0.12, "pressure": 0.025}
KINDS = ("spike", "level_shift", "variance_burst", "stuck", "drift", "broken_correlation")
EVENT_ROWS = {  # kind -> (shortest, longest) duration in rows, inclusive
    "spike": (1, 3),
    "level_shift": (30, 120),
    "variance_burst": (30, 120),
    "stuck": (60, 240),
    "drift": (150, 250),
    "broken_correlation": (60, 180),
}
BROKEN_PAIRS = (("current", "pressure"), ("pressure", "current"))  # (moves, does not follow)
MIN_GAP = 120  # normal rows before, between and after events
START = np.datetime64("2026-01-01T00:00:00", "s")
MINUTES_PER_DAY = 1440
# (hour, load): water demand over a day; interpolated linearly, repeats every day
DEMAND = np.array([(0, 0.55), (5, 0.52), (7, 0.78), (12, 0.82), (14, 0.75),
                   (18, 0.90), (21, 0.80), (24, 0.55)])


@dataclass(frozen=True)
class Event:
    event_id: int
    start_row: int
    end_row: int  # inclusive
    kind: str
    channels: tuple[str, ...]


def first_order(x, tau, y0=None):
    """Discrete first-order lag, one step per row: x (n,), tau in rows -> y (n,)."""
    a = 1.0 - math.exp(-1.0 / tau)
    y = np.empty_like(x)
    prev = x[0] if y0 is None else y0
    for i in range(len(x)):
        prev += a * (x[i] - prev)
        y[i] = prev
    return y


def ar1(rng, n, tau, std):
    """Zero-mean AR(1) noise with time constant tau rows and stationary std: -> (n,)."""
    phi = math.exp(-1.0 / tau)
    shocks = rng.normal(0.0, std * math.sqrt(1.0 - phi * phi), n)
    y = np.empty(n)
    prev = rng.normal(0.0, std)
    for i in range(n):
        prev = phi * prev + shocks[i]
        y[i] = prev
    return y


def ramp_to(n, start, end, ramp_rows):
    """n values going linearly from start to end over ramp_rows, then holding end."""
    k = min(n, ramp_rows)
    out = np.full(n, float(end))
    out[:k] = start + (end - start) * np.arange(1, k + 1) / ramp_rows
    return out


def simulate_load(rng, n):
    """Latent pump speed as a fraction of full speed: -> L (n,)."""
    minute_of_day = np.arange(n) % MINUTES_PER_DAY
    demand = np.interp(minute_of_day / 60.0, DEMAND[:, 0], DEMAND[:, 1])
    offset = np.empty(n)
    row, level = 0, 0.0
    while row < n:
        hold = int(rng.integers(30, 241))
        new_level = rng.normal(0.0, 0.07)
        rate = rng.uniform(0.004, 0.012)  # the drive's acceleration limit, load per minute
        ramp = max(1, math.ceil(abs(new_level - level) / rate))
        m = min(hold + ramp, n - row)
        offset[row:row + m] = ramp_to(m, level, new_level, ramp)
        row, level = row + m, new_level
    wander = ar1(rng, n, tau=30.0, std=0.01)
    return np.clip(demand + offset + wander, 0.45, 1.0)


def draw_events(rng, n_rows, n_events, clean_fraction):
    """Place n_events non-overlapping events after the clean part, MIN_GAP rows apart."""
    first_row = math.ceil(clean_fraction * n_rows)
    kinds = [KINDS[i % len(KINDS)] for i in range(n_events)]
    rng.shuffle(kinds)
    lengths = [int(rng.integers(lo, hi + 1)) for lo, hi in (EVENT_ROWS[k] for k in kinds)]
    free = n_rows - first_row - sum(lengths) - (n_events + 1) * MIN_GAP
    if free < 0:
        raise ValueError(
            f"{n_events} events of {sum(lengths)} rows in total, {MIN_GAP} rows apart, do not fit "
            f"in the last {n_rows - first_row} of {n_rows} rows; use fewer --events, more --rows "
            f"or a smaller --clean-fraction")
    cuts = np.sort(rng.integers(0, free + 1, n_events))
    extra = np.diff(np.concatenate([[0], cuts]))  # spare rows added to each gap
    events, row = [], first_row
    for i, (kind, length) in enumerate(zip(kinds, lengths)):
        row += MIN_GAP + int(extra[i])
        if kind == "broken_correlation":
            channels = BROKEN_PAIRS[int(rng.integers(len(BROKEN_PAIRS)))]
        else:
            channels = (CHANNELS[int(rng.integers(len(CHANNELS)))],)
        events.append(Event(i, row, row + length - 1, kind, channels))
        row += length
    return events


def load_offsets(rng, n, events):
    """Extra load seen by one channel only, for broken_correlation events: -> {channel: (n,)}."""
    offsets = {name: np.zeros(n) for name in CHANNELS}
    for ev in events:
        if ev.kind != "broken_correlation":
            continue
        moving = ev.channels[0]
        length = ev.end_row - ev.start_row + 1
        ramp = min(int(rng.integers(5, 21)), length // 2)
        size = rng.uniform(0.08, 0.15) * (1.0 if moving == "current" else -1.0)
        shape = np.minimum(1.0, np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)) / ramp)
        offsets[moving][ev.start_row:ev.end_row + 1] += size * shape
    return offsets


def simulate_pump(rng, n, offsets):
    """Noisy sensor readings of a healthy pump (except broken_correlation): -> {channel: (n,)}."""
    load = simulate_load(rng, n)
    load_motor = first_order(load, tau=1.0)
    load_hydraulic = first_order(load, tau=0.5)
    days = np.arange(n) / MINUTES_PER_DAY
    minute_of_day = np.arange(n) % MINUTES_PER_DAY

    ambient = (18.0 + 3.0 * np.sin(2.0 * np.pi * (minute_of_day / MINUTES_PER_DAY - 0.375))
               + 0.1 * days + ar1(rng, n, tau=180.0, std=0.3))
    heat = 32.0 * load_motor**3
    temperature = ambient + first_order(heat, tau=40.0)
    vibration = (0.9 + 1.8 * load_motor**2 + 0.01 * days + ar1(rng, n, tau=10.0, std=0.04))
    current = 2.5 + 15.0 * (load_motor + offsets["current"])**3
    pressure = 0.2 + 5.0 * (load_hydraulic + offsets["pressure"])**2

    clean = {"temperature": temperature, "vibration": vibration,
             "current": current, "pressure": pressure}
    return {name: clean[name] + rng.normal(0.0, NOISE_SIGMA[name], n) for name in CHANNELS}


def apply_sensor_faults(rng, values, events):
    """Add the single-channel anomalies to the readings, in place."""
    for ev in events:
        if ev.kind == "broken_correlation":
            continue  # already in the physics, see load_offsets
        name = ev.channels[0]
        x, sigma = values[name], NOISE_SIGMA[name]
        rows = slice(ev.start_row, ev.end_row + 1)
        length = ev.end_row - ev.start_row + 1
        sign = 1.0 if name == "vibration" and ev.kind == "spike" else rng.choice([-1.0, 1.0])
        if ev.kind == "spike":
            x[rows] += sign * rng.uniform(6.0, 10.0, length) * sigma
        elif ev.kind == "level_shift":
            x[rows] += sign * rng.uniform(4.0, 6.0) * sigma
        elif ev.kind == "variance_burst":
            factor = rng.uniform(3.0, 5.0)
            x[rows] += rng.normal(0.0, sigma * math.sqrt(factor**2 - 1.0), length)
        elif ev.kind == "stuck":
            x[rows] = x[ev.start_row - 1]
        elif ev.kind == "drift":
            x[rows] += sign * rng.uniform(4.0, 8.0) * sigma * np.arange(1, length + 1) / length
        else:
            raise AssertionError(ev.kind)


def simulate(n_rows, n_events, seed=0, clean_fraction=0.4):
    """The whole data set: -> (timestamps (n,) datetime64[s], values {channel: (n,)}, events)."""
    if n_rows < 1:
        raise ValueError(f"--rows must be at least 1, got {n_rows}")
    if not 0.0 <= clean_fraction < 1.0:
        raise ValueError(f"--clean-fraction must be in [0, 1), got {clean_fraction}")
    rng = np.random.default_rng(seed)
    events = draw_events(rng, n_rows, n_events, clean_fraction)
    values = simulate_pump(rng, n_rows, load_offsets(rng, n_rows, events))
    apply_sensor_faults(rng, values, events)
    values["vibration"] = np.maximum(values["vibration"], 0.0)  # an RMS is never negative
    timestamps = START + np.arange(n_rows).astype("timedelta64[m]")
    return timestamps, values, events


def write_data(path, timestamps, values):
    stamps = np.datetime_as_string(timestamps, unit="s")
    columns = np.column_stack([values[name] for name in CHANNELS]) + 0.0  # +0.0: no "-0.000"
    lines = [",".join(("timestamp",) + CHANNELS)]
    lines += [f"{t},{a:.3f},{b:.3f},{c:.3f},{d:.3f}" for t, (a, b, c, d) in zip(stamps, columns)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_labels(path, timestamps, events):
    stamps = np.datetime_as_string(timestamps, unit="s")
    lines = ["event_id,start_row,end_row,start_timestamp,end_timestamp,kind,channels"]
    lines += [f"{ev.event_id},{ev.start_row},{ev.end_row},{stamps[ev.start_row]},"
              f"{stamps[ev.end_row]},{ev.kind},{';'.join(ev.channels)}" for ev in events]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Write a seeded demo pump data set with labelled anomaly events.",
        epilog="example: python tools/make_demo_data.py --seed 1 -o examples/sensor_heldout.csv "
               "--labels examples/sensor_heldout_labels.csv",
    )
    parser.add_argument("--rows", type=int, default=20000, help="data rows, one per minute (20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--events", type=int, default=30, help="number of anomaly events (30)")
    parser.add_argument("--clean-fraction", type=float, default=0.4,
                        help="leading fraction of rows kept free of anomalies (0.4)")
    parser.add_argument("-o", "--output", type=Path, default=Path("examples/sensor.csv"),
                        help="data CSV (examples/sensor.csv)")
    parser.add_argument("--labels", type=Path, default=Path("examples/sensor_labels.csv"),
                        help="events CSV (examples/sensor_labels.csv)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        timestamps, values, events = simulate(args.rows, args.events, args.seed, args.clean_fraction)
    except ValueError as err:
        print(f"make_demo_data.py: error: {err}", file=sys.stderr)
        return 2
    for path in (args.output, args.labels):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_data(args.output, timestamps, values)
    write_labels(args.labels, timestamps, events)
    print(f"wrote {args.output} ({args.rows} rows) and {args.labels} ({len(events)} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
