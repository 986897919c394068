"""Anomaly scores from a GRU forecaster: how far each sensor row is from what the model expected.

The model file holds a GRU stack whose linear head predicts the next normalised row, plus two
metadata sections that `edgegru train` (:mod:`edgegru.calibrate`) writes::

    "preprocessing": {"columns": ["temperature", ...], "mean": [...], "std": [...]}
    "scoring": {"version": 1, "residual_std": [...], "smoothing": 0.3, "threshold": 4.2,
                "warmup": 10,
                "combine": "sum", "whitening": [[...], ...], "stuck_rows": 5,
                "consistency": {"channels": ["current", "pressure"], "lags": 2, "degree": 3,
                                "coef": [[...], ...], "residual_std": [...], "smoothing": 0.3,
                                "ewma_std": [...], "weight": 0.94,
                                "drift": {"channels": ["vibration"], "coef": [[...]],
                                          "residual_std": [...], "smoothing": 0.02,
                                          "fast_smoothing": 0.3, "baseline_smoothing": 0.001,
                                          "std": [...], "fast_std": [...],
                                          "weight": 1.86}},
                "level": {"channels": ["flow"], "smoothing": 0.1, "center": [...],
                          "precision": [[...]], "weight": 0.05},
                "forecast": "delta", ...}

The score of row t, for C channels (``z`` the normalised row, ``f`` the forecast made after row
t-1, ``s_c`` the spread of channel c's forecast residual on normal data)::

    f    = output after row t-1, or z_{t-1} + that output with "forecast": "delta"
    z_c  = (x_c - mean_c) / std_c
    r_c  = (z_c - f_c) / s_c                               standardised residual, ~N(0, 1) if normal
    e    = W r                                             W = whitening (C, C), identity if absent
    combine "sum" (the default):
    a_c <- (1 - alpha) * a_c + alpha * e_c**2 / C          per-channel contribution (EWMA)
    score = sum_c a_c                                      ~1 on normal data; high = anomalous
    combine "max":
    a_c <- (1 - alpha) * a_c + alpha * e_c**2              ~chi-square(1) per channel
    score = max_c a_c                                      one channel's anomaly is not diluted
    consistency (when the model has it; for its channels c only, see below):
    q_c  = (z_c - coef_c . phi_c) / s'_c                   z_c from the other channels, this row
    m_c <- (1 - beta) m_c + beta q_c                        beta = consistency smoothing
    e_c**2 above is replaced by |e_c q_c|, and a_c by max(a_c, weight * (m_c / ewma_std_c)**2)
    drift test (when the consistency section has "drift"; for its channels c only, see below):
    q_c  as above, with the drift section's own coef_c and s'_c (residual_std)
    b_c <- (1 - g) b_c + g q_c                              g = max(baseline_smoothing, 1 / n),
                                                            n = rows seen with this one
    u_c <- (1 - smoothing) u_c + smoothing (q_c - b_c)       slow: a drift under way
    v_c <- (1 - fast_smoothing) v_c + fast_smoothing (q_c - b_c)       fast: still there now
    a_c <- max(a_c, weight * min(|u_c| / std_c, |v_c| / fast_std_c)**2)  if u_c v_c > 0
    stuck sensor (when the model has "stuck_rows"):
    n_c  = rows in a row whose raw x_c equals the previous reading of c exactly
    a_c  = max(a_c, 2 * threshold)  in the score and contributions while n_c >= stuck_rows
    level test (when the model has "level"; for its channels l only, see below):
    m_l <- (1 - gamma) m_l + gamma (z_l - center_l - d_l)    gamma = level smoothing
    T2   = weight * m' P m                                   P = precision
    a_k  = max(a_k, T2)  for k the level channel with the largest share m_k (P m)_k
    re-baseline (when the level section has "rebaseline" {above, drop, settle}): d starts at 0;
    an episode's peak is the largest T2 above `above`; once T2 falls below peak / drop, and
    still `settle` rows later T2 > above: d <- d + m, m <- 0 (and the episode is over)
    a missing channel: a_c = NaN in the contributions, left out of the score

In short: the score is the largest of a few terms, each scaled so that normal data crosses the
threshold about as rarely: how surprised the forecaster is by this row (a spike, a burst, a
broken rhythm), how far a channel is from what the other channels say it should be
(consistency, drift), how far the steady channels' recent average is from their normal level
(level), and whether a sensor has stopped updating (stuck).

The level test catches a sensor or a machine that settles at another level and stays there,
which a next-row forecaster adapts to: ``m_l`` averages the normalised values over about
``2 / gamma`` rows (a missing value leaves them as they are), and Hotelling's T^2 of the
averages against their covariance on normal data (its inverse ``P``) says how unusual that
average is for all the level channels together. ``edgegru train`` gives the test to the
channels whose level the normal rows pin down (the variance of their 50-row means is less
than 25 times what noise around a fixed level would give) and leaves out channels that wander
on a slower time scale (a temperature following the weather), and puts the term on the
score's scale so that it reaches the threshold at 3 times its largest value on the normal rows.
After a large episode (a fault many times past the threshold) ends, the machine may settle at a
level a little off its old one and stay there: a changed pump after a repair, a refilled tank.
With "rebaseline" (``edgegru train`` writes it: ``above`` the threshold, ``drop`` 50, ``settle``
the averages' settling time ``2 / gamma``), once the statistic has fallen below a fiftieth of
the episode's peak and the averages have settled, the level they settled at is the new normal
(``d``, kept in the state as ``level_shift``), so the alarm ends with the fault instead of
lasting as long as the new level does. A fault that never falls that far, or falls back to
normal, moves nothing; a shift that is all there is (no larger episode before it) alarms for as
long as it lasts.

Dropouts: while a channel is missing, it is imputed from the forecast (below), its
contribution is NaN, the consistency and drift averages hold still (their regressions read
every channel), and when it comes back after more than one missing row the forecast term of
every channel is 0 for as many rows as the gap lasted (at most ``warmup``): the GRU state ran on
imputed values meanwhile and needs those rows to settle.

``anomaly = score > threshold``. The exponential smoothing (``alpha = smoothing``) suppresses
one-sample flicker: a single large residual still shows, but ordinary noise does not cross the
threshold on its own (``smoothing = 1`` scores every row on its own). The contributions ``a_c``
are what ``--explain`` prints and say which sensor moved: with "sum" they add up to the score,
with "max" the largest of them is the score.

Stuck sensors: a sensor that stops updating repeats its last reading exactly, which a
forecaster predicts well (its residual is small). A noisy reading at a few decimals practically
never repeats for long, so a channel whose raw value has equalled the previous reading
``stuck_rows`` rows in a row scores as an anomaly (``edgegru train`` sets ``stuck_rows`` to
5 or twice the longest such run in the normal data, whichever is more): its contribution is
raised to at least twice the threshold (``2 * self.threshold``, so the score crosses it and
``--explain`` names the channel; an ``edgegru run --threshold`` above that no longer flags it)
for as long as the run lasts. The EWMA state itself is untouched.
A missing value neither counts as a repeat nor ends a run (the next reading is compared with the
last one present). The count goes on during the warm-up. Without ``stuck_rows`` the rule is off.

The consistency model catches what a next-row forecaster cannot: a persistent offset. The
forecaster adapts to a sensor that has shifted or drifts, so it sees the offset only as a jump
at its start and end. But some channels are functions of the same hidden state (motor current
and pressure both follow the load): ``phi_c`` holds the other channels' values in this row and
the ``lags - 1`` rows before, each to the powers 1..``degree`` (in the order: lag, then channel,
then power, after a leading 1), and ``coef_c`` is a least-squares fit of channel c on them over
normal rows. A real load change moves every channel consistently and ``q_c`` stays small; one
sensor off by a few sigma leaves ``q_c`` off for as long as it lasts, and the EWMA ``m_c``
accumulates it over roughly ``2 / beta`` rows (and forgets it as fast once it is gone).
``s'_c`` and ``ewma_std_c`` are the spreads of ``q_c`` and ``m_c`` on normal data, so
``(m_c / ewma_std_c)**2`` is about chi-square(1); ``weight`` puts it on the forecast score's
scale (``edgegru train``: the threshold divided by the level the consistency term alone
crosses as rarely). On these channels a forecast surprise counts only as far as the channel also
disagrees with the others in the same row: ``|e_c q_c|`` (the geometric mean of the two squared
residuals) instead of ``e_c**2``, so a load change the forecaster did not see coming does not
alarm, while a spike (far off both) does. ``edgegru train`` keeps the channels the others
explain with R^2 >= 0.99 and leaves the rest (a temperature that follows the weather) to the
forecaster alone. At the start of a stream the missing earlier rows are the first row itself.

The drift test catches a slow drift on a channel the others explain only roughly (vibration:
the load sets its level, but turbulence and bearing wear move it too, R^2 about 0.97): its
consistency residual ``q_c`` wanders too much from row to row for the consistency term, but a
sensor drifting off by several sigma over a few hundred rows moves its average. ``b_c`` is the
residual's slow baseline (time constant ``1 / baseline_smoothing`` rows, a thousand: it follows
normal wear, 30-50 times slower than the drifts it is meant to catch; over the first rows of a
stream it is the plain mean of the residuals so far, so it starts where the machine is). ``u_c``
averages the residual's departure from it over about ``2 / smoothing`` rows (a hundred), which
beats down the turbulence; ``v_c`` over a few rows. The term counts only while both are off in
the same direction, and then as the smaller one (``std_c`` and ``fast_std_c`` are their spreads
on normal data): the slow average says the channel has been moving away, the fast one that it
is still away now. So the term rises while a drift builds up and falls within a few rows when
it ends (a recalibrated sensor, or another channel's fault that moved ``q_c`` is over), instead
of lingering for the hundred rows ``u_c`` needs to forget. ``weight`` puts it on the score's
scale as for the consistency term (``edgegru train``: the threshold over the level the term
alone crosses as rarely on the normal rows). ``edgegru train`` gives the test to the channels
the consistency model leaves out whose R^2 is still at least 0.95, and leaves out a channel
whose unexplained part moves on a drift's time scale itself (a temperature that follows the
weather). In the state, ``drift`` holds ``(b_c, u_c, v_c)`` per drift channel.

The whitening undoes the correlation of the residuals on normal data (a load change moves
several channels at once, so their forecast errors are correlated): ``W = Sigma^(-1/2)``,
``Sigma`` the correlation matrix of ``r`` on normal data (ZCA whitening, the symmetric choice,
so that ``e_c`` stays as close as possible to channel c's own ``r_c`` and the contributions keep
naming channels), or conditional: ``W = diag(P)^(-1/2) P``, ``P = Sigma^(-1)``, so that ``e_c`` is
channel c's residual given the other channels' residuals in the same row, standardised (what
``edgegru train`` writes, with ``"combine": "max"``).

First rows: the first row has no forecast, and the forecaster starts from a zero state, so the
first ``warmup`` rows of a stream (rows_seen < warmup) score 0.0 and are never anomalous; the
model still reads them, so its state settles.

Missing values (NaN, or a non-finite number): the channel is replaced by the model's own forecast
for it before the model reads the row. Its residual is therefore 0 (no evidence either way), its
contribution decays, and the state keeps moving as if the value had been the expected one. A row
with every value missing advances the model on its forecast alone.

``score_many(rows)`` gives exactly what ``score_one`` gives row by row (the same arithmetic, in
the same order: the sequence kernel is bitwise identical to the step kernel).

Many streams at once (rows from many devices, interleaved): :class:`GroupScorer` keeps one
independent scorer state per key and scores the rows of all keys through the batched sequence
kernel; each key's scores are exactly those of its own ``AnomalyScorer``.
"""
import hashlib
import json
import math
from collections import namedtuple

