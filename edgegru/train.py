"""Training: a GRU forecaster fitted with PyTorch on the normal rows of a sensor CSV, calibrated
with :mod:`edgegru.calibrate`, saved as an edgegru model file (``edgegru train``).

    import edgegru.train
    model = edgegru.train.train_model("pump.csv", "pump.npz", train_rows=20000)

PyTorch (``pip install 'edgegru[train]'``) is imported only to fit the network; reading and
checking the data, calibrating and saving do not need it, and the model file it writes does not.

What :func:`train_model` does:

1. Reads the CSV (:func:`read_csv`: a header line, one row per time step, ``,`` ``;`` tab or
   ``|`` between fields, sniffed from the header). Numeric columns are the channels unless
   ``columns`` names them; text columns are skipped, and the first that holds times (or is named
   like ``timestamp``) is recorded as the timestamp column.
2. Takes the leading ``train_rows`` (or ``train_fraction``; default: every row) as *normal*: the
   anomaly-free stretch the model learns from, and splits it in time: the first
   ``1 - calibration_fraction`` trains the network, the rest (never trained on) calibrates the
   score.
3. Normalises every channel by its mean and std over the training rows and trains
   ``nn.GRU + nn.Linear`` (:func:`fit_forecaster`) to predict the next normalised row from the
   rows so far: squared error per channel relative to the channel's mean squared row-to-row
   step; truncated back-propagation through time over windows of ``window`` rows, whose first
   ``burn_in`` rows only settle the state; each window shifted by a random constant per
   channel, up to ``shift``, so the network follows levels it has not seen instead of
   memorising the training range. The cost is the number of optimizer steps, so that is what
   is budgeted (``steps``), whatever the file's length.
4. Builds the edgegru model from the trained state dict (``edgegru.from_state_dict``, the
   import path users take) and calibrates it (:func:`edgegru.calibrate.calibrate`).
5. Writes ``OUT.npz`` (weights + ``preprocessing``, ``scoring``, ``provenance`` metadata) and
   the PyTorch state dict as ``OUT.pt``.

The same data, options and seed give a byte-identical file: training is seeded, single
threaded and deterministic, and no wall-clock time is recorded.

Rows with a missing value (empty or NaN) are left out of the training windows (a window never
spans one) and scored in calibration as ``edgegru run`` scores them.

>>> sniff_delimiter("datetime;Accelerometer1RMS;Current")
';'
"""
import csv
import hashlib
import math
import platform
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from edgegru.calibrate import (LEVEL_BLOCK, CalibrationOptions, _round, calibrate,
                               check_calibration_fraction, fit_level, normalisation, recalibrate,
                               split_normal, split_rows)
from edgegru.errors import TrainingError
from edgegru.formats import load, save
from edgegru.model import WEIGHTS_DTYPES, Model, recurrent_bfloat16
from edgegru.scoring import FORECASTS, AnomalyScorer
from edgegru.csvio import sniff_delimiter    # the same rule as edgegru run's

MAX_WINDOW = 128             # rows per training window when the data allows (a few warm-ups)
MAX_EPOCHS = 200             # a small file is not passed over more often than this
TIMESTAMP_NAMES = {"timestamp", "datetime", "date", "time", "ts", "date_time", "epoch"}
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d*)?)?)?")


