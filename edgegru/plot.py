"""A picture of a scored stream: ``edgegru plot`` (and ``edgegru train --plot``) as a library.

>>> from edgegru.plot import plot_csv
>>> plot_csv("scores.png", "examples/sensor.csv",
...          scorer=edgegru.AnomalyScorer.load("weights/model.npz"))      # doctest: +SKIP

One figure, top to bottom: the channels, each normalised with the model's mean and standard
deviation (so that they share an axis, and a value far from 0 is far from normal), in one panel
or one each; the score on a log axis with the threshold as a dashed line; with ``explain``, each
channel's contribution to the score, stacked. Rows whose score is above the threshold are
shaded in every panel. The scores are those of the whole file from its first row, whatever
part is shown (``start``/``stop``), so that they are those ``edgegru run`` gives. matplotlib
(the ``[plot]`` extra) renders with its Agg backend, no display needed; the file's extension
says the format (.png, .svg, .pdf).
"""
import csv
import warnings

import numpy as np

from edgegru.errors import EdgeGRUError

FIGSIZE = (12.0, 8.0)        # inches; at DPI 100: 1200 x 800 pixels
DPI = 100


def pyplot():
    """matplotlib.pyplot on the Agg backend, or an error naming the extra that installs it."""
    try:
        import matplotlib
    except ImportError:
        raise EdgeGRUError("edgegru plot needs matplotlib: pip install 'edgegru[plot]'") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_scores(path, n_rows):
    """Scores, anomaly flags and contributions ({channel: (T,)}) from ``edgegru run``'s CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeGRUError(f"{path}: cannot read the scores ({getattr(exc, 'strerror', exc)})") \
            from None
    if not rows or "score" not in rows[0]:
        raise EdgeGRUError(f"{path}: not the output of edgegru run (no 'score' column)")
    if len(rows) != n_rows:
        raise EdgeGRUError(f"{path}: {len(rows)} scores for {n_rows} rows of data: score the "
                           f"same file (edgegru run --input DATA > SCORES)")
    try:
        scores = np.array([float(r["score"]) for r in rows])
        anomaly = np.array([r.get("anomaly", "0") == "1" for r in rows])
        contrib = {k[8:]: np.array([float(r[k]) for r in rows])
                   for k in rows[0] if k.startswith("contrib_")}
    except ValueError as exc:
        raise EdgeGRUError(f"{path}: {exc}") from None
    return scores, anomaly, contrib


def read_times(path, column, delimiter):
    """The text of column ``column`` of the CSV ``path`` (None when there is no such column)."""
    if column is None:
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        j = [h.strip() for h in next(reader)].index(column)
        return [row[j].strip() for row in reader if row]


def row_index(value, times, n, option):
    """--from / --to as a row index: a row number (from 1) or a time of the time column (the
    first row at or after it)."""
    if value is None:
        return None
    if value.isdigit():
        return min(max(int(value) - 1, 0), n)
    if times is None:
        raise EdgeGRUError(f"{option} {value}: the data has no time column; give a row number")
    return int(np.searchsorted(np.array(times), value))


def plot_csv(out, data, scorer=None, scores_path=None, *, threshold=None, explain=False,
             per_channel=False, start=None, stop=None, columns=None, delimiter=None,
             title=None):
    """Plot the sensor CSV ``data`` with its scores: computed by ``scorer`` (an AnomalyScorer,
    from the first row), or read from ``scores_path`` (edgegru run's output for ``data``).
    start/stop: a row number (from 1) or a time of the data's time column, as strings, or
    row indices (int). Writes ``out`` and returns how many rows it shows."""
    from edgegru.train import read_csv
    table = read_csv(data, columns or (scorer.columns if scorer else None), delimiter)
    X, names = table.X, table.names
    times = read_times(data, table.timestamp, table.delimiter)
    if scorer is not None:
        scores, C = scorer.score_many(X, explain=True)
        contrib = dict(zip(scorer.columns, C.T))
        threshold = scorer.threshold if threshold is None else threshold
        mean, std = scorer.mean, scorer.std
    else:
        scores, anomaly, contrib = read_scores(scores_path, len(X))
        mean, std = np.nanmean(X, axis=0), np.nanstd(X, axis=0)
        std = np.where(std > 0, std, 1.0)
    anomaly = scores > threshold if threshold is not None else anomaly
    a = start if isinstance(start, int) else row_index(start, times, len(X), "--from")
    b = stop if isinstance(stop, int) else row_index(stop, times, len(X), "--to")
    shown = slice(a or 0, len(X) if b is None else min(b + (not isinstance(stop, int)), len(X)))
    if shown.stop - shown.start < 2:
        raise EdgeGRUError(f"--from/--to leave {max(shown.stop - shown.start, 0)} row(s) to "
                           f"plot; they are row numbers from 1 to {len(X)} or times")
    x = _axis(times, shown)
    Z = (X[shown] - mean) / std
    draw(out, x, Z, names, scores[shown], anomaly[shown], threshold,
         {k: v[shown] for k, v in contrib.items()} if explain else None, per_channel,
         title or f"{data}: {shown.stop - shown.start} rows")
    return shown.stop - shown.start


def _axis(times, shown):
    """The x values: the time column as datetimes when it reads as ISO 8601, else row
    numbers (from 1)."""
    if times is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # an offset (+01:00): numpy reads it as UTC
            try:
                return np.array(times[shown], dtype="datetime64[ms]")
            except ValueError:
                pass
    return np.arange(shown.start + 1, shown.stop + 1)


def draw(out, x, Z, names, scores, anomaly, threshold, contrib, per_channel, title):
    """The figure (see the module doc) written to ``out``."""
    plt = pyplot()
    n_channel_panels = len(names) if per_channel else 1
    heights = [1.0] * n_channel_panels + [1.2] + ([1.0] if contrib else [])
    fig, axes = plt.subplots(len(heights), 1, sharex=True, figsize=FIGSIZE, dpi=DPI,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        ax = axes[i if per_channel else 0]
        ax.plot(x, Z[:, i], lw=0.6, color=colours[i % len(colours)], label=name)
    for ax in axes[:n_channel_panels]:
        ax.set_ylabel("normalised")
        ax.legend(loc="upper left", fontsize="small", ncol=len(names) if not per_channel else 1)
    ax = axes[n_channel_panels]
    floor = max(np.nanmin(scores[scores > 0]) if (scores > 0).any() else 1e-3, 1e-6)
    ax.semilogy(x, np.maximum(scores, floor), lw=0.6, color="black", label="score")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_ylabel("score")
    ax.legend(loc="upper left", fontsize="small")
    if contrib:
        ax = axes[-1]
        ax.stackplot(x, *[np.clip(contrib[n], 0, None) for n in names if n in contrib],
                     labels=[n for n in names if n in contrib], colors=colours, lw=0)
        ax.set_ylabel("contribution")
        ax.legend(loc="upper left", fontsize="small", ncol=len(names))
    for ax in axes:
        ax.fill_between(x, 0, 1, where=anomaly, step="mid", color="tab:red", alpha=0.15, lw=0,
                        transform=ax.get_xaxis_transform())
    axes[0].set_title(title + f"; {int(anomaly.sum())} rows above the threshold (shaded)",
                      fontsize="medium")
    fig.align_ylabels(axes)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