import numpy as np

from edgegru._jit import JIT, NO_NRT, njit
from edgegru.errors import ModelFormatError
from edgegru.kernels import entry_point
from edgegru.npzfile import SCORER_STATE, load_state, save_state

_F64 = np.dtype(np.float64)
_ndarray = np.ndarray


# -- the kernels' view of a scorer -------------------------------------------------------------
# Read-only parameters, one named tuple per scoring term, made once from the model file's
# scoring section (a term with no channels is off); and one stream's state, the arrays of
# _state_fields (rows_seen aside, a count passed in and returned), written in place. GroupScorer
# passes the same state with a leading stream axis.
ForecastTerm = namedtuple("ForecastTerm", "inv_residual_std whitening combine_max alpha warmup")
StuckRule = namedtuple("StuckRule", "rows level")            # rows 0: off
ConsistencyTerm = namedtuple("ConsistencyTerm", "channel coef degree inv_std alpha gain")
DriftTerm = namedtuple("DriftTerm", "channel coef degree scale alpha weight")
LevelTerm = namedtuple("LevelTerm", "channel center gain alpha above drop settle")  # drop 0: off
ScoringParams = namedtuple("ScoringParams", "forecast stuck consistency drift level")
StreamState = namedtuple("StreamState", "forecast smoothed last repeats absent history "
                                        "consistency drift level level_shift level_peak "
                                        "level_since")


@njit(cache=True, error_model="numpy", **NO_NRT)
def _score_rows(scores, contrib, Z, F, X, rows_seen, params, state, scratch):
    """Scores (T,) and contributions contrib (T, C) of the normalised rows Z (T, C), raw rows X
    (T, C) (NaN: missing), given the forecasts: state.forecast (C,) before row 0, F[t] after
    row t. params: a ScoringParams; state: a StreamState, updated in place; scratch (3, C):
    work space, so that scoring a row allocates nothing. Returns the new rows_seen."""
    for t in range(Z.shape[0]):
        f = state.forecast if t == 0 else F[t - 1]
        scores[t] = _score_row(contrib[t], Z[t], f, X[t], rows_seen, params, state, scratch)
        rows_seen += 1
    return rows_seen


@njit(cache=True, error_model="numpy", **NO_NRT)
def _score_rows_batch(scores, contrib, Z, F, X, rows_seen, params, state, scratch):
    """_score_rows for B independent streams: scores (B, T), contrib, Z, F and X (B, T, C),
    rows_seen (B,) and every state array with the streams on a leading axis; all but Z, F and
    X updated in place."""
    for b in range(Z.shape[0]):
        rows_seen[b] = _score_rows(scores[b], contrib[b], Z[b], F[b], X[b], rows_seen[b],
                                   params, _stream(state, b), scratch)