@dataclass
class TrainingOptions:
    """How the forecaster is fitted and how the normal rows are split (``edgegru train``'s options
    of the same names)."""
    calibration_fraction: float = 0.3   # trailing share of the normal rows kept to calibrate
    hidden_size: int = 32
    num_layers: int = 1
    steps: int = 600                    # optimizer steps (what training costs)
    epochs: Optional[int] = None        # passes over the windows; None: what `steps` takes
    window: Optional[int] = None        # rows per window; None: 128, or half the training rows
    burn_in: int = 16                   # first rows of a window that only settle the state
    stride: int = 16                    # rows between window starts
    batch_size: int = 32                # windows per step
    lr: float = 5e-3                    # peak learning rate (Adam)
    clip: float = 1.0                   # gradient norm clip
    shift: float = 3.0                  # random per-window level shift (normalised units)
    forecast: str = "delta"             # the head predicts the step to the next row, or the row
    seed: int = 0
    threads: int = 1                    # torch threads (fixed, so a seed gives the same file)
    weights_dtype: str = "f32"          # "bf16": W_hh held in bfloat16 (as edgegru convert's)

    def check(self):
        """Raise TrainingError naming the option that is out of range."""
        for name in ("hidden_size", "num_layers", "steps", "stride", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise TrainingError("--epochs must be at least 1")
        if self.window is not None and not 0 <= self.burn_in < self.window:
            raise TrainingError("--burn-in must be at least 0 and less than --window")
        if self.burn_in < 0:
            raise TrainingError("--burn-in must be at least 0")
        check_calibration_fraction(self.calibration_fraction)
        if self.forecast not in FORECASTS:
            raise TrainingError(f"--forecast must be {' or '.join(FORECASTS)}, got "
                                f"{self.forecast!r}")
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise TrainingError(f"--weights-dtype must be {' or '.join(WEIGHTS_DTYPES)}, got "
                                f"{self.weights_dtype!r}")
        if self.lr <= 0 or self.clip <= 0 or self.shift < 0:
            raise TrainingError("--lr and --clip must be positive, --shift at least 0")
        return self


class SensorTable(NamedTuple):
    """A sensor CSV as training reads it."""
    names: list           # channel columns, in order
    X: np.ndarray         # (n, C) float64, NaN for a missing value
    skipped: list         # columns that are not channels
    timestamp: Optional[str]   # the column holding the time, if any
    delimiter: str


# -- data -----------------------------------------------------------------------------------

def read_csv(path, columns=None, delimiter=None):
    """A sensor CSV -> :class:`SensorTable`.

    Without ``columns``, every column whose non-empty cells all parse as numbers is a channel,
    except one named like a timestamp (``timestamp``, ``datetime``, ``time``, ...); the others
    (timestamps, ids) are skipped. With ``columns``, exactly those, in that order.
    ``delimiter``: the field separator; None sniffs it from the header line.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            if not first.strip():
                raise TrainingError(f"{path}: the file is empty; expected a header line "
                                    f"such as 'timestamp,temperature,current'")
            delimiter = delimiter or sniff_delimiter(first)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader)]
            cells = [row for row in reader if row]
    except OSError as exc:
        raise TrainingError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TrainingError(f"{path}: not a UTF-8 text file") from None
    for i, row in enumerate(cells):
        if len(row) != len(header):
            raise TrainingError(f"{path}, line {i + 2}: {len(row)} fields, the header has "
                                f"{len(header)} (fields separated by {delimiter!r}; "
                                f"--delimiter sets it)")
    timestamp = next((h for j, h in enumerate(header) if _is_time_column(h, cells, j)), None)
    if columns is None:
        wanted = [h for h in header if h != timestamp]
    else:
        missing = [c for c in columns if c not in header]
        if missing:
            raise TrainingError(f"{path}: no column {', '.join(map(repr, missing))}; "
                                f"the columns are {', '.join(header)}")
        wanted = list(columns)
    names, arrays = [], []
    for name in wanted:
        j = header.index(name)
        values, bad_line = _parse_floats(row[j] for row in cells)
        if bad_line is not None:
            if columns is not None:
                raise TrainingError(f"{path}, line {bad_line + 2}, column {name!r}: "
                                    f"{cells[bad_line][j]!r} is not a number")
            continue
        names.append(name)
        arrays.append(values)
    if not names:
        raise TrainingError(f"{path}: no numeric column (columns: {', '.join(header)})")
    skipped = [h for h in header if h not in names]
    X = np.column_stack(arrays) if cells else np.zeros((0, len(names)))
    return SensorTable(names, X, skipped, timestamp if timestamp in skipped else None, delimiter)


def _is_time_column(name, cells, j):
    """A column named like a timestamp, or whose first non-empty cell is an ISO date/time."""
    if name.lower() in TIMESTAMP_NAMES:
        return True
    first = next((row[j].strip() for row in cells if row[j].strip()), "")
    return bool(_ISO_TIME.fullmatch(first))


def _parse_floats(cells):
    """-> (float64 array, None) or (None, index of the first cell that is not a number)."""
    out = []
    for i, cell in enumerate(cells):
        cell = cell.strip()
        if not cell:
            out.append(math.nan)
            continue
        try:
            out.append(float(cell))
        except ValueError:
            return None, i
    return np.array(out, dtype=np.float64), None


def normal_rows(n, train_fraction=None, train_rows=None):
    """How many leading rows are normal (the part training may use); default: all of them."""
    if train_rows is not None:
        if train_fraction is not None:
            raise TrainingError("give --train-rows or --train-fraction, not both")
        if train_rows < 1:
            raise TrainingError(f"--train-rows must be positive, got {train_rows}")
        if train_rows > n:
            raise TrainingError(f"--train-rows {train_rows} is more than the file's {n} rows")
        return train_rows
    if train_fraction is None:
        return n
    if not 0.0 < train_fraction <= 1.0:
        raise TrainingError(f"--train-fraction must be in (0, 1], got {train_fraction}")
    return int(round(train_fraction * n))


def training_windows(finite_rows, window, stride):
    """Start rows of windows of ``window`` rows that hold no missing value, every ``stride``."""
    bad = np.flatnonzero(~finite_rows)
    starts = np.arange(0, len(finite_rows) - window + 1, stride)
    if bad.size:
        # a window [s, s + window) is clean when the next bad row at or after s is >= s + window
        nxt = np.searchsorted(bad, starts)
        next_bad = np.where(nxt < bad.size, bad[np.minimum(nxt, bad.size - 1)], len(finite_rows))
        starts = starts[next_bad >= starts + window]
    return starts


def choose_window(X_train, window=None):
    """Rows per training window: ``window`` if given, else MAX_WINDOW or half the complete
    training rows when they are fewer. Refuses a window no clean stretch holds."""
    finite = np.isfinite(X_train).all(axis=1)
    if window is None:
        window = max(16, min(MAX_WINDOW, int(finite.sum()) // 2))
    if len(training_windows(finite, window + 1, 1)) == 0:
        raise TrainingError(f"no {window + 1} consecutive training rows without a missing "
                            f"value; use a smaller --window")
    return window


def prepare(path, columns=None, delimiter=None, train_rows=None, train_fraction=None,
            options=None, log=None):
    """Read and check the data (no torch needed): -> dict of what training needs."""
    options = (options or TrainingOptions()).check()
    log = log or (lambda message: None)
    table = read_csv(path, columns, delimiter)
    names, X = table.names, table.X
    log(f"{path}: {len(X)} rows, channels {', '.join(names)}"
        + (f" (skipped: {', '.join(table.skipped)})" if table.skipped else ""))
    n_normal = normal_rows(len(X), train_fraction, train_rows)
    for c, name in enumerate(names):
        if n_normal and not np.isfinite(X[:n_normal, c]).any():
            raise TrainingError(f"{path}: column {name!r} has no value in the normal part "
                                f"(the first {n_normal} rows); leave it out with --columns")
    X_train, X_cal = split_normal(X, n_normal, options.calibration_fraction, path)
    missing = int((~np.isfinite(X[:n_normal])).any(axis=1).sum())
    if missing:
        log(f"note: {missing} of the {n_normal} normal rows have a missing value; training "
            f"windows leave them out, calibration scores them as edgegru run does")
    mean, std = normalisation(X_train, names, path)
    window = choose_window(X_train, options.window)
    if options.burn_in >= window:
        raise TrainingError(f"--burn-in {options.burn_in} must be less than the window "
                            f"({window} rows)")
    log(f"normal part: rows 0-{n_normal - 1}; training on rows 0-{len(X_train) - 1}, "
        f"calibrating on rows {len(X_train)}-{n_normal - 1}")
    return {"path": path, "table": table, "names": names, "X": X, "n_normal": n_normal,
            "X_train": X_train, "X_cal": X_cal, "missing": missing, "mean": mean, "std": std,
            "window": window}


# -- fitting (torch) ----------------------------------------------------------------------------

def import_torch():
    """PyTorch, or a TrainingError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise TrainingError("training needs PyTorch: pip install 'edgegru[train]'") from None
    return torch


def fit_forecaster(Z_train, Z_val, options, window, progress=None):
    """Train nn.GRU + nn.Linear to forecast the next row of Z_train (n, C), normalised, NaN rows
    allowed. -> (state dict {name: torch tensor}, loss summary dict). Deterministic per seed.

    An epoch: windows of ``window + 1`` rows starting every ``stride`` rows (a random phase and
    order each epoch; windows holding a missing value are left out), in batches. Training stops
    after ``options.steps`` optimizer steps (or ``options.epochs`` epochs when given; a small
    file is passed over at most MAX_EPOCHS times). The loss is the mean squared forecast error
    after each window's first ``burn_in`` rows, per channel relative to the channel's mean
    squared row-to-row step (so the loss of "the next row equals this one" is about 1, and a
    smooth channel counts as much as a noisy one). ``progress`` gets one line per evaluation.
    """
    torch = import_torch()
    from torch import nn

    torch.manual_seed(options.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    C = Z_train.shape[1]
    net = _Forecaster(nn, C, options.hidden_size, options.num_layers,
                      options.forecast == "delta")

    W = window + 1                             # inputs rows 0..W-2, targets rows 1..W-1
    finite = np.isfinite(Z_train).all(axis=1)
    Zt, Zv, val_ok, inv_scale = _tensors(torch, Z_train, Z_val)
    offsets = torch.arange(W)
    stride = options.stride

    def batches():
        phase = int(rng.integers(stride))
        starts = training_windows(finite[phase:], W, stride) + phase
        rng.shuffle(starts)
        for i in range(0, len(starts), options.batch_size):
            yield torch.from_numpy(starts[i:i + options.batch_size])

    per_epoch = math.ceil(len(training_windows(finite, W, stride)) / options.batch_size)
    if per_epoch == 0:
        raise TrainingError(f"no stretch of {W} rows without a missing value in the training "
                            f"part; use a smaller --window")
    epochs, total, every = _budget(per_epoch, options)
    optimizer, schedule = _optimizer(torch, net, options, total)
    train_curve, val_curve = [], []
    t0 = time.perf_counter()
    done = 0
    loss_sum, count = 0.0, 0
    for epoch in range(epochs):
        net.train()
        for starts in batches():
            if done == total:
                break
            batch = Zt[starts[:, None] + offsets]                 # (B, W, C)
            if options.shift:
                # each window moved by its own constant per channel: the forecaster learns to
                # follow the level rather than memorise the training range (real data drifts)
                shift = rng.uniform(-options.shift, options.shift, (len(starts), 1, C))
                batch = batch + torch.from_numpy(shift.astype(np.float32))
            loss = _loss(net, batch, inv_scale, options.burn_in)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), options.clip)
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach())
            count += 1
            done += 1
        if (epoch + 1) % every and epoch + 1 < epochs and done < total:
            continue
        train_curve.append(loss_sum / max(count, 1))
        val_curve.append(_validation_loss(torch, net, Zv, val_ok, inv_scale, options.burn_in))
        loss_sum, count = 0.0, 0
        if progress:
            progress(f"epoch {epoch + 1:3d}/{epochs}  step {done}/{total}  loss "
                     f"{train_curve[-1]:.4f}  calibration-rows loss {val_curve[-1]:.4f}  "
                     f"({time.perf_counter() - t0:.0f} s)")
        if not (math.isfinite(train_curve[-1]) and math.isfinite(val_curve[-1])):
            raise TrainingError(f"the training loss became {train_curve[-1]} at epoch "
                                f"{epoch + 1}; try a smaller --lr")
        if done == total:
            break
    summary = {"epochs": epoch + 1, "steps": done, "steps_per_epoch": per_epoch,
               "window": window, "evaluated_every_epochs": every}
    return ({k: v.detach().clone() for k, v in net.state_dict().items()},
            _loss_summary(summary, train_curve, val_curve))


