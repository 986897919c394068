"""Train a GRU forecaster on the normal part of a sensor CSV; write an edgegru model file.

    python tools/train.py examples/sensor.csv -o weights/model.npz
    python tools/train.py mine.csv -o mine.npz --columns temp,current --train-fraction 0.5

Needs PyTorch (``pip install torch==2.13.0``); the model it writes does not.

What it does
------------
1. Reads the CSV (a header line, one row per time step). Numeric columns are the channels
   unless ``--columns`` names them; text columns (timestamps, ids) are skipped.
2. Takes the first ``--train-fraction`` of the rows (or ``--train-rows``) as *normal*: the
   anomaly-free stretch the model learns from. It splits that stretch in time: the first
   ``1 - --calibration-fraction`` trains the network, the rest (never trained on) calibrates
   the score.
3. Normalises every channel by its mean and std over the training rows and trains
   ``nn.GRU + nn.Linear`` to predict the next normalised row from the rows so far (squared
   error per channel relative to the channel's mean squared row-to-row step; truncated
   back-propagation through time over windows of ``--window`` rows, whose first ``--burn-in``
   rows only settle the state; each window shifted by a random constant per channel, up to
   ``--shift``, so the network follows levels it has not seen instead of memorising the
   training range).
4. Builds the edgegru model from the trained state dict (``edgegru.from_state_dict``, the
   import path users take), and calibrates with edgegru itself on the calibration rows:
   ``warmup`` = rows until a forecaster started from a zero state agrees with one that has
   seen the past; ``residual_std`` = per-channel RMS of the forecast residuals after the
   warm-up; ``whitening`` = diag(P)^(-1/2) P, P the inverse of their correlation matrix
   (each channel's residual given the others'; ``--whitening zca`` for the inverse square
   root) and ``combine: "max"`` (the score is the largest whitened term, see
   ``edgegru/scoring.py``); ``consistency`` = each channel regressed on the other channels
   (this row and the row before, a cubic in each; least squares on the training rows), kept
   for the channels it explains with R^2 >= ``--consistency-r2`` on the calibration rows, its
   residual's spread and its EWMA's spread from the calibration rows, and ``weight`` = the
   threshold over the level the consistency term alone crosses ``--false-alarm-rate`` times
   per row; ``threshold`` = the score level that normal data crosses ``--false-alarm-rate``
   times per row, from a peaks-over-threshold fit to the calibration scores of
   ``AnomalyScorer.score_many`` (so the threshold is on exactly the scores users get), with the
   consistency model in, and again with the ``drift`` test in: for the channels the consistency
   model leaves out that the others still explain with R^2 >= ``--drift-r2``, the consistency
   residual against its slow baseline, averaged slowly and fast, their spreads from all the
   normal rows, and a weight found as the consistency model's is;
   ``stuck_rows`` = max(5, 2 x the longest run of exactly repeated readings of one channel in
   all the normal rows): a channel repeating itself that long is a stuck sensor.
5. Writes ``OUT.npz`` (weights + ``preprocessing``, ``scoring``, ``provenance`` metadata) and
   the PyTorch state dict as ``OUT.pt``.

The same data, options and seed give a byte-identical file: training is seeded, single
threaded and deterministic, and no wall-clock time is recorded.

Rows with a missing value (empty or NaN) are left out of the training windows (a window never
spans one) and scored in calibration as ``edgegru run`` scores them. A channel that is
constant over the training rows, too few rows, or a column that is not numeric is refused
with a message that says what to change.
"""

import argparse
import csv
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgegru  # noqa: E402

MIN_TRAIN_ROWS = 200         # fewer cannot teach a forecaster anything about the dynamics
MIN_CALIBRATION_ROWS = 200   # scores after the warm-up, to fit the threshold on
MAX_WARMUP = 100             # the scorer's warm-up is measured, and capped here
RESIDUAL_STD_FLOOR = 1e-3    # in normalised units: a perfectly forecast channel still has noise
STUCK_MIN_ROWS = 5           # the stuck-sensor rule never fires on fewer exact repeats than this


class TrainingError(ValueError):
    """Bad data or options for training: the message says what to change."""


# -- data -----------------------------------------------------------------------------------