@njit(cache=True, error_model="numpy", **NO_NRT)
def _stream(state, b):
    """Stream b's StreamState, views into the batched one."""
    return StreamState(state.forecast[b], state.smoothed[b], state.last[b], state.repeats[b],
                       state.absent[b], state.history[b], state.consistency[b], state.drift[b],
                       state.level[b], state.level_shift[b], state.level_peak[b],
                       state.level_since[b])


@njit(cache=True, error_model="numpy", **NO_NRT)
def _score_row(contrib, z, f, x, rows_seen, p, s, scratch):
    """The score of one row: z (C,) normalised, f (C,) its forecast, x (C,) raw; writes its
    contributions (C,). The state terms move on every row, the score counts from the warm-up."""
    gap, returning = _dropouts(s.absent, x, p.forecast.warmup)
    _count_repeats(s.last, s.repeats, x)
    history = s.history
    for j in range(history.shape[0]):       # no earlier row yet: this one stands in for it
        for c in range(z.shape[0]):
            if np.isnan(history[j, c]):
                history[j, c] = z[c]
    q = scratch[2]                          # this row's consistency residual, NaN: none
    q[:] = np.nan
    if not gap:                             # the regressions read every channel
        _consistency_update(q, z, history, p.consistency, s.consistency)
        _drift_update(z, history, rows_seen, p.drift, s.drift)
    _level_update(s.level, z, x, p.level.channel, p.level.center, s.level_shift, p.level.alpha)
    for j in range(history.shape[0] - 1, 0, -1):
        for c in range(z.shape[0]):
            history[j, c] = history[j - 1, c]
    if history.shape[0] > 0:
        for c in range(z.shape[0]):
            history[0, c] = z[c]
    if rows_seen < p.forecast.warmup:
        for c in range(z.shape[0]):
            contrib[c] = 0.0 if s.absent[c] <= 0 else np.nan
        return 0.0
    _forecast_term(contrib, z, f, q, returning, p.forecast, s.smoothed, scratch)
    _consistency_term(contrib, p.consistency, s.consistency)
    _drift_term(contrib, p.drift, s.drift)
    if p.level.channel.shape[0] > 0:        # credited to the channel with the largest share
        stat, i = _level_statistic(s.level, p.level.gain, p.level.channel, s.absent)
        if i >= 0:
            ch = p.level.channel[i]
            contrib[ch] = max(contrib[ch], stat)
        if p.level.drop > 0.0:
            _level_rebaseline(stat, s.level, s.level_shift, s.level_peak, s.level_since, p.level)
    return _total(contrib, p.forecast.combine_max, p.stuck, s.repeats, s.absent)


@njit(cache=True, error_model="numpy", **NO_NRT)
def _dropouts(absent, x, warmup):
    """Count the missing channels of raw row x (C,) in absent (C,): the rows in a row a channel
    has been missing; when it comes back after more than one missing row, minus the rows of
    re-warm-up (the gap's length, at most warmup), counting up to 0 again. Returns (whether a
    channel is missing in this row, whether one is re-warming after a gap)."""
    gap = returning = False
    for c in range(x.shape[0]):
        if np.isfinite(x[c]):
            if absent[c] > 1:               # back after a gap: re-warm as long as it lasted
                absent[c] = -min(absent[c], warmup)
            elif absent[c] < 0:
                absent[c] += 1
            else:
                absent[c] = 0
        else:
            gap = True
            absent[c] = absent[c] + 1 if absent[c] > 0 else 1
        returning = returning or absent[c] < 0
    return gap, returning


@njit(cache=True, error_model="numpy", **NO_NRT)
def _count_repeats(last, repeats, x):
    """The stuck-sensor counts: last (C,) the last finite raw value per channel, repeats (C,)
    how many rows in a row repeated it exactly, from raw row x (C,)."""
    for c in range(x.shape[0]):
        if x[c] == last[c]:
            repeats[c] += 1
        elif np.isfinite(x[c]):             # a missing value neither repeats nor breaks a run
            last[c] = x[c]
            repeats[c] = 0


@njit(cache=True, error_model="numpy", **NO_NRT)
def _consistency_update(q, z, history, cons, mean):
    """q[ch] <- channel ch's standardised consistency residual in row z (C,), for each
    consistency channel; mean (K,) <- its EWMA."""
    for k in range(cons.channel.shape[0]):
        ch = cons.channel[k]
        pred = _regression(z, history, ch, cons.coef[k], cons.degree)
        q[ch] = (z[ch] - pred) * cons.inv_std[k]
        mean[k] = (1.0 - cons.alpha) * mean[k] + cons.alpha * q[ch]


@njit(cache=True, error_model="numpy", **NO_NRT)
def _drift_update(z, history, rows_seen, drift, state):
    """state (J, 3) <- each drift channel's residual baseline, slow and fast averages of its
    departure from it, after row z (C,)."""
    for k in range(drift.channel.shape[0]):
        ch = drift.channel[k]
        pred = _regression(z, history, ch, drift.coef[k], drift.degree)
        qd = (z[ch] - pred) * drift.scale[k, 0]
        a_b = max(drift.alpha[2], 1.0 / (rows_seen + 1.0))     # the plain mean at first
        state[k, 0] = (1.0 - a_b) * state[k, 0] + a_b * qd
        d = qd - state[k, 0]
        state[k, 1] = (1.0 - drift.alpha[0]) * state[k, 1] + drift.alpha[0] * d
        state[k, 2] = (1.0 - drift.alpha[1]) * state[k, 2] + drift.alpha[1] * d


@njit(cache=True, error_model="numpy", **NO_NRT)
def _forecast_term(contrib, z, f, q, returning, term, smoothed, scratch):
    """contrib (C,) <- the forecast term per channel: the EWMA smoothed (C,) of the whitened
    standardised residual of z against f, squared (|e q| on the consistency channels, q (C,)
    not NaN); 0 while re-warming after a gap."""
    C = z.shape[0]
    r = scratch[0]
    e = scratch[1]
    weight = 1.0 if term.combine_max else 1.0 / C
    for c in range(C):
        r[c] = (z[c] - f[c]) * term.inv_residual_std[c]
    if term.whitening.shape[0] == C:
        for c in range(C):                  # e = W r
            acc = 0.0
            for k in range(C):
                acc += term.whitening[c, k] * r[k]
            e[c] = acc
    else:
        for c in range(C):                  # a loop: slice assignment may copy (allocate)
            e[c] = r[c]
    for c in range(C):
        # a channel the others explain: the surprise counts as far as it disagrees with them
        # too (|e q|), else e^2
        e2 = e[c] * e[c] if np.isnan(q[c]) else abs(e[c] * q[c])
        if returning:                       # the state ran on imputed values: warm up again
            e2 = 0.0
        smoothed[c] = (1.0 - term.alpha) * smoothed[c] + term.alpha * e2 * weight
        contrib[c] = smoothed[c]


@njit(cache=True, error_model="numpy", **NO_NRT)
def _consistency_term(contrib, cons, mean):
    """contrib[ch] <- at least gain * mean^2 on each consistency channel."""
    for k in range(cons.channel.shape[0]):
        ch = cons.channel[k]
        contrib[ch] = max(contrib[ch], cons.gain[k] * mean[k] * mean[k])