def _loss(net, batch, inv_scale, burn_in):
    """The mean scaled squared forecast error over a batch of windows, after the burn-in."""
    pred = net(batch[:, :-1])
    return (((pred[:, burn_in:] - batch[:, 1 + burn_in:]) ** 2) * inv_scale).mean()


def _validation_loss(torch, net, Zv, val_ok, inv_scale, burn_in):
    """_loss on the validation rows (1, n, C), over the complete targets."""
    with torch.no_grad():
        pred = net(Zv[:, :-1])[0]
        err = ((pred - Zv[0, 1:]) ** 2 * inv_scale)[burn_in:][val_ok[burn_in:]]
        return float(err.mean())


def _tensors(torch, Z_train, Z_val):
    """The training rows, the validation rows (1, n, C) and which of their targets are
    complete, as tensors (NaN as 0), and 1 / each channel's mean squared row-to-row step."""
    steps = np.diff(Z_train, axis=0)
    inv_scale = torch.from_numpy(
        (1.0 / np.maximum(np.nanmean(steps * steps, axis=0), 1e-12)).astype(np.float32))
    return (torch.from_numpy(np.nan_to_num(Z_train).astype(np.float32)),
            torch.from_numpy(np.nan_to_num(Z_val).astype(np.float32))[None],
            torch.from_numpy(np.isfinite(Z_val).all(axis=1)[1:]), inv_scale)


