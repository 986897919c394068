"""Calibration: everything in a model file's ``preprocessing`` and ``scoring`` sections, fitted
with NumPy and edgegru's own scorer (no torch), so the threshold is on exactly the scores
``edgegru run`` gives.

:func:`calibrate` is the entry point: given a forecaster (an edgegru ``Model``), the
normalisation and the normal rows split in time into training and calibration rows, it fills
``model.meta["preprocessing"]`` and ``model.meta["scoring"]``:

- ``mean``, ``std`` (:func:`normalisation`): per channel over the training rows;
- ``warmup`` (:func:`measure_warmup`): rows until a forecaster started from a zero state
  agrees with one that has seen the past;
- ``residual_std``: per-channel RMS of the forecast residuals after the warm-up;
- ``whitening`` (:func:`conditional_whitening`, :func:`zca_whitening`): decorrelates the
  residuals; the identity for one channel;
- ``consistency`` (:func:`fit_consistency`): each channel regressed on the others, kept where
  they explain it; its ``drift`` test (:func:`fit_drift`) for channels they explain roughly;
- ``threshold`` (:func:`upcrossing_threshold`): peaks over threshold on the calibration scores;
- ``stuck_rows`` (:func:`longest_repeat_run`): twice the longest exact repeat on normal data.

The formulas are the scorer's (``edgegru/scoring.py``); ``edgegru.train`` fits the forecaster
and calls :func:`calibrate`.

>>> upcrossing_threshold(np.r_[np.zeros(95), np.ones(5)], 0.01)[0]
1.0
"""
import math
import shlex
from dataclasses import dataclass

import numpy as np

from edgegru.errors import TrainingError
from edgegru.model import Model
from edgegru.scoring import (FORECASTS, SCORING_VERSION, AnomalyScorer, _level_statistic,
                             _level_update, forecasts)

MAX_WARMUP = 100             # the scorer's warm-up is measured, and capped here
RESIDUAL_STD_FLOOR = 1e-3    # in normalised units: a perfectly forecast channel still has noise
STUCK_MIN_ROWS = 5           # the stuck-sensor rule never fires on fewer exact repeats than this
MIN_TRAIN_ROWS = 128         # complete rows: windows of 64 rows, at 16-row strides, a few of them
MIN_CALIBRATION_ROWS = 90    # a warm-up of up to a third, and 60 scores to set the threshold on