@njit(cache=True, error_model="numpy", **NO_NRT)
def _drift_term(contrib, drift, state):
    """contrib[ch] <- at least weight * the smaller standardised average squared, on each drift
    channel whose slow and fast averages are off the same way."""
    for k in range(drift.channel.shape[0]):
        ch = drift.channel[k]
        u = state[k, 1] * drift.scale[k, 1]
        v = state[k, 2] * drift.scale[k, 2]
        if u * v > 0.0:
            g = min(abs(u), abs(v))
            contrib[ch] = max(contrib[ch], drift.weight * g * g)


@njit(cache=True, error_model="numpy", **NO_NRT)
def _total(contrib, combine_max, stuck, repeats, absent):
    """The score from the contributions (C,): their sum or largest, with a stuck channel raised
    to stuck.level and a missing one left out (NaN in contrib)."""
    total = 0.0
    for c in range(contrib.shape[0]):
        a = contrib[c]
        if stuck.rows > 0 and repeats[c] >= stuck.rows:
            a = max(a, stuck.level)
        if absent[c] > 0:                   # missing: no evidence, and the output says so
            contrib[c] = np.nan
            continue
        contrib[c] = a
        if combine_max:
            total = max(total, a)
        else:
            total += a
    return total


@njit(cache=True, error_model="numpy", **NO_NRT)
def _level_update(level_mean, z, x, channels, center, shift, alpha):
    """level_mean (L,) <- the EWMA of the normalised row z (C,) less the normal level, center
    (L,) plus shift (L,), on the level channels; a channel whose raw value x (C,) is missing
    keeps its average (a dropout is no evidence either way)."""
    for i in range(channels.shape[0]):
        c = channels[i]
        if np.isfinite(x[c]):
            level_mean[i] = (1.0 - alpha) * level_mean[i] + alpha * (z[c] - center[i] - shift[i])


@njit(cache=True, error_model="numpy", **NO_NRT)
def _level_rebaseline(stat, level_mean, shift, peak, since, term):
    """After a large episode ends, the level it settles at is the new normal: while the level
    statistic stat is above term.above, peak (1,) keeps its largest value; once stat falls below
    peak / term.drop, since (1,) counts the rows, and term.settle rows later (the averages'
    settling time), if stat is still above term.above, shift (L,) takes the averages
    level_mean (L,), which restart from 0."""
    if stat > term.above:
        peak[0] = max(peak[0], stat)
    if since[0] >= 0:
        since[0] += 1
    elif peak[0] > 0.0 and stat < peak[0] / term.drop:
        since[0] = 0
    if since[0] >= term.settle:
        if stat > term.above:
            for i in range(level_mean.shape[0]):
                shift[i] += level_mean[i]
                level_mean[i] = 0.0
        peak[0] = 0.0
        since[0] = -1


@njit(cache=True, error_model="numpy", **NO_NRT)
def _level_statistic(level_mean, gain, channels, absent):
    """Hotelling's T^2 of the averages, m' G m with G = gain (L, L), and the index of the
    channel with the largest share m_i (G m)_i of it among those present (absent[channels[i]]
    <= 0; -1 if none is)."""
    L = level_mean.shape[0]
    total = 0.0
    best, best_share = -1, -np.inf
    for i in range(L):
        acc = 0.0
        for j in range(L):
            acc += gain[i, j] * level_mean[j]
        share = level_mean[i] * acc
        total += share
        if share > best_share and absent[channels[i]] <= 0:
            best, best_share = i, share
    return total, best


@njit(cache=True, error_model="numpy", **NO_NRT)
def _regression(z, history, ch, coef, degree):
    """The consistency regression's prediction of channel ch: coef (P,) . features of the
    other channels in z (C,) (this row) and history (lags - 1, C) (the rows before, newest
    first): 1, then per lag, per other channel, its powers 1..degree."""
    C = z.shape[0]
    pred = coef[0]
    i = 1
    for j in range(history.shape[0] + 1):
        for c in range(C):
            if c != ch:
                v = z[c] if j == 0 else history[j - 1, c]
                p = 1.0
                for _ in range(degree):
                    p *= v
                    pred += coef[i] * p
                    i += 1
    return pred


MAX_WARMUP = 1_000_000       # rows; warm-up and stuck_rows beyond this are a corrupt file
FORECASTS = ("absolute", "delta")
# The model file's "scoring" section: what its keys mean. A section without "version" is
# version 1 (every file edgegru has written): a later one this edgegru cannot read is refused
# by name rather than scored wrong.
SCORING_VERSION = 1


def forecasts(output, Z, forecast):
    """The forecasts of the next rows from the model's output (T, C) after rows Z (T, C):
    the output itself ("absolute"), or Z plus it ("delta": the model predicts the step, so a
    sensor that settles outside the range seen in training is still forecast from where it
    is). Adds in place for "delta" and returns the output array."""
    if forecast == "delta":
        output += Z
    return output


def _whole_rows(value, name, what="a whole number from 1"):
    """value as an int if it is a whole number from 1 to MAX_WARMUP, else a ModelFormatError
    naming the field (``what`` says what it must be, up to the bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= MAX_WARMUP:
        raise ModelFormatError(f"{name} must be {what} to {MAX_WARMUP}, got {value!r}")
    return int(value)


def valid_threshold(value, name="threshold"):
    """value as a float if it is a usable anomaly threshold (finite and positive), else a
    ModelFormatError naming it: a NaN threshold would never flag anything."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(t) and t > 0.0):
        raise ModelFormatError(f"{name} must be finite and positive, got {value!r}")
    return t