def _loss_summary(summary, train_curve, val_curve):
    """The training record's loss part, after the counts in ``summary``."""
    return {
        "loss": "mean squared forecast error / mean squared row-to-row step, per channel "
                "(1 = as good as repeating the last row)",
        **summary,
        "train_loss_first_last": [_round(train_curve[0]), _round(train_curve[-1])],
        "calibration_loss_first_best_last": [_round(val_curve[0]), _round(min(val_curve)),
                                             _round(val_curve[-1])],
        "calibration_loss_per_evaluation": [_round(v) for v in val_curve],
    }


def _budget(per_epoch, options):
    """(epochs, optimizer steps, evaluate every so many epochs): options.steps steps (a small
    file passed over at most MAX_EPOCHS times), or options.epochs whole epochs when given."""
    if options.epochs is None:
        epochs = min(MAX_EPOCHS, math.ceil(options.steps / per_epoch))
        total = min(options.steps, epochs * per_epoch)
    else:
        epochs, total = options.epochs, options.epochs * per_epoch
    return epochs, total, math.ceil(epochs / 50)    # at most ~50 evaluations


def _optimizer(torch, net, options, total):
    """Adam, and its learning rate: a linear warm-up over the first 5 % of the steps, then a
    cosine decay to lr / 100."""
    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
    warm = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(
        (k + 1) / warm, 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, k / total)))))
    return optimizer, schedule


