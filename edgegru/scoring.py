"""Anomaly scores from a GRU forecaster: how far each sensor row is from what the model expected.

The model file holds a GRU stack whose linear head predicts the next normalised row, plus two
metadata sections that :mod:`tools/train.py <train>` writes::

    "preprocessing": {"columns": ["temperature", ...], "mean": [...], "std": [...]}
    "scoring": {"residual_std": [...], "smoothing": 0.3, "threshold": 4.2, "warmup": 10, ...}

The score of row t, for C channels (``z`` the normalised row, ``f`` the forecast made after row
t-1, ``s_c`` the spread of channel c's forecast residual on normal data)::

    z_c  = (x_c - mean_c) / std_c
    e_c  = (z_c - f_c) / s_c                               standardised residual, ~N(0, 1) if normal
    a_c <- (1 - alpha) * a_c + alpha * e_c**2 / C          per-channel contribution (EWMA)
    score = sum_c a_c                                      ~1 on normal data; high = anomalous

``anomaly = score > threshold``. The exponential smoothing (``alpha = smoothing``) suppresses
one-sample flicker: a single large residual still shows, but ordinary noise does not cross the
threshold on its own. The contributions ``a_c`` are what ``--explain`` prints: they add up to
the score and say which sensor moved.

First rows: the first row has no forecast, and the forecaster starts from a zero state, so the
first ``warmup`` rows of a stream (rows_seen < warmup) score 0.0 and are never anomalous; the
model still reads them, so its state settles.

Missing values (NaN, or a non-finite number): the channel is replaced by the model's own forecast
for it before the model reads the row. Its residual is therefore 0 (no evidence either way), its
contribution decays, and the state keeps moving as if the value had been the expected one. A row
with every value missing advances the model on its forecast alone.

``score_many(rows)`` gives exactly what ``score_one`` gives row by row (the same arithmetic, in
the same order: the sequence kernel is bitwise identical to the step kernel).
"""
import numpy as np

from edgegru._jit import njit
from edgegru.errors import ModelFormatError
from edgegru.formats import load as load_model


@njit(cache=True, error_model="numpy")
def _score_rows(scores, contrib, Z, F, f_prev, smoothed, rows_seen, inv_residual_std, alpha,
                warmup):
    """Scores of rows Z (T, C) given the forecasts: f_prev (C,) before row 0, F[t] after row t.

    scores (T,), contrib (T, C): outputs. smoothed (C,): the EWMA state, updated in place.
    Returns the new rows_seen.
    """
    T, C = Z.shape
    inv_c = 1.0 / C
    for t in range(T):
        if rows_seen >= warmup:
            total = 0.0
            for c in range(C):
                f = f_prev[c] if t == 0 else F[t - 1, c]
                e = (Z[t, c] - f) * inv_residual_std[c]
                smoothed[c] = (1.0 - alpha) * smoothed[c] + alpha * e * e * inv_c
                contrib[t, c] = smoothed[c]
                total += smoothed[c]
            scores[t] = total
        else:
            scores[t] = 0.0
            for c in range(C):
                contrib[t, c] = 0.0
        rows_seen += 1
    return rows_seen