class AnomalyScorer:
    """Score sensor rows one at a time or in bulk; high means anomalous.

    >>> scorer = AnomalyScorer.load("weights/model.npz")  # doctest: +SKIP
    >>> s = scorer.score_one({"temperature": 41.2, "vibration": 2.1, "current": 11.0,
    ...                       "pressure": 3.9})                      # doctest: +SKIP
    >>> flag = s > scorer.threshold                                  # doctest: +SKIP
    """

    def __init__(self, model, columns, mean, std, residual_std, threshold, smoothing=0.3,
                 warmup=1, combine="sum", whitening=None, stuck_rows=None, consistency=None,
                 level=None, forecast="absolute"):
        C = len(columns)
        if model.input_size != C or model.output_size != C:
            raise ModelFormatError(
                f"a forecaster for {C} columns needs input_size == output_size == {C}, the model "
                f"has input_size {model.input_size} and output_size {model.output_size}")
        if model.config.bidirectional:
            raise ModelFormatError("a forecaster cannot be bidirectional: it must not see the "
                                   "future")
        if model.config.hidden_sizes:
            raise ModelFormatError("a forecaster's layers must have one width (this model's "
                                   f"are {list(model.config.hidden_sizes)})")
        if model.config.head_on != "all":
            raise ModelFormatError("a forecaster forecasts every step: this model's head reads "
                                   "the last step only (head_on='last')")
        self.model = model
        self.columns = list(columns)
        self.mean = _vector(mean, C, "mean")
        self.std = _vector(std, C, "std", positive=True)
        self.residual_std = _vector(residual_std, C, "residual_std", positive=True)
        self._threshold = valid_threshold(threshold)
        self.smoothing = float(smoothing)
        if not 0.0 < self.smoothing <= 1.0:
            raise ModelFormatError(f"smoothing must be in (0, 1], got {self.smoothing}")
        self.warmup = _whole_rows(warmup, "warmup", "a whole number of rows from 1 (the first "
                                  "row has no forecast)")
        if combine not in ("sum", "max"):
            raise ModelFormatError(f"combine must be 'sum' or 'max', got {combine!r}")
        self.combine = combine
        self.whitening = None if whitening is None else _matrix(whitening, (C, C), "whitening")
        self.stuck_rows = None if stuck_rows is None else _whole_rows(stuck_rows, "stuck_rows")
        self.consistency = _consistency(consistency, self.columns)
        self.forecast = forecast
        if forecast not in FORECASTS:
            raise ModelFormatError(f"forecast must be {' or '.join(FORECASTS)}, got "
                                   f"{forecast!r}")
        self.level = _level(level, self.columns)
        self._lags = int(self.consistency["lags"]) if self.consistency else 1
        self._params = self._scoring_params()
        self._mean32 = self.mean.astype(np.float32)
        self._inv_std = (1.0 / self.std).astype(np.float32)
        self._index = {name: i for i, name in enumerate(self.columns)}
        # the stream's state beyond the GRU's (_state_fields), made once; the kernels write the
        # arrays in place, rows_seen comes back from them as a count
        self._rows_seen = 0
        for name, (shape, dtype, fresh) in _state_fields(self).items():
            if name != "rows_seen":
                setattr(self, _STATE_ATTRIBUTES[name], np.full(shape, fresh, dtype))
        self._stream = _stream_state(self)
        # buffers for score_one, allocated once: the raw row, the normalised one (the GRU's
        # input), the kernels' work space, and the last row's contributions
        self._x0 = np.zeros(C, np.float64)
        self._z0 = np.zeros(C, np.float32)
        self._scratch = np.zeros((3, C), np.float64)
        self._contributions = np.zeros(C, np.float64)
        self._score_one_kernel = None
        self._row_shape = (C,)

    @classmethod
    def load(cls, path, backend=None):
        """A scorer from a model file: ``from_model(edgegru.load(path), source=path)``."""
        from edgegru.formats import load     # formats reads files into models; it never scores
        return cls.from_model(load(path, backend=backend), source=str(path))

    @classmethod
    def from_model(cls, model, source="the model"):
        pre, sc = model.meta.get("preprocessing"), model.meta.get("scoring")
        if not isinstance(pre, dict) or not isinstance(sc, dict):
            raise ModelFormatError(
                f"{source}: not a scoring model (it needs 'preprocessing' and 'scoring' sections "
                f"in its metadata, as edgegru train writes them)")
        version = sc.get("version", 1)      # the sections written before it had a version: 1
        if version != SCORING_VERSION:
            raise ModelFormatError(
                f"{source}: its scoring section is version {version!r}; this edgegru reads "
                f"version {SCORING_VERSION}: use the edgegru that trained it, or train the model "
                f"again with this one (edgegru train)")
        try:
            return cls(model, pre["columns"], pre["mean"], pre["std"], sc["residual_std"],
                       sc["threshold"], sc.get("smoothing", 0.3), sc.get("warmup", 1),
                       sc.get("combine", "sum"), sc.get("whitening"), sc.get("stuck_rows"),
                       sc.get("consistency"), sc.get("level"), sc.get("forecast", "absolute"))
        except KeyError as exc:
            raise ModelFormatError(f"{source}: scoring metadata lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{source}: bad scoring metadata ({exc})") from None

    @property
    def num_channels(self):
        return len(self.columns)

    @property
    def threshold(self):
        """Scores above it are anomalies; a stuck sensor scores at least twice it."""
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold = valid_threshold(value)
        if hasattr(self, "_params"):
            self._params = self._params._replace(stuck=StuckRule(self.stuck_rows or 0,
                                                                 2.0 * self._threshold))

    def _scoring_params(self):
        """The kernels' ScoringParams, from the checked settings."""
        index = self.columns.index
        cons = self.consistency or {"channels": [], "degree": 1, "coef": np.zeros((0, 1)),
                                    "residual_std": np.zeros(0), "smoothing": 1.0,
                                    "ewma_std": np.zeros(0), "weight": 1.0}
        P = cons["coef"].shape[1]
        drift = cons.get("drift") or {"channels": [], "coef": np.zeros((0, P)),
                                      "residual_std": np.zeros(0), "std": np.zeros(0),
                                      "fast_std": np.zeros(0), "smoothing": 1.0,
                                      "fast_smoothing": 1.0, "baseline_smoothing": 1.0,
                                      "weight": 1.0}
        level = self.level or {"channels": [], "smoothing": 1.0, "precision": np.zeros((0, 0)),
                               "center": np.zeros(0), "weight": 1.0}
        J = len(drift["channels"])
        return ScoringParams(
            ForecastTerm(1.0 / self.residual_std,
                         np.zeros((0, 0)) if self.whitening is None else self.whitening,
                         self.combine == "max", self.smoothing, self.warmup),
            StuckRule(self.stuck_rows or 0, 2.0 * self.threshold),
            ConsistencyTerm(_channels(cons["channels"], index), cons["coef"],
                            int(cons["degree"]), 1.0 / cons["residual_std"],
                            float(cons["smoothing"]),
                            cons["weight"] / cons["ewma_std"] ** 2),
            DriftTerm(_channels(drift["channels"], index), drift["coef"], int(cons["degree"]),
                      np.ascontiguousarray(1.0 / np.column_stack(
                          [drift["residual_std"], drift["std"], drift["fast_std"]]
                      ).reshape(J, 3)),
                      np.array([drift["smoothing"], drift["fast_smoothing"],
                                drift["baseline_smoothing"]], np.float64),
                      float(drift["weight"])),
            LevelTerm(_channels(level["channels"], index), level["center"],
                      np.ascontiguousarray(level["weight"] * level["precision"]),
                      float(level["smoothing"]), *_rebaseline_rule(level)))

    # -- scoring --------------------------------------------------------------------------
    def score_one(self, row):
        """Score one row (1-D array in column order, or {column: value}); returns a float."""
        if not (type(row) is _ndarray and row.dtype is _F64 and row.shape == self._row_shape):
            row = self._row_array(row)
        kernel = self._score_one_kernel or self._bind_score_one()
        score = kernel(self._contributions, self._z0, self._x0, row, self._rows_seen,
                       self._mean32, self._inv_std, self._params, self._stream, self._scratch)
        self._rows_seen += 1
        self.model.step(self._z0, out=self._forecast)
        forecasts(self._forecast, self._z0, self.forecast)
        return score

    def _bind_score_one(self):
        # Every array score_one passes is the scorer's own, made once and only ever written in
        # place, and the row a float64 array of any strides, so the kernel's entry point for
        # their types is looked up once, not typed on each call (typing the nested tuples
        # would be about half of the call).
        args = (self._contributions, self._z0, self._x0, np.zeros(4)[::2], self._rows_seen,
                self._mean32, self._inv_std, self._params, self._stream, self._scratch)
        self._score_one_kernel = entry_point(_score_one_row, args) if JIT \
            else _score_one_row_numpy
        return self._score_one_kernel

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
            F = forecasts(self.model.run(Z[start:stop]), Z[start:stop], self.forecast)
            self._rows_seen = _score_rows(scores[start:stop], contrib[start:stop],
                                          Z[start:stop], F, X[start:stop], self._rows_seen,
                                          self._params, self._stream, self._scratch)
            self._forecast[:] = F[-1]
            start = stop
        if T:
            self._contributions[:] = contrib[-1]
        return (scores, contrib) if explain else scores

    @property
    def contributions(self):
        """Per-channel contributions to the last score (they add up to it with combine "sum";
        the largest is it with "max")."""
        return self._contributions.copy()

    # -- state ----------------------------------------------------------------------------
    def reset(self):
        """Forget the stream: zero GRU state, no forecast, warm-up starts again."""
        self.model.reset()
        self._contributions[:] = 0.0
        self._rows_seen = 0
        for name, (_, _, fresh) in _state_fields(self).items():
            if name != "rows_seen":
                self._state_array(name)[...] = fresh

    @property
    def state(self):
        """Everything needed to resume a stream exactly: a dict of arrays (no objects), the
        GRU's ``hidden`` state and the fields of :func:`_state_fields`."""
        state = {"hidden": self.model.state, "rows_seen": np.int64(self._rows_seen)}
        for name in _state_fields(self):
            if name != "rows_seen":
                state[name] = self._state_array(name).copy()
        return state

    @state.setter
    def state(self, value):
        state = _checked_state(value, _state_fields(self), self.model.state.shape)
        self.model.state = state["hidden"]
        self._rows_seen = int(state["rows_seen"])
        for name in _state_fields(self):
            if name != "rows_seen":
                self._state_array(name)[...] = state[name]

    def _state_array(self, name):
        """The array behind state field ``name`` (the kernels write these in place)."""
        return getattr(self, _STATE_ATTRIBUTES[name])

    @property
    def fingerprint(self):
        """A short hash of everything that makes the scores and the state evolve: weights,
        config, columns, scaling and every scoring term's settings (not the threshold, which
        only decides). A saved state resumes only under the same fingerprint."""
        h = hashlib.sha256()
        model = self.model
        h.update(repr(model.config).encode())
        for name in sorted(model.weights.arrays):
            h.update(name.encode())
            h.update(np.ascontiguousarray(model.weights.arrays[name], np.float32).tobytes())
        h.update(json.dumps([self.columns, self.mean.tolist(), self.std.tolist(),
                             self.residual_std.tolist(), self.smoothing, self.warmup]).encode())
        if self.combine != "sum" or self.whitening is not None:
            h.update(json.dumps([self.combine, None if self.whitening is None
                                 else self.whitening.tolist()]).encode())
        if self.stuck_rows is not None:
            h.update(json.dumps(["stuck_rows", self.stuck_rows]).encode())
        # the terms with a state of their own: a state made under other settings resumes wrong
        for name in ("consistency", "level"):
            section = getattr(self, name)
            if section is not None:
                h.update(json.dumps([name, section], sort_keys=True,
                                    default=np.ndarray.tolist).encode())
        if self.forecast != "absolute":
            h.update(json.dumps(["forecast", self.forecast]).encode())
        return h.hexdigest()[:16]

    def save_state(self, path):
        """Write :attr:`state` to ``path`` (.npz, with a version and :attr:`fingerprint`),
        atomically: a power cut leaves the old file or the new one, never half of one."""
        save_state(path, SCORER_STATE, self.fingerprint, self.state)

    def load_state(self, path):
        """Resume from a file :meth:`save_state` wrote; a file of another model or calibration,
        another version or no state file at all raises a ValueError that says so."""
        self.state = load_state(path, SCORER_STATE, self.fingerprint)[0]

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
        return _normalised(x, self._mean32, self._inv_std)

    @staticmethod
    def _impute(z, forecast):
        # a missing (non-finite) value becomes the forecast for it: residual 0, state moves on
        bad = ~np.isfinite(z)
        if bad.any():
            z[bad] = forecast[bad]