def _Forecaster(nn, C, hidden_size, num_layers, delta=False):
    class Forecaster(nn.Module):
        """nn.GRU + nn.Linear: the state dict edgegru.from_state_dict reads (gru.*, head.*).
        With ``delta`` the forecast is the row plus the head's output (the scorer adds it, see
        ``AnomalyScorer``'s ``forecast``)."""

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(C, hidden_size, num_layers, batch_first=True)
            self.head = nn.Linear(hidden_size, C)

        def forward(self, x):
            y, _ = self.gru(x)
            return x + self.head(y) if delta else self.head(y)

    return Forecaster()


# -- the whole job ------------------------------------------------------------------------------

def train_model(data, output=None, *, columns=None, delimiter=None, train_rows=None,
                train_fraction=None, options=None, calibration=None, state_dict=None,
                command=None, log=None, progress=None):
    """Train and calibrate a scoring model on the normal rows of the CSV ``data``; -> the
    edgegru ``Model`` (with ``preprocessing``, ``scoring`` and ``provenance`` metadata).

    output: the .npz to write (None: write nothing), with the PyTorch state dict next to it
    as .pt (or at ``state_dict``); columns: channel names (default: every numeric column);
    delimiter: None sniffs it; train_rows / train_fraction: the leading normal rows (default:
    all); options: :class:`TrainingOptions`; calibration:
    :class:`edgegru.calibrate.CalibrationOptions`; command: recorded in the provenance (as
    typed); log, progress: functions taking one message line (summary lines, training
    progress). Raises :class:`edgegru.errors.TrainingError` on data or options it cannot use.
    """
    options = (options or TrainingOptions()).check()
    calibration = (calibration or CalibrationOptions()).check()
    log = log or (lambda message: None)
    d = prepare(data, columns, delimiter, train_rows, train_fraction, options, log)
    warming = threading.Thread(target=_warm_scoring_kernels, daemon=True)
    warming.start()                     # while torch imports and fits
    torch = import_torch()
    from edgegru.formats.pytorch import from_state_dict

    names, X, n_normal, table = d["names"], d["X"], d["n_normal"], d["table"]
    X_train, X_cal, mean, std = d["X_train"], d["X_cal"], d["mean"], d["std"]
    Z_train, Z_cal = (X_train - mean) / std, (X_cal - mean) / std
    t0 = time.perf_counter()
    sd, summary = fit_forecaster(Z_train, Z_cal, options, d["window"], progress)
    log(f"trained in {time.perf_counter() - t0:.0f} s ({summary['steps']} steps, "
        f"{summary['epochs']} epochs)")

    # the import path users take. Calibration runs the GRU on NumPy: over a few thousand rows
    # that takes a fraction of a second, where numba would first compile its sequence kernel
    # for this CPU, most of a small file's training time, for a machine that may never score.
    # The two backends agree to float32 rounding, far below the spreads calibration estimates.
    warming.join()
    model = from_state_dict(sd, backend="numpy")
    if options.weights_dtype == "bf16":                 # calibrated as it will run
        model = recurrent_bfloat16(model, backend="numpy")
    calibrate(model, names, mean, std, Z_train, Z_cal, X_cal, calibration, log, X[:n_normal],
              forecast=options.forecast)
    model.meta["provenance"] = {
        **model.meta.get("provenance", {}),
        "tool": "edgegru train",
        "command": command,
        "data": _data_record(data, table),
        "split": {"normal_rows": n_normal, "train_rows": [0, len(X_train)],
                  "calibration_rows": [len(X_train), n_normal],
                  "rows_with_missing_values": d["missing"]},
        "options": {**asdict(options), **asdict(calibration)},
        "seed": options.seed,
        "versions": _versions(torch=torch.__version__),
        "training": summary,
    }
    if output is not None:
        output = Path(output)
        pt = Path(state_dict) if state_dict else output.with_suffix(".pt")
        output.parent.mkdir(parents=True, exist_ok=True)
        save(model, output)
        torch.save(sd, pt)
        log(f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB) and {pt}")
    return Model(model.config, model.weights, meta=model.meta)     # on the default backend


