"""Score a sensor on a Raspberry Pi, one reading at a time, and react when it looks anomalous.

    python examples/pi_sensor.py                   # no hardware: replays examples/sensor.csv
    python examples/pi_sensor.py --verbose --interval 0 --count 2000
    python examples/pi_sensor.py --gpio 17 --state /var/lib/edgegru/pi_sensor.npz

Without hardware the "sensor" replays a CSV file (by default examples/sensor.csv, the demo pump);
to read real hardware, fill in :func:`read_hardware`. Each reading goes through
``AnomalyScorer.score_one`` (the same call ``edgegru run`` makes for every row); when the score
crosses the model's threshold, :func:`on_anomaly` logs which sensor moved and, with ``--gpio``,
lights an LED (gpiozero, if installed) until the readings are normal again.

With ``--state`` the scorer's state (GRU hidden state, last forecast, smoothing) is saved on exit
(Ctrl-C, SIGTERM from systemd) and every ``--save-every`` readings, and loaded at start, so a
restart carries on where the stream was instead of warming up again.

Start-up: the first reading compiles the kernels unless numba's cache has them (docs/raspberry-pi.md:
set NUMBA_CACHE_DIR and run ``edgegru compile`` once).
"""
import argparse
import csv
import itertools
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import edgegru

HERE = Path(__file__).resolve().parent


def read_hardware():
    """One reading from the real sensors as {column: value}, or None when there are none here.

    Replace with your sensors, for example a DS18B20 on the 1-wire bus::

        raw = Path("/sys/bus/w1/devices/28-0000000000/w1_slave").read_text()
        return {"temperature": int(raw.rsplit("t=", 1)[1]) / 1000.0, ...}

    A value you cannot read this time can be ``float("nan")``: the scorer imputes it.
    """
    return None


def replay(path, columns):
    """A simulated sensor: the model's columns of a CSV file, row after row, forever."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows to replay")
    for row in itertools.cycle(rows):
        yield {name: float(row[name] or "nan") for name in columns}


class Led:
    """An LED on a GPIO pin when gpiozero and the pin are there; otherwise it does nothing."""

    def __init__(self, pin):
        self.led = None
        if pin is None:
            return
        try:
            from gpiozero import LED
            self.led = LED(pin)
        except Exception as exc:                # no gpiozero, or not a Pi: say so once, go on
            print(f"pi_sensor: no LED on GPIO{pin} ({exc})", file=sys.stderr)

    def set(self, on):
        if self.led is not None:
            self.led.on() if on else self.led.off()


def on_anomaly(started, reading, score, scorer, led):
    """React to an anomaly starting (started=True) or ending: log it, switch the LED."""
    if started:
        contrib = scorer.contributions
        worst = scorer.columns[int(np.argmax(contrib))]
        print(f"ANOMALY score {score:.2f} > {scorer.threshold:.2f}, mostly {worst} "
              f"({worst}={reading[worst]:g})", flush=True)
    else:
        print(f"back to normal, score {score:.2f}", flush=True)
    led.set(started)


def load_state(scorer, path):
    if path and os.path.exists(path):
        try:
            scorer.load_state(path)
            print(f"pi_sensor: resumed from {path}", file=sys.stderr)
        except ValueError as exc:
            print(f"pi_sensor: ignoring {exc}; starting afresh", file=sys.stderr)


def save_state(scorer, path):
    if path:
        scorer.save_state(path)        # atomic: the old file or the new one, never half


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=HERE.parent / "weights" / "model.npz",
                   help="scoring model (default: weights/model.npz)")
    p.add_argument("--replay", default=HERE / "sensor.csv",
                   help="CSV to replay when read_hardware() has no sensor")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=0, help="stop after N readings (0: never)")
    p.add_argument("--gpio", type=int, help="LED on this GPIO pin while anomalous")
    p.add_argument("--state", help="state file, loaded at start and saved on exit")
    p.add_argument("--save-every", type=int, default=600, help="also save every N readings")
    p.add_argument("--verbose", action="store_true", help="print every reading's score")
    args = p.parse_args(argv)

    scorer = edgegru.AnomalyScorer.load(args.weights)
    load_state(scorer, args.state)
    led = Led(args.gpio)
    simulated = read_hardware() is None
    source = replay(args.replay, scorer.columns) if simulated else iter(read_hardware, object())
    if simulated:
        print(f"pi_sensor: no hardware, replaying {args.replay}", file=sys.stderr)
    # systemd stops a service with SIGTERM: leave the loop the way Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    n = anomalies = 0
    anomalous = False
    try:
        for reading in source:
            score = scorer.score_one(reading)
            n += 1
            if args.verbose:
                print(f"{n} score {score:.3f}", flush=True)
            if (score > scorer.threshold) != anomalous:
                anomalous = not anomalous
                anomalies += anomalous
                on_anomaly(anomalous, reading, score, scorer, led)
            if args.state and n % args.save_every == 0:
                save_state(scorer, args.state)
            if n == args.count:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        save_state(scorer, args.state)
        led.set(False)
    print(f"pi_sensor: {n} readings, {anomalies} anomalies", file=sys.stderr)


if __name__ == "__main__":
    main()