class GroupScorer:
    """Independent streams by key (one per device) over one model: the batched path.

    ``score_many(keys, rows)`` scores interleaved rows; each key's rows get exactly the scores
    its own :class:`AnomalyScorer` would give them (same state rules, warm-up and imputation).
    A key seen for the first time starts from a fresh state. Keys are any hashable values;
    ``state`` stores them as strings (so give strings if you restore states).

    >>> scorer = AnomalyScorer.load("weights/model.npz")  # doctest: +SKIP
    >>> group = GroupScorer(scorer)                                  # doctest: +SKIP
    >>> scores = group.score_many(["pump-1", "pump-2", "pump-1"], rows)   # doctest: +SKIP

    How: the rows of one call are gathered per key; keys with the same number of rows form one
    batch ``(B, n, C)`` for ``Model.run(..., h0=, return_state=True)``, so a round-robin stream
    of B devices costs one batched kernel call. A key whose rows (after its first) hold a missing
    value goes through ``AnomalyScorer.score_many`` instead, which imputes row by row. The
    wrapped scorer's own model state is used as scratch on that path. ``threads=N`` splits each
    batch over N threads (``Model.run``'s), with the same scores.
    """

    def __init__(self, scorer, threads=1):
        self.scorer = scorer
        self.threads = threads              # Model.run's: a batch of streams split over threads
        self.keys = []                      # index -> key
        self._index = {}                    # key -> index
        self._fields = _state_fields(scorer)
        # one array per state field with the streams on a leading axis, grown by doubling
        self._hidden = np.zeros((0,) + scorer.model.state.shape, np.float32)   # (K, L*D, H)
        for name, (shape, dtype, fresh) in self._fields.items():
            setattr(self, _STATE_ATTRIBUTES[name], np.full((0,) + shape, fresh, dtype))

    @property
    def threshold(self):
        return self.scorer.threshold

    def __len__(self):
        return len(self.keys)

    def score_many(self, keys, rows, explain=False):
        """Scores of rows (T, C), row t belonging to stream ``keys[t]``; returns (T,) scores,
        or with ``explain=True`` ``(scores (T,), contributions (T, C))``."""
        sc = self.scorer
        X = _as_rows(rows, sc.num_channels)
        T, C = X.shape
        if len(keys) != T:
            raise ValueError(f"keys has {len(keys)} entries for {T} rows")
        scores = np.zeros(T, np.float64)
        contrib = np.zeros((T, C), np.float64)
        if T == 0:
            return (scores, contrib) if explain else scores
        ids = np.fromiter((self._id(k) for k in keys), np.int64, T)
        order = np.argsort(ids, kind="stable")          # rows grouped by key, in stream order
        cuts = np.flatnonzero(np.diff(ids[order])) + 1
        Z = sc._normalise(X)
        finite = np.isfinite(Z).all(axis=1)
        batches = {}                                    # n rows -> [(key id, row positions)]
        for pos in np.split(order, cuts):
            k = int(ids[pos[0]])
            if finite[pos[1:]].all():
                batches.setdefault(len(pos), []).append((k, pos))
            else:
                scores[pos], contrib[pos] = self._score_alone(k, X[pos])
        for members in batches.values():
            ks = np.array([k for k, _ in members])
            P = np.stack([pos for _, pos in members])   # (B, n) row positions
            Zb = Z[P]                                    # (B, n, C), a copy
            # the streams' states, copies (fancy indexing) written back after scoring
            state = StreamState(*(a[ks] for a in _stream_state(self)))
            first = Zb[:, 0]
            bad = ~np.isfinite(first)
            first[bad] = state.forecast[bad]             # impute as AnomalyScorer does
            F, h_n = sc.model.run(Zb, h0=self._hidden[ks].transpose(1, 0, 2),
                                  return_state=True, threads=self.threads)
            F = forecasts(F, Zb, sc.forecast)
            rows_seen = self._rows_seen[ks]
            s_b = np.empty(P.shape, np.float64)
            c_b = np.empty(P.shape + (C,), np.float64)
            _score_rows_batch(s_b, c_b, Zb, F, X[P], rows_seen, sc._params, state,
                              sc._scratch)
            for a, value in zip(_stream_state(self), state):
                a[ks] = value
            self._hidden[ks] = h_n.transpose(1, 0, 2)
            self._forecast[ks] = F[:, -1]
            self._rows_seen[ks] = rows_seen
            scores[P], contrib[P] = s_b, c_b
        return (scores, contrib) if explain else scores

    def _score_alone(self, k, X):
        sc = self.scorer
        sc.state = {"hidden": self._hidden[k],
                    **{name: getattr(self, _STATE_ATTRIBUTES[name])[k] for name in self._fields}}
        result = sc.score_many(X, explain=True)
        state = sc.state
        self._hidden[k] = state["hidden"]
        for name in self._fields:
            getattr(self, _STATE_ATTRIBUTES[name])[k] = state[name]
        return result

    def _id(self, key):
        k = self._index.get(key)
        if k is None:
            k = self._index[key] = len(self.keys)
            self.keys.append(key)
            if k == len(self._rows_seen):               # grow the state arrays (doubling)
                n = max(8, 2 * k)
                self._hidden = _grow(self._hidden, n)
                for name, (_, _, fresh) in self._fields.items():
                    attribute = _STATE_ATTRIBUTES[name]
                    setattr(self, attribute, _grow(getattr(self, attribute), n, fresh))
        return k

    def reset(self):
        """Forget every stream."""
        self.__init__(self.scorer, self.threads)

    @property
    def state(self):
        """All streams' states as a dict of arrays: ``keys`` (K,) str, ``hidden``
        (K, layers, H), and each field of :func:`_state_fields` with K streams on a leading
        axis (``forecast`` (K, C), ``rows_seen`` (K,), ...)."""
        K = len(self.keys)
        state = {"keys": np.array(self.keys, dtype=str).reshape(K),
                 "hidden": self._hidden[:K].copy()}
        for name in self._fields:
            state[name] = getattr(self, _STATE_ATTRIBUTES[name])[:K].copy()
        return state

    @state.setter
    def state(self, value):
        try:
            keys = [str(k) for k in np.asarray(value["keys"]).reshape(-1)]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"group state needs keys ({exc})") from None
        K = len(keys)
        if len(set(keys)) != K:
            raise ValueError("group state repeats a key")
        state = _checked_state(value, self._fields, self._hidden.shape[1:], lead=(K,))
        self.reset()
        for key in keys:
            self._id(key)
        self._hidden[:K] = state["hidden"]
        for name in self._fields:
            getattr(self, _STATE_ATTRIBUTES[name])[:K] = state[name]