def recalibrate_file(model, data, output=None, *, columns=None, delimiter=None, train_rows=None,
                     train_fraction=None, forecast=None, command=None, log=None, **changes):
    """The trained model ``model`` (a path or a ``Model``) calibrated afresh on the normal rows
    of the CSV ``data`` (:func:`edgegru.calibrate.recalibrate`): the same network, new
    ``preprocessing`` and ``scoring``; no PyTorch. Writes ``output`` (None: nothing) and
    returns the new ``Model``.

    columns: the data's columns holding the model's channels, in its order (default: the
    model's channel names); changes: calibration options (``calibration_fraction`` and the
    fields of :class:`edgegru.calibrate.CalibrationOptions`) to change from those the model
    was calibrated with (:func:`recorded_calibration`); the other arguments as
    :func:`train_model`'s. Raises :class:`edgegru.errors.TrainingError` on data or options it
    cannot use (and ModelFormatError on a model file it cannot load).
    """
    log = log or (lambda message: None)
    source = str(model) if isinstance(model, (str, Path)) else None
    model = load(model) if source else model
    unknown = sorted(set(changes) - set(_CALIBRATION_FIELDS))
    if unknown:
        raise TrainingError(f"no calibration option {', '.join(unknown)}")
    settings = {**recorded_calibration(model), **changes}
    calibration_fraction = settings.pop("calibration_fraction", 0.3)
    try:
        calibration = CalibrationOptions(**settings).check()
        check_calibration_fraction(calibration_fraction)
    except TypeError:                   # a recorded option that is not a number
        raise TrainingError(f"{source or 'the model'}: its provenance records calibration "
                            f"options that are not numbers ({settings}); give them as options")
    names = _section(model.meta, "preprocessing").get("columns")
    table = read_csv(data, columns or names, delimiter)
    log(f"{data}: {len(table.X)} rows, channels {', '.join(table.names)}")
    n_normal = normal_rows(len(table.X), train_fraction, train_rows)
    new = recalibrate(model, table.X[:n_normal], names or table.names, calibration,
                      calibration_fraction, forecast, log, path=data)
    n_train = split_rows(n_normal, calibration_fraction)[0]
    new.meta["provenance"] = {
        **_section(model.meta, "provenance"),
        "calibration": {
            "tool": "edgegru calibrate", "command": command,
            "model": Path(source).name if source else None,
            "data": _data_record(data, table),
            "split": {"normal_rows": n_normal, "train_rows": [0, n_train],
                      "calibration_rows": [n_train, n_normal]},
            "options": {"calibration_fraction": calibration_fraction, **asdict(calibration)},
            "versions": _versions()},
    }
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        save(new, output)
        log(f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB)")
    return new