@dataclass
class CalibrationOptions:
    """How the score is calibrated (``edgegru train``'s options of the same names)."""
    false_alarm_rate: float = 1e-5      # threshold: score crossings per row on normal data
    smoothing: float = 1.0              # score EWMA alpha; 1 scores each row on its own
    whitening: str = "conditional"      # or "zca"
    shrinkage: float = 0.05             # of the residual correlation towards the identity
    consistency_r2: float = 0.99        # keep channels the others explain this well (> 1: none)
    consistency_lags: int = 2           # rows of the other channels read: this one and before
    consistency_degree: int = 3         # polynomial degree in each other channel
    consistency_smoothing: float = 0.3  # EWMA alpha of the consistency residual
    drift_r2: float = 0.95              # drift test for channels explained this well (> 1: none)
    drift_smoothing: float = 0.02       # EWMA alpha of the slow average
    drift_fast_smoothing: float = 0.3   # EWMA alpha of the fast average
    drift_baseline_smoothing: float = 0.001  # EWMA alpha of the baseline (normal wear)
    level_smoothing: float = 0.1        # level test: EWMA alpha of the channels' averages
    level_max_ratio: float = 25.0       # level test: channels whose variance ratio is below
    level_margin: float = 3.0           # level test: reaches the threshold at margin x its max
    level_shrinkage: float = 0.1        # level test: of the averages' covariance to its diagonal
    level_rebaseline: float = 50.0      # level test: new normal once below its episode's peak / this

    def check(self):
        """Raise TrainingError naming the option that is out of range."""
        for name in ("smoothing", "consistency_smoothing", "drift_smoothing",
                     "drift_fast_smoothing", "drift_baseline_smoothing", "level_smoothing"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise TrainingError(f"--{name.replace('_', '-')} must be in (0, 1], got "
                                    f"{getattr(self, name)}")
        if not 0.0 < self.false_alarm_rate < 0.05:
            raise TrainingError(f"--false-alarm-rate must be in (0, 0.05), got "
                                f"{self.false_alarm_rate}")
        if not 0.0 <= self.shrinkage < 1.0:
            raise TrainingError(f"--shrinkage must be in [0, 1), got {self.shrinkage}")
        if self.whitening not in ("conditional", "zca"):
            raise TrainingError(f"--whitening must be conditional or zca, got "
                                f"{self.whitening!r}")
        if not (self.level_max_ratio >= 0 and self.level_margin >= 1.0
                and 0.0 <= self.level_shrinkage < 1.0):
            raise TrainingError("--level-max-ratio must be at least 0, --level-margin at least 1 "
                                "and --level-shrinkage in [0, 1)")
        if not (self.level_rebaseline == 0 or self.level_rebaseline > 1):
            raise TrainingError(f"--level-rebaseline must be above 1, or 0 (off), got "
                                f"{self.level_rebaseline}")
        for name in ("consistency_lags", "consistency_degree"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
        return self


def _round(x, digits=6):
    return float(f"{x:.{digits}g}")


def check_calibration_fraction(fraction):
    """Raise TrainingError unless the calibration fraction is in (0, 1)."""
    if not 0.0 < fraction < 1.0:
        raise TrainingError(f"--calibration-fraction must be in (0, 1), got {fraction}")


def split_rows(n_normal, calibration_fraction):
    """How the normal rows split: (training rows, calibration rows) counts."""
    n_cal = round(calibration_fraction * n_normal)
    return n_normal - n_cal, n_cal


def split_normal(X, n_normal, calibration_fraction, path="the data"):
    """The normal rows -> (train rows, calibration rows), after checking there are enough."""
    n_train, n_cal = split_rows(n_normal, calibration_fraction)
    need = next(n for n in range(1, 10**9)
                if split_rows(n, calibration_fraction)[1] >= MIN_CALIBRATION_ROWS
                and split_rows(n, calibration_fraction)[0] >= MIN_TRAIN_ROWS)
    usable_train = int(np.isfinite(X[:n_train]).all(axis=1).sum())
    if usable_train < MIN_TRAIN_ROWS or n_cal < MIN_CALIBRATION_ROWS:
        raise TrainingError(
            f"{path}: too few rows: the normal part has {n_normal} rows ({usable_train} complete "
            f"training rows, {n_cal} calibration rows); it needs at least "
            f"{MIN_TRAIN_ROWS} complete rows to train on (windows of 64 rows or more; "
            f"calibrating an existing model fits its tests on them) and "
            f"{MIN_CALIBRATION_ROWS} to calibrate on (a warm-up and "
            f"{MIN_CALIBRATION_ROWS - MIN_CALIBRATION_ROWS // 3} scores to set the threshold "
            f"by), that is {need} normal rows with --calibration-fraction "
            f"{calibration_fraction:g}; record longer, or raise --train-rows / --train-fraction")
    return X[:n_train], X[n_train:n_normal]


def normalisation(X_train, names, path="the data"):
    """Per-channel (mean, std) over the training rows; refuses empty and constant channels."""
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(X_train, axis=0)
        std = np.nanstd(X_train, axis=0)
    constant = [c for c in range(len(names)) if not std[c] > 1e-9 * max(1.0, abs(mean[c]))]
    if constant:
        kept = ",".join(n for c, n in enumerate(names) if c not in constant)
        one = len(constant) == 1
        which = ", ".join(f"{names[c]!r} ({mean[c]:g})" for c in constant)
        it = "it" if one else "them"
        raise TrainingError(
            f"{path}: {'column' if one else 'columns'} {which} {'is' if one else 'are'} "
            f"constant in the training rows; a forecaster learns nothing from {it} and any "
            f"change would score as an infinite anomaly: leave {it} out with --columns "
            f"{shlex.quote(kept) if kept else '...'}")
    return mean, std


def forecast_residuals(model, Z, forecast="absolute"):
    """Z (n, C) normalised -> R (n, C): row t minus the forecast made after row t-1, from a
    zero state, with missing values imputed from the forecast as AnomalyScorer does (their
    residuals, and row 0's, are NaN). forecast: what the model's output is (see
    :func:`edgegru.scoring.forecasts`)."""
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
        F = forecasts(model.run(z), z, forecast)
        R[start + 1:stop] = z[1:] - F[:-1]
        if start:
            R[start] = np.where(missing, np.nan, z[0] - f)
        f = F[-1].copy()
        start = stop
    model.reset()
    return R


def measure_warmup(model, Z_before, Z_cal, rms, tolerance=0.1, max_warmup=MAX_WARMUP):
    """Rows until a forecaster started from zero forecasts like one that has read the past.

    Runs the calibration rows from a zero state and from the state after the training rows;
    the warm-up ends after the last row where the two forecasts differ by more than
    ``tolerance`` residual standard deviations on some channel (at least 1, at most
    ``max_warmup``).
    """
    n = min(len(Z_cal), 2 * max_warmup)
    before = np.nan_to_num(Z_before[-500:]).astype(np.float32)
    model.reset()
    model.run(before)
    warm = model.run(np.nan_to_num(Z_cal[:n]).astype(np.float32))
    model.reset()
    cold = model.run(np.nan_to_num(Z_cal[:n]).astype(np.float32))
    model.reset()
    far = (np.abs(warm - cold) / rms).max(axis=1) > tolerance
    last = int(np.flatnonzero(far)[-1]) + 1 if far.any() else 0
    return min(max_warmup, max(1, last + 1))


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


LEVEL_BLOCK = 50                 # rows per block mean in the level test's variance ratio


def variance_ratio(Z, block=LEVEL_BLOCK):
    """Per channel of Z (n, C): the variance of block means times the block length over the
    variance. About 1 for noise around a steady level, far above 1 for a channel that wanders
    on a slower time scale (a temperature following the weather): only the former has a
    normal level that a few hundred rows pin down."""
    n = len(Z) // block * block
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nanmean(Z[:n].reshape(-1, block, Z.shape[1]), axis=1)
        return np.nanvar(means, axis=0) * block / np.nanvar(Z[:n], axis=0)


def settling_rows(alpha):
    """The rows an EWMA of smoothing alpha takes to settle: about 2 / alpha."""
    return int(round(2 / alpha))


def level_averages(Z, X, channels, center, alpha):
    """The level test's averages over rows Z (n, C) (normalised; X raw, NaN for missing), as
    the scorer keeps them: -> (n, L)."""
    channels = np.asarray(channels, np.int64)
    m, shift = np.zeros(len(channels)), np.zeros(len(channels))
    out = np.empty((len(Z), len(channels)))
    z32 = np.ascontiguousarray(Z, np.float32)
    for t in range(len(Z)):
        _level_update(m, z32[t], X[t], channels, center, shift, alpha)
        out[t] = m
    return out


def fit_level(Z, X, names, options):
    """The level test for the channels with a steady level on the normal rows Z (normalised,
    X raw): -> (section without its weight, the largest T^2 on those rows, variance ratios),
    or (None, None, ratios) when no channel qualifies or there are too few rows."""
    ratio = (variance_ratio(Z) if len(Z) >= 2 * LEVEL_BLOCK
             else np.full(Z.shape[1], np.inf))
    sel = np.flatnonzero(np.isfinite(ratio) & (ratio < options.level_max_ratio))
    if sel.size == 0:
        return None, None, ratio
    center = np.nanmean(Z[:, sel], axis=0)
    S = level_averages(Z, X, sel, center, options.level_smoothing)
    S = S[settling_rows(options.level_smoothing):]            # past the averages' start-up
    cov = np.atleast_2d(np.cov(S.T))
    cov = (1 - options.level_shrinkage) * cov + options.level_shrinkage * np.diag(np.diag(cov))
    precision = np.ascontiguousarray(np.linalg.inv(cov))
    present = np.zeros(Z.shape[1], np.int64)            # the scorer's "absent" counts: none
    t2_max = max(_level_statistic(m, precision, sel, present)[0] for m in S)
    section = {"channels": [names[i] for i in sel], "smoothing": options.level_smoothing,
               "center": [_round(v, 9) for v in center],
               "precision": [[_round(v, 9) for v in row] for row in precision]}
    return section, float(t2_max), ratio


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


def warmup_cap(n_calibration):
    """The longest warm-up measured on ``n_calibration`` rows: MAX_WARMUP, or a third of the rows
    when they are few, so that two thirds of them are scored to set the threshold on."""
    return max(1, min(MAX_WARMUP, n_calibration // 3))


def calibrate(model, names, mean, std, Z_train, Z_cal, X_cal, options=None, log=None,
              X_normal=None, forecast="absolute"):
    """Fill ``model.meta["preprocessing"]`` and ``["scoring"]``; returns the model.

    model: the forecaster (edgegru ``Model``, C inputs and C outputs, on normalised rows);
    names (C,): channel names; mean, std (C,): the normalisation (:func:`normalisation`);
    Z_train (n_t, C), Z_cal (n_c, C): normalised training and calibration rows, in time order,
    the calibration rows never trained on; X_cal (n_c, C): the calibration rows raw (as
    ``edgegru run`` reads them); X_normal: every normal row raw (for ``stuck_rows``; default
    X_cal); options: :class:`CalibrationOptions`; log: a function taking one message line;
    forecast: what the model's output is, "absolute" (the next row) or "delta" (its step).

    The terms are added one by one, and after each the threshold is fitted again on the
    scores edgegru's own scorer gives the calibration rows from a fresh start, so that each
    next term is put on the scale of the score so far.
    """
    options = CalibrationOptions() if options is None else options
    log = log or (lambda message: None)
    X_normal = X_cal if X_normal is None else X_normal
    model.meta["preprocessing"] = {"columns": list(names), "mean": [_round(v, 9) for v in mean],
                                   "std": [_round(v, 9) for v in std]}
    warmup, residual_std, residual_rows = _fit_forecast_term(model, Z_train, Z_cal, forecast,
                                                             options)
    # stuck sensors: exact repeats of a noisy reading, twice the longest run on normal data
    repeats = longest_repeat_run(X_normal)
    stuck_rows = int(max(STUCK_MIN_ROWS, 2 * int(repeats.max())))
    model.meta["scoring"]["stuck_rows"] = stuck_rows
    scores, threshold, fit = _fit_threshold(model, X_cal, warmup, options)
    fits = {}
    for term in (_add_consistency, _add_drift, _add_level):
        added = term(model, threshold, names, mean, std, Z_train, Z_cal, X_normal, warmup,
                     options, fits)
        if added:
            scores, threshold, fit = _fit_threshold(model, X_cal, warmup, options)
    threshold = _round(threshold, 6)
    model.meta["scoring"]["threshold"] = threshold
    level = model.meta["scoring"].get("level")
    if level and options.level_rebaseline:
        # after an episode, the level the machine settles at is its new normal (scoring)
        level["rebaseline"] = {"above": threshold, "drop": options.level_rebaseline,
                               "settle": settling_rows(options.level_smoothing)}
    model.meta["scoring"]["calibration"] = _calibration_notes(
        names, options, len(X_cal), scores, residual_rows, fit, repeats, len(X_normal), fits)
    cons = model.meta["scoring"].get("consistency")
    drift = cons and cons.get("drift")
    level = model.meta["scoring"].get("level")
    log(f"calibrated on {len(X_cal)} rows: warm-up {warmup} rows, residual std "
        f"{', '.join(f'{n} {v:.3g}' for n, v in zip(names, residual_std))} (normalised); "
        f"score median {np.median(scores):.2f}, max {scores.max():.1f}; threshold "
        f"{threshold:.4g} (about {options.false_alarm_rate * 1e4:g} false alarms per 10,000 "
        f"normal rows); a channel repeating its reading {stuck_rows} rows in a row is stuck")
    log("consistency: R^2 of each channel from the others "
        + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, fits["r2"]))
        + (f"; accumulated for {', '.join(cons['channels'])}" if cons and cons["channels"]
           else "; none kept")
        + (f"; drift test for {', '.join(drift['channels'])}" if drift else ""))
    log("level: variance ratio of each channel "
        + ", ".join(f"{n} {v:.1f}" for n, v in zip(names, fits["ratio"]))
        + (f"; tested (below {options.level_max_ratio:g}): {', '.join(level['channels'])}"
           if level else f"; none below {options.level_max_ratio:g}, no level test"))
    return model


def recalibrate(model, X_normal, names=None, options=None, calibration_fraction=0.3,
                forecast=None, log=None, path="the data"):
    """The forecaster ``model`` calibrated afresh on the normal rows ``X_normal`` (n, C) of
    another machine, or the same one at another operating point: a new ``Model`` (default
    backend) with the same network and new ``preprocessing`` and ``scoring`` sections, as
    ``edgegru calibrate`` writes. NumPy only, no PyTorch: a network trained once on a
    workstation is fitted to each machine where it runs.

    The rows are split as training splits them (the last ``calibration_fraction`` calibrates,
    the rest sets the normalisation and the tests' fits), and :func:`calibrate` runs as it
    does after training, so recalibrating on a model's own normal rows with its options gives
    its sections back. names: the channels (default: the model's ``preprocessing`` columns);
    forecast: what the network predicts, "absolute" or "delta" (default: what the model's
    scoring section says).
    """
    scoring, pre = model.meta.get("scoring"), model.meta.get("preprocessing")
    if forecast is None and isinstance(scoring, dict):
        forecast = scoring.get("forecast", "absolute")
    if forecast not in FORECASTS:
        raise TrainingError(f"the model has no scoring section that says what it forecasts: "
                            f"give forecast {' or '.join(FORECASTS)} (edgegru calibrate "
                            f"--forecast)")
    names = list(names or (pre.get("columns") if isinstance(pre, dict) else None) or [])
    X_normal = np.asarray(X_normal, dtype=np.float64)
    C = model.input_size
    if X_normal.ndim != 2 or X_normal.shape[1] != C or len(names) != C \
            or model.output_size != C:
        raise TrainingError(
            f"{path}: the model forecasts {model.output_size} channels from {C}; calibration "
            f"needs as many channels in the data ({X_normal.shape[-1]}) and names for them "
            f"({len(names)})")
    X_train, X_cal = split_normal(X_normal, len(X_normal), calibration_fraction, path)
    mean, std = normalisation(X_train, names, path)
    kept = {k: v for k, v in model.meta.items() if k not in ("preprocessing", "scoring")}
    # on NumPy, as training calibrates (the backends agree to float32 rounding)
    network = Model(model.config, model.weights, meta=kept, backend="numpy")
    calibrate(network, names, mean, std, (X_train - mean) / std, (X_cal - mean) / std, X_cal,
              options, log, X_normal, forecast=forecast)
    return Model(network.config, network.weights, meta=network.meta)


def _fit_forecast_term(model, Z_train, Z_cal, forecast, options):
    """The forecast term's settings into a new ``model.meta["scoring"]`` (with a stand-in
    threshold); returns (warm-up, residual std (C,), how many residual rows set them)."""
    C = Z_cal.shape[1]
    R = forecast_residuals(model, Z_cal, forecast)
    cap = warmup_cap(len(Z_cal))
    rms0 = np.sqrt(np.nanmean(R[cap:] ** 2, axis=0))
    warmup = measure_warmup(model, Z_train, Z_cal, np.maximum(rms0, RESIDUAL_STD_FLOOR),
                            max_warmup=cap)
    R = R[warmup:]
    R = R[np.isfinite(R).all(axis=1)]
    residual_std = np.maximum(np.sqrt(np.mean(R * R, axis=0)), RESIDUAL_STD_FLOOR)
    whiten = conditional_whitening if options.whitening == "conditional" else zca_whitening
    whitening = whiten(R / residual_std, options.shrinkage) if C > 1 else np.eye(1)
    model.meta["scoring"] = {
        "version": SCORING_VERSION,
        "residual_std": [_round(v, 9) for v in residual_std],
        "whitening": [[_round(v, 9) for v in row] for row in whitening],
        "combine": "max", "smoothing": options.smoothing, "warmup": warmup,
        "threshold": 1.0}          # a stand-in (scorers need a valid one) until it is fitted
    if forecast != "absolute":
        model.meta["scoring"]["forecast"] = forecast
    return warmup, residual_std, len(R)


def _fit_threshold(model, X_cal, warmup, options):
    """(scores, threshold, its fit) on the scores users get with the model's scoring section
    as it is: edgegru's own scorer, from a fresh start, after the warm-up."""
    scores = AnomalyScorer.from_model(model).score_many(X_cal)[warmup:]
    threshold, fit = upcrossing_threshold(scores, options.false_alarm_rate)
    return scores, threshold, fit


def _add_consistency(model, threshold, names, mean, std, Z_train, Z_cal, X_normal, warmup,
                     options, fits):
    """The consistency model, its score put on the forecaster's scale: the level its own
    calibration scores cross as often as the threshold is mapped to the threshold. Returns
    whether a term was added; its fit, R^2 and regressions go into ``fits``."""
    fits["cons_fit"] = None
    if len(names) == 1:
        fits["r2"], fits["coefs"] = np.zeros(1), None
        return False
    cons, fits["r2"], M, fits["coefs"] = fit_consistency(Z_train, Z_cal, names, warmup, options)
    if cons is None:
        return False
    cons_threshold, fits["cons_fit"] = upcrossing_threshold((M * M).max(axis=1),
                                                            options.false_alarm_rate)
    cons["weight"] = _round(threshold / cons_threshold, 9)
    model.meta["scoring"]["consistency"] = cons
    return True


def _add_drift(model, threshold, names, mean, std, Z_train, Z_cal, X_normal, warmup, options,
               fits):
    """The drift test, on the same scale: the level its term alone crosses as often on the
    normal rows is mapped to the threshold."""
    fits["drift_fit"] = None
    if len(names) == 1:
        return False
    drift, G = fit_drift(np.vstack([Z_train, Z_cal]), len(Z_train), names, fits["coefs"],
                         fits["r2"], warmup, options)
    if drift is None:
        return False
    drift_threshold, fits["drift_fit"] = upcrossing_threshold(G, options.false_alarm_rate)
    drift["weight"] = _round(threshold / drift_threshold, 9)
    cons = model.meta["scoring"].get("consistency")
    if cons is None:                 # no channel for the consistency term: only the drift test
        P = len(drift["coef"][0])
        cons = {"channels": [], "lags": options.consistency_lags,
                "degree": options.consistency_degree, "coef": np.zeros((0, P)).tolist(),
                "residual_std": [], "smoothing": options.consistency_smoothing,
                "ewma_std": [], "weight": 1.0}
    cons["drift"] = drift
    model.meta["scoring"]["consistency"] = cons
    return True


def _add_level(model, threshold, names, mean, std, Z_train, Z_cal, X_normal, warmup, options,
               fits):
    """The level test, on the same scale: margin x its largest value on the normal rows is
    mapped to the threshold."""
    Z_normal = (X_normal - mean) / std
    level, level_max, fits["ratio"] = fit_level(Z_normal, X_normal, names, options)
    if level is None:
        return False
    level["weight"] = _round(threshold / (options.level_margin * level_max), 9)
    model.meta["scoring"]["level"] = level
    return True


def _calibration_notes(names, options, n_cal, scores, residual_rows, fit, repeats, n_normal,
                       fits):
    """The "calibration" record of the scoring section: what each setting was fitted on, and
    how."""
    return {
        "rows": int(n_cal), "scored_rows": int(len(scores)),
        "residual_rows": int(residual_rows),
        "residual_std": "RMS of the forecast residual per channel, normalised units, after "
                        "the warm-up",
        "whitening": ("conditional: diag(P)^(-1/2) P, P the inverse of the residuals' "
                      "correlation matrix" if options.whitening == "conditional" else
                      "ZCA: inverse square root of the residuals' correlation matrix")
                     + f", shrunk towards the identity by {options.shrinkage}",
        "warmup": "rows until a forecaster started from zero forecasts within 0.1 residual "
                  "std of one that has read the past",
        "score_quantiles": {q: _round(float(np.quantile(scores, float(q))))
                            for q in ("0.5", "0.9", "0.99", "0.999")},
        "score_max": _round(float(scores.max())),
        "threshold": fit,
        "stuck_rows": f"max({STUCK_MIN_ROWS}, 2 x the longest run of exactly repeated "
                      f"readings on one channel in the {n_normal} normal rows: "
                      f"{', '.join(f'{n} {int(r)}' for n, r in zip(names, repeats))})",
        "consistency": {
            "r2": {n: _round(float(v), 4) for n, v in zip(names, fits["r2"])},
            "rule": f"channels whose value the other channels explain with R^2 >= "
                    f"{options.consistency_r2} on the calibration rows (regression fitted on "
                    f"the training rows); weight = threshold / the level the consistency "
                    f"score alone crosses --false-alarm-rate times per row",
            "threshold": fits["cons_fit"],
            "drift": {
                "rule": f"channels the consistency model leaves out whose R^2 is at least "
                        f"{options.drift_r2}; residual_std from the calibration rows, std and "
                        f"fast_std (of the slow and fast averages) from all {n_normal} "
                        f"normal rows after the warm-up; weight = threshold / the level the "
                        f"drift term alone crosses --false-alarm-rate times per row there",
                "threshold": fits["drift_fit"]}},
        "level": {
            "variance_ratio": {n: _round(float(v), 4) for n, v in zip(names, fits["ratio"])},
            "rule": f"channels whose variance ratio (the variance of {LEVEL_BLOCK}-row means "
                    f"times {LEVEL_BLOCK} over the variance, about 1 for a steady level) is "
                    f"below {options.level_max_ratio} on the normal rows; precision = the "
                    f"inverse of their EWMA's covariance there (shrunk by "
                    f"{options.level_shrinkage} towards its diagonal); weight = threshold / "
                    f"({options.level_margin} x the largest T^2 on the normal rows)"},
    }