# the attribute behind each state field, in AnomalyScorer and (with a leading stream axis) in
# GroupScorer
_STATE_ATTRIBUTES = {"forecast": "_forecast", "smoothed": "_smoothed", "rows_seen": "_rows_seen",
                     "last": "_last", "repeats": "_repeats", "absent": "_absent",
                     "history": "_history", "consistency": "_cons_mean",
                     "drift": "_drift_state", "level": "_level_mean",
                     "level_shift": "_level_shift", "level_peak": "_level_peak",
                     "level_since": "_level_since"}
_REQUIRED_STATE = ("hidden", "forecast", "smoothed", "rows_seen")


def _state_fields(scorer):
    """A stream's scoring state beyond the GRU's: name -> (shape, dtype, value for a fresh
    stream). A state saved before a field existed loads with that value (no run, gap, history
    or average under way)."""
    C, p = scorer.num_channels, scorer._params
    return {
        "forecast": ((C,), np.float32, 0.0),          # of the next row, normalised
        "smoothed": ((C,), np.float64, 0.0),          # the forecast term's EWMA per channel
        "rows_seen": ((), np.int64, 0),
        "last": ((C,), np.float64, np.nan),           # stuck sensors: last raw value
        "repeats": ((C,), np.int64, 0),               # ... and how many rows repeated it
        "absent": ((C,), np.int64, 0),                # rows missing in a row (< 0: re-warming)
        "history": ((scorer._lags - 1, C), np.float64, np.nan),   # consistency: rows before
        "consistency": ((len(p.consistency.channel),), np.float64, 0.0),
        "drift": ((len(p.drift.channel), 3), np.float64, 0.0),   # baseline, slow, fast
        "level": ((len(p.level.channel),), np.float64, 0.0),
        "level_shift": ((len(p.level.channel),), np.float64, 0.0),  # of the normal level
        "level_peak": ((1,), np.float64, 0.0),         # of the episode under way, 0: none
        "level_since": ((1,), np.int64, -1),           # rows since it fell, -1: it has not
    }


def _checked_state(value, fields, hidden_shape, lead=()):
    """A state dict checked against fields (see :func:`_state_fields`), each with the leading
    axes ``lead``; absent optional fields filled in. Raises ValueError naming the field."""
    try:
        state = {"hidden": np.asarray(value["hidden"])}
        for name, (shape, dtype, fresh) in fields.items():
            if name in value:
                state[name] = np.asarray(value[name])
            elif name in _REQUIRED_STATE:
                raise KeyError(name)
            else:
                state[name] = np.full(lead + shape, fresh, dtype)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"scorer state needs {', '.join(_REQUIRED_STATE)} ({exc})") from None
    if state["hidden"].shape != lead + tuple(hidden_shape):
        raise ValueError(f"scorer state does not fit this model: hidden has shape "
                         f"{state['hidden'].shape}, the model's is {lead + tuple(hidden_shape)}")
    for name, (shape, dtype, _) in fields.items():
        a = state[name]
        if a.shape != lead + shape:
            raise ValueError(f"scorer state does not fit this model: {name} has shape "
                             f"{a.shape}, expected {lead + shape}")
        integers = np.dtype(dtype).kind == "i"
        if (a.dtype.kind not in "iu") if integers else (a.dtype.kind != "f"):
            raise ValueError(f"scorer state: {name} must be "
                             f"{'integers' if integers else 'floats'}")
        if name in ("rows_seen", "repeats") and (a < 0).any():
            raise ValueError(f"scorer state: {name} must be non-negative integers")
    return state


@njit(cache=True, error_model="numpy", **NO_NRT)
def _score_one_row(contrib, z, x, row, rows_seen, mean, inv_std, params, state, scratch):
    """score_one in one call: the raw row (C,), float64 of any strides, copied to x (C,),
    normalised into z (C,) (_normalise_row), then scored as _score_rows scores it, writing
    its contributions (C,) and moving the state on. Returns the score."""
    for c in range(x.shape[0]):
        x[c] = row[c]
    _normalise_row(z, x, mean, inv_std, state.forecast)
    return _score_row(contrib, z, state.forecast, x, rows_seen, params, state, scratch)


@njit(cache=True, error_model="numpy", **NO_NRT)
def _normalise_row(z, x, mean, inv_std, forecast):
    """z (C,) float32 <- the raw row x (C,) normalised with mean and inv_std (C,) float32, in
    float32 as _normalised does; a missing (non-finite) value becomes its forecast (C,)."""
    for c in range(x.shape[0]):
        v = (np.float32(x[c]) - mean[c]) * inv_std[c]
        z[c] = v if np.isfinite(v) else forecast[c]