class AnomalyScorer:
    """Score sensor rows one at a time or in bulk; high means anomalous.

    >>> scorer = AnomalyScorer.load("weights/model.npz")          # doctest: +SKIP
    >>> s = scorer.score_one({"temperature": 41.2, "vibration": 2.1, "current": 11.0,
    ...                       "pressure": 3.9})                      # doctest: +SKIP
    >>> flag = s > scorer.threshold                                  # doctest: +SKIP
    """

    def __init__(self, model, columns, mean, std, residual_std, threshold, smoothing=0.3,
                 warmup=1):
        C = len(columns)
        if model.input_size != C or model.output_size != C:
            raise ModelFormatError(
                f"a forecaster for {C} columns needs input_size == output_size == {C}, the model "
                f"has input_size {model.input_size} and output_size {model.output_size}")
        if model.config.bidirectional:
            raise ModelFormatError("a forecaster cannot be bidirectional: it must not see the "
                                   "future")
        self.model = model
        self.columns = list(columns)
        self.mean = _vector(mean, C, "mean")
        self.std = _vector(std, C, "std", positive=True)
        self.residual_std = _vector(residual_std, C, "residual_std", positive=True)
        self.threshold = float(threshold)
        self.smoothing = float(smoothing)
        self.warmup = int(warmup)
        if not 0.0 < self.smoothing <= 1.0:
            raise ModelFormatError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.warmup < 1:
            raise ModelFormatError(f"warmup must be at least 1 (the first row has no forecast), "
                                   f"got {self.warmup}")
        self._mean32 = self.mean.astype(np.float32)
        self._inv_std = (1.0 / self.std).astype(np.float32)
        self._inv_residual_std = 1.0 / self.residual_std
        self._index = {name: i for i, name in enumerate(self.columns)}
        # scorer state beyond the GRU's: the last forecast, the EWMA, and how many rows were seen
        self._forecast = np.zeros(C, np.float32)
        self._smoothed = np.zeros(C, np.float64)
        self._rows_seen = 0
        # buffers for score_one, allocated once
        self._z = np.zeros((1, C), np.float32)
        self._score1 = np.zeros(1, np.float64)
        self._contrib1 = np.zeros((1, C), np.float64)
        self._contributions = np.zeros(C, np.float64)

    @classmethod
    def load(cls, path, backend=None):
        """A scorer from a model file with ``preprocessing`` and ``scoring`` sections."""
        return cls.from_model(load_model(path, backend=backend), source=str(path))

    @classmethod
    def from_model(cls, model, source="the model"):
        pre, sc = model.meta.get("preprocessing"), model.meta.get("scoring")
        if not isinstance(pre, dict) or not isinstance(sc, dict):
            raise ModelFormatError(
                f"{source}: not a scoring model (it needs 'preprocessing' and 'scoring' sections "
                f"in its metadata, as tools/train.py writes them)")
        try:
            return cls(model, pre["columns"], pre["mean"], pre["std"], sc["residual_std"],
                       sc["threshold"], sc.get("smoothing", 0.3), sc.get("warmup", 1))
        except KeyError as exc:
            raise ModelFormatError(f"{source}: scoring metadata lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{source}: bad scoring metadata ({exc})") from None

    @property
    def num_channels(self):
        return len(self.columns)

    # -- scoring --------------------------------------------------------------------------
    def score_one(self, row):
        """Score one row (1-D array in column order, or {column: value}); returns a float."""
        z = self._z
        z[0] = self._normalise(self._row_array(row))
        self._impute(z[0], self._forecast)
        self._rows_seen = _score_rows(self._score1, self._contrib1, z, z, self._forecast,
                                      self._smoothed, self._rows_seen, self._inv_residual_std,
                                      self.smoothing, self.warmup)
        self.model.step(z[0], out=self._forecast)
        self._contributions[:] = self._contrib1[0]
        return float(self._score1[0])

    def score_many(self, rows, explain=False):
        """Scores of rows (T, C): identical to T calls of ``score_one``, much faster.

        With ``explain=True`` returns ``(scores (T,), contributions (T, C))``.
        """
        X = _as_rows(rows, self.num_channels)
        T, C = X.shape
        Z = self._normalise(X)
        scores = np.zeros(T, np.float64)
        contrib = np.zeros((T, C), np.float64)
        start = 0
        while start < T:
            # rows up to (not including) the next one with a missing value go in one run; that
            # row is imputed from the forecast before it, so it starts the next run
            bad = ~np.isfinite(Z[start + 1:]).all(axis=1)
            stop = start + 1 + int(np.argmax(bad)) if bad.any() else T
            self._impute(Z[start], self._forecast)
            F = self.model.run(Z[start:stop])
            self._rows_seen = _score_rows(scores[start:stop], contrib[start:stop],
                                          Z[start:stop], F, self._forecast, self._smoothed,
                                          self._rows_seen, self._inv_residual_std,
                                          self.smoothing, self.warmup)
            self._forecast[:] = F[-1]
            start = stop
        if T:
            self._contributions[:] = contrib[-1]
        return (scores, contrib) if explain else scores

    @property
    def contributions(self):
        """Per-channel contributions to the last score (they add up to it)."""
        return self._contributions.copy()

    # -- state ----------------------------------------------------------------------------
    def reset(self):
        """Forget the stream: zero GRU state, no forecast, warm-up starts again."""
        self.model.reset()
        self._forecast[:] = 0.0
        self._smoothed[:] = 0.0
        self._contributions[:] = 0.0
        self._rows_seen = 0

    @property
    def state(self):
        """Everything needed to resume a stream exactly: a dict of arrays (no objects)."""
        return {"hidden": self.model.state, "forecast": self._forecast.copy(),
                "smoothed": self._smoothed.copy(), "rows_seen": np.int64(self._rows_seen)}

    @state.setter
    def state(self, value):
        try:
            hidden, forecast = np.asarray(value["hidden"]), np.asarray(value["forecast"])
            smoothed, rows_seen = np.asarray(value["smoothed"]), np.asarray(value["rows_seen"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"scorer state needs hidden, forecast, smoothed, rows_seen "
                             f"({exc})") from None
        C = self.num_channels
        if forecast.shape != (C,) or smoothed.shape != (C,) or rows_seen.shape != ():
            raise ValueError(f"scorer state does not fit this model ({C} channels)")
        if rows_seen.dtype.kind not in "iu" or rows_seen < 0:
            raise ValueError("scorer state: rows_seen must be a non-negative integer")
        self.model.state = hidden
        self._forecast[:] = forecast
        self._smoothed[:] = smoothed
        self._rows_seen = int(rows_seen)

    # -- helpers --------------------------------------------------------------------------
    def _row_array(self, row):
        if isinstance(row, dict):
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"row lacks column(s) {', '.join(missing)}; the model reads "
                                 f"{', '.join(self.columns)}")
            return np.array([row[c] for c in self.columns], dtype=np.float64)
        x = np.asarray(row, dtype=np.float64)
        if x.shape != (self.num_channels,):
            raise ValueError(f"row must have {self.num_channels} values "
                             f"({', '.join(self.columns)}), got shape {x.shape}")
        return x

    def _normalise(self, x):
        return (x.astype(np.float32) - self._mean32) * self._inv_std

    @staticmethod
    def _impute(z, forecast):
        # a missing (non-finite) value becomes the forecast for it: residual 0, state moves on
        bad = ~np.isfinite(z)
        if bad.any():
            z[bad] = forecast[bad]


def _vector(values, n, name, positive=False):
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFormatError(f"scoring metadata: {name} must be a list of numbers") from None
    if a.shape != (n,):
        raise ModelFormatError(f"scoring metadata: {name} has {a.size} values, expected {n}")
    if not np.isfinite(a).all() or (positive and (a <= 0).any()):
        raise ModelFormatError(f"scoring metadata: {name} must be finite"
                               + (" and positive" if positive else ""))
    return a


def _as_rows(rows, C):
    try:
        X = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rows must be numbers, shape (T, {C}): {exc}") from None
    if X.ndim != 2 or X.shape[1] != C:
        raise ValueError(f"rows must have shape (T, {C}), got {X.shape}")
    return X