_CALIBRATION_FIELDS = ("calibration_fraction", *CalibrationOptions.__dataclass_fields__)


def recorded_calibration(model):
    """The calibration options ``model`` was last calibrated with, from its provenance (those
    of ``edgegru calibrate``, else of ``edgegru train``): a dict of ``calibration_fraction``
    and :class:`edgegru.calibrate.CalibrationOptions` fields; {} if it records none."""
    provenance = _section(model.meta, "provenance")
    options = _section(_section(provenance, "calibration"), "options") or \
        _section(provenance, "options")
    return {k: v for k, v in options.items() if k in _CALIBRATION_FIELDS}


def _section(meta, key):
    """meta[key] if it is a dict, else {}: metadata is the file's data, of any shape."""
    value = meta.get(key)
    return value if isinstance(value, dict) else {}


def _warm_scoring_kernels():
    # The scorer's kernels, compiled (on a machine's first run) or loaded from numba's cache
    # for the argument types calibration passes them, which are any model's: a tiny one's.
    # Should this fail, calibration compiles them itself.
    try:
        from edgegru import bench
        model = bench.tiny_scoring_model(backend="numpy")
        AnomalyScorer.from_model(model).score_many(np.zeros((3, model.input_size)))
        Z = np.random.default_rng(0).standard_normal((2 * LEVEL_BLOCK, model.input_size))
        fit_level(Z, Z, model.meta["preprocessing"]["columns"], CalibrationOptions())
    except Exception:                                   # noqa: BLE001 (only a head start)
        pass


def _data_record(path, table):
    """The provenance's record of the data file read as ``table`` (a SensorTable)."""
    return {"file": Path(path).name, "sha256": _sha256(path), "rows": int(len(table.X)),
            "columns": table.names, "skipped_columns": table.skipped,
            "timestamp_column": table.timestamp, "delimiter": table.delimiter}


def _versions(**more):
    """The provenance's versions: edgegru's, NumPy's and Python's, and ``more``."""
    from edgegru import __version__
    return {"edgegru": __version__, **more, "numpy": np.__version__,
            "python": platform.python_version()}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