def _normalised(x, mean, inv_std):
    """Rows x (..., C) normalised in float32 (a value beyond float32 becomes inf: missing)."""
    with np.errstate(over="ignore"):
        return (x.astype(np.float32) - mean) * inv_std


def _score_one_row_numpy(contrib, z, x, row, rows_seen, mean, inv_std, params, state, scratch):
    """_score_one_row without numba, NumPy normalising the row (a loop in Python would be
    slower, and warn of values beyond float32)."""
    x[:] = row
    z[:] = _normalised(x, mean, inv_std)
    AnomalyScorer._impute(z, state.forecast)
    return _score_row(contrib, z, state.forecast, x, rows_seen, params, state, scratch)


def _stream_state(scorer):
    """The scorer's StreamState: views of its own state arrays, which the kernels write in
    place (a GroupScorer's: every stream's, on a leading axis)."""
    return StreamState(*(getattr(scorer, _STATE_ATTRIBUTES[name]) for name in StreamState._fields))


def _channels(names, index):
    return np.array([index(n) for n in names], np.int64)


def _is_section(value, what):
    """Whether the metadata holds section ``what`` (None: it does not); a ModelFormatError if it
    is anything but a dict."""
    if value is None:
        return False
    if not isinstance(value, dict):
        raise ModelFormatError(f"scoring metadata: {what} must be a section (a dict)")
    return True


def _distinct_columns(channels, columns, what):
    """A ModelFormatError unless section ``what``'s channels are distinct columns."""
    if len(set(channels)) != len(channels) or not set(channels) <= set(columns):
        raise ModelFormatError(f"scoring metadata: {what} channels {channels} must be distinct "
                               f"columns of the model ({', '.join(columns)})")


def _consistency(cons, columns):
    """The "consistency" metadata section, checked (None: no consistency model)."""
    if not _is_section(cons, "consistency"):
        return None
    try:
        channels = [str(n) for n in cons["channels"]]
        lags, degree = cons["lags"], cons["degree"]
        alpha, weight = float(cons["smoothing"]), float(cons["weight"])
        coef, residual_std, ewma_std = cons["coef"], cons["residual_std"], cons["ewma_std"]
    except KeyError as exc:
        raise ModelFormatError(f"scoring metadata: consistency lacks {exc}") from None
    K, C = len(channels), len(columns)
    for name, v in (("lags", lags), ("degree", degree)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelFormatError(f"scoring metadata: consistency {name} must be a positive "
                                   f"integer, got {v!r}")
    if not 0.0 < alpha <= 1.0 or not (math.isfinite(weight) and weight > 0):
        raise ModelFormatError("scoring metadata: consistency smoothing must be in (0, 1] and "
                               "weight positive")
    _distinct_columns(channels, columns, "consistency")
    P = 1 + lags * (C - 1) * degree
    a = _matrix(coef, (K, P), "consistency coef")
    return {"channels": channels, "lags": lags, "degree": degree, "coef": a,
            "residual_std": _vector(residual_std, K, "consistency residual_std", positive=True),
            "ewma_std": _vector(ewma_std, K, "consistency ewma_std", positive=True),
            "smoothing": alpha, "weight": weight,
            "drift": _drift(cons.get("drift"), columns, P)}


def _drift(drift, columns, P):
    """The consistency section's "drift" subsection, checked (None: no drift test)."""
    if not _is_section(drift, "consistency drift"):
        return None
    try:
        channels = [str(n) for n in drift["channels"]]
        alphas = [float(drift[k]) for k in ("smoothing", "fast_smoothing",
                                             "baseline_smoothing")]
        weight = float(drift["weight"])
        coef, spreads = drift["coef"], [drift[k] for k in ("residual_std", "std", "fast_std")]
    except KeyError as exc:
        raise ModelFormatError(f"scoring metadata: consistency drift lacks {exc}") from None
    J = len(channels)
    if not all(0.0 < a <= 1.0 for a in alphas) or not (math.isfinite(weight) and weight > 0):
        raise ModelFormatError("scoring metadata: consistency drift smoothing, fast_smoothing "
                               "and baseline_smoothing must be in (0, 1] and weight positive")
    _distinct_columns(channels, columns, "consistency drift")
    out = {"channels": channels, "coef": _matrix(coef, (J, P), "consistency drift coef"),
           "smoothing": alphas[0], "fast_smoothing": alphas[1],
           "baseline_smoothing": alphas[2], "weight": weight}
    for name, v in zip(("residual_std", "std", "fast_std"), spreads):
        out[name] = _vector(v, J, f"consistency drift {name}", positive=True)
    return out


def _level(level, columns):
    """The "level" metadata section, checked (None: no level test)."""
    if not _is_section(level, "level"):
        return None
    try:
        channels = [str(n) for n in level["channels"]]
        alpha, weight = float(level["smoothing"]), float(level["weight"])
        precision, center = level["precision"], level["center"]
    except KeyError as exc:
        raise ModelFormatError(f"scoring metadata: level lacks {exc}") from None
    except (TypeError, ValueError):
        raise ModelFormatError("scoring metadata: level smoothing and weight must be "
                               "numbers") from None
    L = len(channels)
    if not 0.0 < alpha <= 1.0 or not (math.isfinite(weight) and weight > 0):
        raise ModelFormatError("scoring metadata: level smoothing must be in (0, 1] and weight "
                               "positive")
    _distinct_columns(channels, columns, "level")
    out = {"channels": channels, "smoothing": alpha, "weight": weight,
           "center": _vector(center, L, "level center"),
           "precision": _matrix(precision, (L, L), "level precision")}
    if "rebaseline" in level:                   # absent: the level test never re-baselines
        out["rebaseline"] = _rebaseline(level["rebaseline"])
    return out


def _rebaseline(rule):
    """The level section's "rebaseline" rule, checked: {"above", "drop", "settle"}."""
    if not _is_section(rule, "level rebaseline"):
        rule = {}
    try:
        above, drop, settle = float(rule["above"]), float(rule["drop"]), rule["settle"]
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError("scoring metadata: level rebaseline needs numbers above, drop "
                               "and settle") from None
    settle = _whole_rows(settle, "level rebaseline settle")
    if not (math.isfinite(above) and above > 0 and math.isfinite(drop) and drop > 1):
        raise ModelFormatError(f"scoring metadata: level rebaseline above must be positive and "
                               f"drop above 1, got {above} and {drop}")
    return {"above": above, "drop": drop, "settle": settle}


def _rebaseline_rule(level):
    """LevelTerm's (above, drop, settle) from a checked level section; drop 0: off."""
    rule = level.get("rebaseline")
    return (0.0, 0.0, 1) if rule is None else (rule["above"], rule["drop"], rule["settle"])


def _matrix(values, shape, name):
    """A finite float64 matrix of this shape from metadata (a list of lists)."""
    rows, cols = shape
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFormatError(f"scoring metadata: {name} must be a {rows} x {cols} list of "
                               f"lists of numbers") from None
    if a.size == 0 and rows == 0:
        return a.reshape(shape)
    if a.shape != shape or not np.isfinite(a).all():
        raise ModelFormatError(f"scoring metadata: {name} must be a finite {rows} x {cols} "
                               f"matrix, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _grow(a, n, fill=0):
    out = np.full((n,) + a.shape[1:], fill, a.dtype)
    out[:len(a)] = a
    return out


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
    return np.ascontiguousarray(X)