def read_csv(path, columns=None):
    """A sensor CSV -> (channel names, values (n, C) float64 with NaN for missing, skipped names).

    Without ``columns``, every column whose non-empty cells all parse as numbers is a channel;
    the others (timestamps, ids) are skipped. With ``columns``, exactly those, in that order.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise TrainingError(f"{path}: the file is empty; expected a header line "
                                    f"such as 'timestamp,temperature,current'")
            header = [h.strip() for h in header]
            cells = [row for row in reader if row]
    except OSError as exc:
        raise TrainingError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TrainingError(f"{path}: not a UTF-8 text file") from None
    for i, row in enumerate(cells):
        if len(row) != len(header):
            raise TrainingError(f"{path}, line {i + 2}: {len(row)} fields, the header has "
                                f"{len(header)}")
    if columns is None:
        wanted = header
    else:
        missing = [c for c in columns if c not in header]
        if missing:
            raise TrainingError(f"{path}: no column {', '.join(map(repr, missing))}; "
                                f"the columns are {', '.join(header)}")
        wanted = list(columns)
    names, arrays, skipped = [], [], []
    for name in wanted:
        j = header.index(name)
        values, bad_line = _parse_floats(row[j] for row in cells)
        if bad_line is not None:
            if columns is not None:
                raise TrainingError(f"{path}, line {bad_line + 2}, column {name!r}: "
                                    f"{cells[bad_line][j]!r} is not a number")
            skipped.append(name)
            continue
        names.append(name)
        arrays.append(values)
    if not names:
        raise TrainingError(f"{path}: no numeric column (columns: {', '.join(header)})")
    return names, np.column_stack(arrays) if cells else np.zeros((0, len(names))), skipped


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
    """How many leading rows are normal (the part training may use)."""
    if train_rows is not None:
        if train_rows < 1:
            raise TrainingError(f"--train-rows must be positive, got {train_rows}")
        if train_rows > n:
            raise TrainingError(f"--train-rows {train_rows} is more than the file's {n} rows")
        return train_rows
    if not 0.0 < train_fraction <= 1.0:
        raise TrainingError(f"--train-fraction must be in (0, 1], got {train_fraction}")
    return int(round(train_fraction * n))


def split_normal(X, n_normal, calibration_fraction, path="the data"):
    """The normal rows -> (train rows, calibration rows), after checking there are enough."""
    if not 0.0 < calibration_fraction < 1.0:
        raise TrainingError(f"--calibration-fraction must be in (0, 1), got "
                            f"{calibration_fraction}")
    n_cal = int(round(calibration_fraction * n_normal))
    n_train = n_normal - n_cal
    need_cal = MIN_CALIBRATION_ROWS + MAX_WARMUP
    need = int(math.ceil(max(MIN_TRAIN_ROWS / (1.0 - calibration_fraction),
                             need_cal / calibration_fraction)))
    usable_train = int(np.isfinite(X[:n_train]).all(axis=1).sum())
    if n_normal < need or usable_train < MIN_TRAIN_ROWS or n_cal < need_cal:
        raise TrainingError(
            f"{path}: too few rows: the normal part has {n_normal} rows ({usable_train} complete "
            f"training rows, {n_cal} calibration rows); training needs at least "
            f"{MIN_TRAIN_ROWS} complete rows to train and {need_cal} to calibrate, that is "
            f"{need} normal rows with --calibration-fraction {calibration_fraction:g}; "
            f"record longer, or raise --train-fraction / --train-rows")
    return X[:n_train], X[n_train:n_normal]


def normalisation(X_train, names, path="the data"):
    """Per-channel (mean, std) over the training rows; refuses empty and constant channels."""
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(X_train, axis=0)
        std = np.nanstd(X_train, axis=0)
    for c, name in enumerate(names):
        if not std[c] > 1e-9 * max(1.0, abs(mean[c])):
            raise TrainingError(
                f"{path}: column {name!r} is constant ({mean[c]:g}) in the training rows; a "
                f"forecaster learns nothing from it and any change would score as an infinite "
                f"anomaly: leave it out with --columns "
                f"{','.join(n for n in names if n != name) or '...'}")
    return mean, std


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


# -- training (torch) -------------------------------------------------------------------------

def train_forecaster(Z_train, Z_val, options, log):
    """Train nn.GRU + nn.Linear to forecast the next row of Z_train (n, C), normalised, NaN rows
    allowed. -> (state dict {name: torch tensor}, loss summary dict). Deterministic per seed.

    An epoch: windows of ``window + 1`` rows starting every ``stride`` rows (a random phase and
    order each epoch; windows holding a missing value are left out), in batches. The loss is the
    mean squared forecast error after each window's first ``burn_in`` rows, per channel relative
    to the channel's mean squared row-to-row step (so the loss of "the next row equals this
    one" is about 1, and a smooth channel counts as much as a noisy one).
    """
    import torch
    from torch import nn

    torch.manual_seed(options.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    C = Z_train.shape[1]
    net = _Forecaster(nn, C, options.hidden_size, options.num_layers)

    W = options.window + 1                     # inputs rows 0..W-2, targets rows 1..W-1
    finite = np.isfinite(Z_train).all(axis=1)
    steps = np.diff(Z_train, axis=0)
    inv_scale = torch.from_numpy(
        (1.0 / np.maximum(np.nanmean(steps * steps, axis=0), 1e-12)).astype(np.float32))
    Zt = torch.from_numpy(np.nan_to_num(Z_train).astype(np.float32))
    Zv = torch.from_numpy(np.nan_to_num(Z_val).astype(np.float32))[None]
    val_ok = torch.from_numpy(np.isfinite(Z_val).all(axis=1)[1:])
    burn = options.burn_in
    offsets = torch.arange(W)
    stride = options.stride

    def batches():
        phase = int(rng.integers(stride))
        starts = training_windows(finite[phase:], W, stride) + phase
        rng.shuffle(starts)
        for i in range(0, len(starts), options.batch_size):
            yield torch.from_numpy(starts[i:i + options.batch_size])

    per_epoch = sum(1 for _ in range(0, len(training_windows(finite, W, stride)),
                                     options.batch_size))
    if per_epoch == 0:
        raise TrainingError(f"no stretch of {W} rows without a missing value in the training "
                            f"part; use a smaller --window")
    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
    # linear warm-up over the first 5% of the steps, then cosine decay to lr / 100
    total = per_epoch * options.epochs
    warm = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(
        (k + 1) / warm, 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, k / total)))))
    train_curve, val_curve = [], []
    t0 = time.perf_counter()
    for epoch in range(options.epochs):
        net.train()
        loss_sum, count = 0.0, 0
        for starts in batches():
            batch = Zt[starts[:, None] + offsets]                 # (B, W, C)
            if options.shift:
                # each window moved by its own constant per channel: the forecaster learns to
                # follow the level rather than memorise the training range (real data drifts)
                shift = rng.uniform(-options.shift, options.shift, (len(starts), 1, C))
                batch = batch + torch.from_numpy(shift.astype(np.float32))
            pred = net(batch[:, :-1])
            loss = (((pred[:, burn:] - batch[:, 1 + burn:]) ** 2) * inv_scale).mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), options.clip)
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach())
            count += 1
        with torch.no_grad():
            pred = net(Zv[:, :-1])[0]
            err = ((pred - Zv[0, 1:]) ** 2 * inv_scale)[burn:][val_ok[burn:]]
            val = float(err.mean())
        train_curve.append(loss_sum / count)
        val_curve.append(val)
        log(f"epoch {epoch + 1:3d}/{options.epochs}  loss {train_curve[-1]:.4f}  "
            f"calibration-rows loss {val:.4f}  ({time.perf_counter() - t0:.0f} s)")
        if not (math.isfinite(train_curve[-1]) and math.isfinite(val)):
            raise TrainingError(f"the training loss became {train_curve[-1]} at epoch "
                                f"{epoch + 1}; try a smaller --lr")
    summary = {
        "loss": "mean squared forecast error / mean squared row-to-row step, per channel "
                "(1 = as good as repeating the last row)",
        "epochs": options.epochs, "steps": total, "steps_per_epoch": per_epoch,
        "train_loss_first_last": [_round(train_curve[0]), _round(train_curve[-1])],
        "calibration_loss_first_best_last": [_round(val_curve[0]), _round(min(val_curve)),
                                             _round(val_curve[-1])],
        "calibration_loss_per_epoch": [_round(v) for v in val_curve],
    }
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, summary


def _Forecaster(nn, C, hidden_size, num_layers):
    class Forecaster(nn.Module):
        """nn.GRU + nn.Linear: the state dict edgegru.from_state_dict reads (gru.*, head.*)."""

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(C, hidden_size, num_layers, batch_first=True)
            self.head = nn.Linear(hidden_size, C)

        def forward(self, x):
            y, _ = self.gru(x)
            return self.head(y)

    return Forecaster()


def _round(x, digits=6):
    return float(f"{x:.{digits}g}")


# -- calibration (edgegru) -------------------------------------------------------------------

def forecast_residuals(model, Z):
    """Z (n, C) normalised -> R (n, C): row t minus the forecast made after row t-1, from a
    zero state, with missing values imputed from the forecast as AnomalyScorer does (their
    residuals, and row 0's, are NaN)."""
    model.reset()
    n, C = Z.shape
    R = np.full((n, C), np.nan)
    f = np.zeros(C, np.float32)
    bad = ~np.isfinite(Z).all(axis=1)
    start = 0
    while start < n:
        stop = start + 1 + int(np.argmax(bad[start + 1:])) if bad[start + 1:].any() else n
        z = Z[start:stop].astype(np.float32)
        missing = ~np.isfinite(z[0])
        z[0, missing] = f[missing]
        F = model.run(z)
        R[start + 1:stop] = z[1:] - F[:-1]
        if start:
            R[start] = np.where(missing, np.nan, z[0] - f)
        f = F[-1].copy()
        start = stop
    model.reset()
    return R


def measure_warmup(model, Z_before, Z_cal, rms, tolerance=0.1):
    """Rows until a forecaster started from zero forecasts like one that has read the past.

    Runs the calibration rows from a zero state and from the state after the training rows;
    the warm-up ends after the last row where the two forecasts differ by more than
    ``tolerance`` residual standard deviations on some channel (at least 1, at most MAX_WARMUP).
    """
    n = min(len(Z_cal), 2 * MAX_WARMUP)
    before = np.nan_to_num(Z_before[-500:]).astype(np.float32)
    model.reset()
    model.run(before)
    warm = model.run(np.nan_to_num(Z_cal[:n]).astype(np.float32))
    model.reset()
    cold = model.run(np.nan_to_num(Z_cal[:n]).astype(np.float32))
    model.reset()
    far = (np.abs(warm - cold) / rms).max(axis=1) > tolerance
    last = int(np.flatnonzero(far)[-1]) + 1 if far.any() else 0
    return min(MAX_WARMUP, max(1, last + 1))


def _correlation(R, shrinkage):
    """R (n, C) -> their correlation matrix, shrunk towards the identity by ``shrinkage``
    (stable with few rows or near-duplicate channels)."""
    S = (R.T @ R) / len(R)
    d = np.sqrt(np.diag(S))
    S = S / np.outer(d, d)
    return (1.0 - shrinkage) * S + shrinkage * np.eye(len(S))


def zca_whitening(R, shrinkage):
    """R (n, C) standardised residuals -> W (C, C) = S^(-1/2), S their (shrunk) correlation
    matrix."""
    w, V = np.linalg.eigh(_correlation(R, shrinkage))
    return (V * w ** -0.5) @ V.T


def conditional_whitening(R, shrinkage):
    """R (n, C) standardised residuals -> W (C, C) with ``(W r)_c`` channel c's residual given
    the other channels' residuals in the same row, standardised: ``W = diag(P)^(-1/2) P``, P the
    inverse of their (shrunk) correlation matrix. A load change that moves several channels at
    once is explained away; one channel going its own way is not."""
    P = np.linalg.inv(_correlation(R, shrinkage))
    return P / np.sqrt(np.diag(P))[:, None]


def consistency_features(Z, channel, lags, degree):
    """Z (n, C) normalised rows -> (n, 1 + lags * (C - 1) * degree): 1, then for each lag j
    (0 = this row) and each other channel, its value j rows earlier to the powers 1..degree,
    in that order (the order of AnomalyScorer's kernel). Rows before the first stand in the
    first row, as the scorer does at the start of a stream."""
    n, C = Z.shape
    cols = [np.ones(n)]
    for j in range(lags):
        S = np.concatenate([np.repeat(Z[:1], min(j, n), axis=0), Z[:n - j]]) if j else Z
        for c in range(C):
            if c != channel:
                for p in range(1, degree + 1):
                    cols.append(S[:, c] ** p)
    return np.column_stack(cols)


def ewma(q, alpha):
    """q (n, K) -> m (n, K): m_t = (1 - alpha) m_(t-1) + alpha q_t from m = 0."""
    m, out = np.zeros(q.shape[1]), np.empty_like(q)
    for t in range(len(q)):
        m = (1.0 - alpha) * m + alpha * q[t]
        out[t] = m
    return out


def drift_averages(q, alphas):
    """q (n,) standardised consistency residual -> (u, v) (n,) each, as AnomalyScorer's kernel
    computes them from a fresh start: the baseline b follows q by an EWMA of alpha
    ``alphas[2]`` (the plain mean of the rows so far while that is faster), and u and v are
    EWMAs of alpha ``alphas[0]`` (slow) and ``alphas[1]`` (fast) of q - b."""
    n = len(q)
    u, v = np.empty(n), np.empty(n)
    base = slow = fast = 0.0
    for t in range(n):
        a = max(alphas[2], 1.0 / (t + 1.0))
        base = (1.0 - a) * base + a * q[t]
        d = q[t] - base
        slow = (1.0 - alphas[0]) * slow + alphas[0] * d
        fast = (1.0 - alphas[1]) * fast + alphas[1] * d
        u[t], v[t] = slow, fast
    return u, v


def drift_statistic(u, v):
    """The drift test's term before its weight: min(|u|, |v|)^2 where u and v (spreads 1)
    agree in sign, else 0."""
    return np.where(u * v > 0.0, np.minimum(np.abs(u), np.abs(v)) ** 2, 0.0)


def fit_drift(Z_normal, n_train, names, coefs, r2, warmup, options):
    """The drift test for the channels the consistency model leaves out but the other channels
    still mostly explain (``--drift-r2`` <= R^2 < ``--consistency-r2``): their consistency
    residual q against its own slow baseline, averaged slowly (u) and fast (v). The spread of
    q is from the calibration rows (as the consistency model's); the spreads of u and v from
    all the normal rows after the warm-up, run from their first row (a slow average needs more
    than the calibration rows to show its spread; the regression is in-sample on the training
    part of them). Returns (section without ``weight``, the unweighted term on the normal rows
    (n,), max over the channels) or (None, None)."""
    C, lags, degree = len(names), options.consistency_lags, options.consistency_degree
    chans = [c for c in range(C) if options.drift_r2 <= r2[c] < options.consistency_r2]
    if not chans:
        return None, None
    Z = Z_normal.astype(np.float32).astype(np.float64)
    ok = np.isfinite(Z).all(axis=1)
    for j in range(1, lags):
        ok[j:] &= np.isfinite(Z[:-j]).all(axis=1)
    Z0 = np.nan_to_num(Z)
    alphas = (options.drift_smoothing, options.drift_fast_smoothing,
              options.drift_baseline_smoothing)
    section = {"channels": [names[c] for c in chans], "coef": [], "residual_std": [],
               "std": [], "fast_std": [], "smoothing": alphas[0], "fast_smoothing": alphas[1],
               "baseline_smoothing": alphas[2]}
    G = np.zeros(len(Z))
    cal = np.arange(len(Z)) >= n_train + warmup
    after = np.arange(len(Z)) >= warmup
    for c in chans:
        beta = np.array([_round(v, 9) for v in coefs[c]])
        d = Z0[:, c] - consistency_features(Z0, c, lags, degree) @ beta
        d[~ok] = 0.0                 # rows without a residual add nothing to the averages
        std = _round(max(float(np.sqrt(np.mean(d[ok & cal] ** 2))), RESIDUAL_STD_FLOOR), 9)
        u, v = drift_averages(d / std, alphas)
        su = _round(float(np.sqrt(np.mean(u[after] ** 2))), 9)
        sv = _round(float(np.sqrt(np.mean(v[after] ** 2))), 9)
        section["coef"].append(beta.tolist())
        for name, value in (("residual_std", std), ("std", su), ("fast_std", sv)):
            section[name].append(value)
        G = np.maximum(G, drift_statistic(u / su, v / sv))
    return section, G[after]


def fit_consistency(Z_train, Z_cal, names, warmup, options):
    """The consistency model: each channel's value regressed on the other channels' values in
    the same row and the ``--consistency-lags`` - 1 rows before (polynomial of degree
    ``--consistency-degree``), by least squares on the training rows; kept for the channels the
    others explain (R^2 >= ``--consistency-r2`` on the calibration rows: they are functions of
    the same hidden state, for example current and pressure of the load). Returns (section
    for the model file without ``weight``, per-channel R^2, standardised EWMA of the
    calibration rows (n, K)) or (None, R^2, None) when no channel qualifies, and the
    regression coefficients of every channel (for the drift test)."""
    C, lags, degree = len(names), options.consistency_lags, options.consistency_degree
    Zt = Z_train.astype(np.float32).astype(np.float64)       # what the scorer computes with
    Zc = Z_cal.astype(np.float32).astype(np.float64)
    ok_t = np.isfinite(Zt).all(axis=1)
    ok_c = np.isfinite(Zc).all(axis=1)
    for j in range(1, lags):                                  # the lagged rows must be there
        ok_t[j:] &= np.isfinite(Zt[:-j]).all(axis=1)
        ok_c[j:] &= np.isfinite(Zc[:-j]).all(axis=1)
    ok_t[:lags - 1] = False
    ok_c[:max(lags - 1, warmup)] = False
    Zt0, Zc0 = np.nan_to_num(Zt), np.nan_to_num(Zc)
    r2, coefs, q_cal = np.zeros(C), [], []
    for c in range(C):
        Ft = consistency_features(Zt0, c, lags, degree)
        beta = np.linalg.lstsq(Ft[ok_t], Zt0[ok_t, c], rcond=None)[0]
        d = Zc0[:, c] - consistency_features(Zc0, c, lags, degree) @ beta
        r2[c] = 1.0 - np.mean(d[ok_c] ** 2) / np.var(Zc0[ok_c, c])
        coefs.append(beta)
        q_cal.append(d)
    keep = [c for c in range(C) if r2[c] >= options.consistency_r2]
    if not keep:
        return None, r2, None, coefs
    D = np.column_stack([q_cal[c] for c in keep])
    D[~ok_c] = 0.0                   # rows without a residual add nothing to the averages
    std = np.maximum(np.sqrt(np.mean(D[ok_c] ** 2, axis=0)), RESIDUAL_STD_FLOOR)
    M = ewma(D / std, options.consistency_smoothing)[ok_c]
    ewma_std = np.sqrt(np.mean(M * M, axis=0))
    section = {"channels": [names[c] for c in keep], "lags": lags, "degree": degree,
               "coef": [[_round(v, 9) for v in coefs[c]] for c in keep],
               "residual_std": [_round(v, 9) for v in std],
               "smoothing": options.consistency_smoothing,
               "ewma_std": [_round(v, 9) for v in ewma_std]}
    return section, r2, M / np.asarray(section["ewma_std"]), coefs


def upcrossing_threshold(scores, rate, quantile=0.95):
    """The level that ``scores`` (normal data) would cross upwards ``rate`` times per row.

    Peaks over threshold: above the ``quantile`` level u, each run of rows above u is one
    crossing; the excess of a run's peak over u is fitted with an exponential distribution
    (mean excess ``beta``), so a level T > u is crossed ``n_runs / n * exp(-(T - u) / beta)``
    times per row. The result is never below the largest score seen.
    Returns (T, details dict for the model file).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    u = float(np.quantile(s, quantile))
    above = s > u
    starts = np.flatnonzero(above & ~np.r_[False, above[:-1]])
    ends = np.flatnonzero(above & ~np.r_[above[1:], False])
    peaks = np.array([s[a:b + 1].max() for a, b in zip(starts, ends)])
    beta = float(np.mean(peaks - u)) if peaks.size else 0.0
    runs_per_row = peaks.size / n
    T = u + beta * math.log(runs_per_row / rate) if runs_per_row > rate else u
    T = max(T, float(s.max()))
    return T, {"method": "peaks over threshold: runs above the base level, exponential "
                         "excess of each run's peak",
               "target_crossings_per_row": rate, "base_quantile": quantile,
               "base_level": _round(u), "runs_above_base": int(peaks.size),
               "mean_peak_excess": _round(beta)}


def longest_repeat_run(X):
    """X (n, C) raw values -> (C,) the longest run of rows per channel whose value equals the
    previous finite value exactly; a missing value neither extends nor ends a run (as
    AnomalyScorer counts)."""
    n, C = X.shape
    longest = np.zeros(C, np.int64)
    for c in range(C):
        x = X[:, c][np.isfinite(X[:, c])]
        run = 0
        for same in (x[1:] == x[:-1]).tolist():
            run = run + 1 if same else 0
            longest[c] = max(longest[c], run)
    return longest


def calibrate(model, names, mean, std, Z_train, Z_cal, X_cal, options, log, X_normal=None):
    """Fill model.meta['preprocessing'] and ['scoring'] from the calibration rows."""
    C = len(names)
    model.meta["preprocessing"] = {"columns": list(names), "mean": [_round(v, 9) for v in mean],
                                   "std": [_round(v, 9) for v in std]}
    R = forecast_residuals(model, Z_cal)
    rms0 = np.sqrt(np.nanmean(R[MAX_WARMUP:] ** 2, axis=0))
    warmup = measure_warmup(model, Z_train, Z_cal, np.maximum(rms0, RESIDUAL_STD_FLOOR))
    R = R[warmup:]
    R = R[np.isfinite(R).all(axis=1)]
    residual_std = np.maximum(np.sqrt(np.mean(R * R, axis=0)), RESIDUAL_STD_FLOOR)
    whiten = conditional_whitening if options.whitening == "conditional" else zca_whitening
    whitening = whiten(R / residual_std, options.shrinkage) if C > 1 else np.eye(1)
    model.meta["scoring"] = {
        "residual_std": [_round(v, 9) for v in residual_std],
        "whitening": [[_round(v, 9) for v in row] for row in whitening],
        "combine": "max", "smoothing": options.smoothing, "warmup": warmup,
        "threshold": 1.0}          # a stand-in until the threshold is fitted
    # stuck sensors: exact repeats of a noisy reading, twice the longest run on normal data
    X_normal = X_cal if X_normal is None else X_normal
    repeats = longest_repeat_run(X_normal)
    stuck_rows = int(max(STUCK_MIN_ROWS, 2 * int(repeats.max())))
    model.meta["scoring"]["stuck_rows"] = stuck_rows
    # the threshold, on the scores users get: edgegru's own scorer, from a fresh start
    scorer = edgegru.AnomalyScorer.from_model(model)
    scores = scorer.score_many(X_cal)[warmup:]
    threshold, fit = upcrossing_threshold(scores, options.false_alarm_rate)
    # the consistency model, its score put on the forecaster's scale: the level its own
    # calibration scores cross as often as the threshold is mapped to the threshold
    cons, r2, M, coefs = (fit_consistency(Z_train, Z_cal, names, warmup, options) if C > 1
                          else (None, np.zeros(1), None, None))
    cons_fit = None
    if cons is not None:
        cons_threshold, cons_fit = upcrossing_threshold((M * M).max(axis=1),
                                                        options.false_alarm_rate)
        cons["weight"] = _round(threshold / cons_threshold, 9)
        model.meta["scoring"]["consistency"] = cons
        scorer = edgegru.AnomalyScorer.from_model(model)
        scores = scorer.score_many(X_cal)[warmup:]
        threshold, fit = upcrossing_threshold(scores, options.false_alarm_rate)
    # the drift test, on the same scale: the level its term alone crosses as often on the
    # normal rows is mapped to the threshold
    drift, G = ((None, None) if C == 1 else
                fit_drift(np.vstack([Z_train, Z_cal]), len(Z_train), names, coefs, r2, warmup,
                          options))
    drift_fit = None
    if drift is not None:
        drift_threshold, drift_fit = upcrossing_threshold(G, options.false_alarm_rate)
        drift["weight"] = _round(threshold / drift_threshold, 9)
        if cons is None:             # no channel for the consistency term: only the drift test
            P = len(drift["coef"][0])
            cons = {"channels": [], "lags": options.consistency_lags,
                    "degree": options.consistency_degree, "coef": np.zeros((0, P)).tolist(),
                    "residual_std": [], "smoothing": options.consistency_smoothing,
                    "ewma_std": [], "weight": 1.0}
        cons["drift"] = drift
        model.meta["scoring"]["consistency"] = cons
        scorer = edgegru.AnomalyScorer.from_model(model)
        scores = scorer.score_many(X_cal)[warmup:]
        threshold, fit = upcrossing_threshold(scores, options.false_alarm_rate)
    threshold = _round(threshold, 6)
    model.meta["scoring"]["threshold"] = threshold
    model.meta["scoring"]["calibration"] = {
        "rows": int(len(X_cal)), "scored_rows": int(len(scores)),
        "residual_rows": int(len(R)),
        "residual_std": "RMS of the forecast residual per channel, normalised units, after "
                        "the warm-up",
        "whitening": (f"conditional: diag(P)^(-1/2) P, P the inverse of the residuals' "
                      f"correlation matrix" if options.whitening == "conditional" else
                      "ZCA: inverse square root of the residuals' correlation matrix")
                     + f", shrunk towards the identity by {options.shrinkage}",
        "warmup": "rows until a forecaster started from zero forecasts within 0.1 residual "
                  "std of one that has read the past",
        "score_quantiles": {q: _round(float(np.quantile(scores, float(q))))
                            for q in ("0.5", "0.9", "0.99", "0.999")},
        "score_max": _round(float(scores.max())),
        "threshold": fit,
        "stuck_rows": f"max({STUCK_MIN_ROWS}, 2 x the longest run of exactly repeated "
                      f"readings on one channel in the {len(X_normal)} normal rows: "
                      f"{', '.join(f'{n} {int(r)}' for n, r in zip(names, repeats))})",
        "consistency": {
            "r2": {n: _round(float(v), 4) for n, v in zip(names, r2)},
            "rule": f"channels whose value the other channels explain with R^2 >= "
                    f"{options.consistency_r2} on the calibration rows (regression fitted on "
                    f"the training rows); weight = threshold / the level the consistency "
                    f"score alone crosses --false-alarm-rate times per row",
            "threshold": cons_fit,
            "drift": {
                "rule": f"channels the consistency model leaves out whose R^2 is at least "
                        f"{options.drift_r2}; residual_std from the calibration rows, std and "
                        f"fast_std (of the slow and fast averages) from all {len(X_normal)} "
                        f"normal rows after the warm-up; weight = threshold / the level the "
                        f"drift term alone crosses --false-alarm-rate times per row there",
                "threshold": drift_fit}},
    }
    log(f"calibrated on {len(X_cal)} rows: warm-up {warmup} rows, residual std "
        f"{', '.join(f'{n} {v:.3g}' for n, v in zip(names, residual_std))} (normalised); "
        f"score median {np.median(scores):.2f}, max {scores.max():.1f}; threshold "
        f"{threshold:.4g} (about {options.false_alarm_rate * 1e4:g} false alarms per 10,000 "
        f"normal rows); a channel repeating its reading {stuck_rows} rows in a row is stuck")
    log("consistency: R^2 of each channel from the others "
        + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, r2))
        + (f"; accumulated for {', '.join(cons['channels'])}" if cons and cons["channels"]
           else "; none kept")
        + (f"; drift test for {', '.join(drift['channels'])}" if drift else ""))
    return model


# -- the command -------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train a GRU forecaster on the normal part of a sensor CSV and write an "
                    "edgegru scoring model (.npz) plus the PyTorch state dict (.pt).",
        epilog="example: python tools/train.py examples/sensor.csv -o weights/model.npz",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="CSV with a header line, one row per time step")
    p.add_argument("-o", "--output", required=True, type=Path, help="model file to write (.npz)")
    p.add_argument("--state-dict", type=Path,
                   help="where to save the PyTorch state dict (default: OUTPUT with .pt)")
    p.add_argument("--columns", help="comma-separated channel columns (default: every numeric "
                                     "column)")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--train-fraction", type=float, default=0.4,
                      help="leading fraction of the rows that is normal (anomaly-free)")
    part.add_argument("--train-rows", type=int, help="leading rows that are normal")
    p.add_argument("--calibration-fraction", type=float, default=0.3,
                   help="trailing share of the normal rows kept out of training, to calibrate")
    p.add_argument("--hidden-size", type=int, default=32, help="GRU hidden size")
    p.add_argument("--num-layers", type=int, default=1, help="GRU layers")
    p.add_argument("--epochs", type=int, default=60, help="passes over the training rows")
    p.add_argument("--window", type=int, default=128, help="rows per training window (TBPTT)")
    p.add_argument("--burn-in", type=int, default=16,
                   help="first rows of each window that only settle the state (no loss)")
    p.add_argument("--stride", type=int, default=16, help="rows between window starts")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step")
    p.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (Adam)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--shift", type=float, default=1.0,
                   help="random per-window level shift (normalised units) for training; 0: off")
    p.add_argument("--smoothing", type=float, default=1.0,
                   help="score smoothing alpha in (0, 1]; 1 scores each row on its own")
    p.add_argument("--false-alarm-rate", type=float, default=1e-5,
                   help="threshold: score crossings per row on normal data")
    p.add_argument("--shrinkage", type=float, default=0.05,
                   help="whitening: shrink the residual correlation towards the identity")
    p.add_argument("--whitening", choices=("conditional", "zca"), default="conditional",
                   help="how the forecast residuals are decorrelated (see edgegru/scoring.py)")
    p.add_argument("--consistency-r2", type=float, default=0.99,
                   help="consistency model: keep the channels the others explain with at "
                        "least this R^2 (above 1: no consistency model)")
    p.add_argument("--consistency-lags", type=int, default=2,
                   help="consistency model: rows of the other channels it reads (this one and "
                        "the ones before)")
    p.add_argument("--consistency-degree", type=int, default=3,
                   help="consistency model: polynomial degree in each other channel")
    p.add_argument("--consistency-smoothing", type=float, default=0.3,
                   help="consistency model: EWMA alpha of its residual, in (0, 1]")
    p.add_argument("--drift-r2", type=float, default=0.95,
                   help="drift test: for the channels the consistency model leaves out that the "
                        "others still explain with at least this R^2 (above 1: none)")
    p.add_argument("--drift-smoothing", type=float, default=0.02,
                   help="drift test: EWMA alpha of the slow average, in (0, 1]")
    p.add_argument("--drift-fast-smoothing", type=float, default=0.3,
                   help="drift test: EWMA alpha of the fast average, in (0, 1]")
    p.add_argument("--drift-baseline-smoothing", type=float, default=0.001,
                   help="drift test: EWMA alpha of the baseline (normal wear), in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (fixed, so a seed gives the same file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    for name in ("hidden_size", "num_layers", "epochs", "window", "stride", "batch_size",
                 "threads", "consistency_lags", "consistency_degree"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.burn_in < args.window:
        p.error("--burn-in must be at least 0 and less than --window")
    if not 0.0 < args.smoothing <= 1.0:
        p.error("--smoothing must be in (0, 1]")
    if not 0.0 < args.consistency_smoothing <= 1.0:
        p.error("--consistency-smoothing must be in (0, 1]")
    for name in ("drift_smoothing", "drift_fast_smoothing", "drift_baseline_smoothing"):
        if not 0.0 < getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be in (0, 1]")
    if not 0.0 < args.false_alarm_rate < 0.05:
        p.error("--false-alarm-rate must be in (0, 0.05)")
    if not 0.0 <= args.shrinkage < 1.0:
        p.error("--shrinkage must be in [0, 1)")
    if args.lr <= 0 or args.clip <= 0 or args.shift < 0:
        p.error("--lr and --clip must be positive, --shift at least 0")
    return args


def prepare(args, log):
    """Read and check the data (no torch needed): -> dict of what training needs."""
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    names, X, skipped = read_csv(args.data, columns)
    log(f"{args.data}: {len(X)} rows, channels {', '.join(names)}"
        + (f" (skipped non-numeric: {', '.join(skipped)})" if skipped else ""))
    n_normal = normal_rows(len(X), args.train_fraction, args.train_rows)
    for c, name in enumerate(names):
        if n_normal and not np.isfinite(X[:n_normal, c]).any():
            raise TrainingError(f"{args.data}: column {name!r} has no value in the normal part "
                                f"(the first {n_normal} rows); leave it out with --columns")
    X_train, X_cal = split_normal(X, n_normal, args.calibration_fraction, args.data)
    missing = int((~np.isfinite(X[:n_normal])).any(axis=1).sum())
    if missing:
        log(f"note: {missing} of the {n_normal} normal rows have a missing value; training "
            f"windows leave them out, calibration scores them as edgegru run does")
    mean, std = normalisation(X_train, names, args.data)
    if len(training_windows(np.isfinite(X_train).all(axis=1), args.window + 1, 1)) == 0:
        raise TrainingError(f"{args.data}: no {args.window + 1} consecutive training rows "
                            f"without a missing value; use a smaller --window")
    log(f"normal part: rows 0-{n_normal - 1}; training on rows 0-{len(X_train) - 1}, "
        f"calibrating on rows {len(X_train)}-{n_normal - 1}")
    return {"names": names, "X": X, "skipped": skipped, "n_normal": n_normal,
            "X_train": X_train, "X_cal": X_cal, "missing": missing, "mean": mean, "std": std}


def train(args, argv, log, data):
    """Train, calibrate and save; returns the model. ``data`` is what :func:`prepare` read."""
    import torch

    names, X, skipped, n_normal = data["names"], data["X"], data["skipped"], data["n_normal"]
    X_train, X_cal, missing = data["X_train"], data["X_cal"], data["missing"]
    mean, std = data["mean"], data["std"]
    Z_train, Z_cal = (X_train - mean) / std, (X_cal - mean) / std
    t0 = time.perf_counter()
    sd, summary = train_forecaster(Z_train, Z_cal, args, log)
    log(f"trained in {time.perf_counter() - t0:.0f} s")

    model = edgegru.from_state_dict(sd)                  # the import path users take
    calibrate(model, names, mean, std, Z_train, Z_cal, X_cal, args, log, X[:n_normal])
    model.meta["provenance"] = {
        **model.meta.get("provenance", {}),
        "tool": "tools/train.py",
        # as typed, less -q (which does not change the file)
        "command": " ".join(["python", "tools/train.py"]
                            + [a for a in argv if a not in ("-q", "--quiet")]),
        "data": {"file": Path(args.data).name, "sha256": _sha256(args.data),
                 "rows": int(len(X)), "columns": names, "skipped_columns": skipped},
        "split": {"normal_rows": n_normal, "train_rows": [0, len(X_train)],
                  "calibration_rows": [len(X_train), n_normal],
                  "rows_with_missing_values": missing},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("data", "output", "state_dict", "quiet")},
        "seed": args.seed,
        "versions": {"edgegru": edgegru.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "training": summary,
    }
    pt = args.state_dict or args.output.with_suffix(".pt")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    torch.save(sd, pt)
    log(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB) and {pt}")
    return model


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr,
                                                                    flush=True))
    try:
        data = prepare(args, log)
        try:
            import torch  # noqa: F401
        except ImportError:
            raise TrainingError("training needs PyTorch: pip install torch==2.13.0") from None
        train(args, argv, log, data)
    except TrainingError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
