"""The ``edgegru`` command: a thin shell over the library. Each command builds the library
object and loops; edgegru's own errors become one-line messages (no traceback) in one place.

Exit codes: 0 success, 1 an error edgegru detected (bad model file, bad input data), 2 bad
usage (Click's own), 74 a file could not be written or read (a full disk, a read-only or missing
directory), 130 interrupted by Ctrl-C; ``run`` also 129 / 143 (SIGHUP / SIGTERM) and 141 (output
closed).
"""
import contextlib
import functools
import io
import os
import platform
import sys
import time

import click

import edgegru
from edgegru.calibrate import CalibrationOptions
from edgegru.errors import EdgeGRUError, WriteError
from edgegru.model import WEIGHTS_DTYPES, recurrent_bfloat16
from edgegru.scoring import FORECASTS
from edgegru.train import TrainingOptions


def friendly_errors(command):
    """Turn edgegru's errors into ``Error: <message>`` and exit code 1, instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeGRUError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = getattr(exc, "exit_code", 1)
            raise error from None
        except BrokenPipeError:
            raise                        # the output was closed: each command says what it means
        except OSError as exc:           # a file the system refuses: not a bug, not a traceback
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            error = click.ClickException(what)
            error.exit_code = WriteError.exit_code
            raise error from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edgegru.__version__, prog_name="edgegru")
def main():
    """Run trained GRU networks on small CPUs, exact to PyTorch.

    \b
    Example:
      edgegru run --weights weights/model.npz < examples/sensor.csv
    """


# convert's and train's --weights-dtype
WEIGHTS_DTYPE_HELP = ("bf16: hold the recurrent weights W_hh in bfloat16 (rounded to nearest; "
                      "everything else stays float32): W_hh half the bytes, run() faster from "
                      "64 hidden units.")


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="The edgegru .npz to write.")
@click.option("--head", default=None, help="For state dicts: the key prefix of the nn.Linear "
              "head (e.g. 'fc'), 'none', or a deeper head in order, Linear prefixes and "
              "activations (e.g. 'fc1,relu,fc2').")
@click.option("--head-on", type=click.Choice(["all", "last"]), default=None,
              help="'last': the model's output is the head on the last step only (a state "
                   "dict cannot say so; ONNX and Keras files do). Default: as the file says.")
@click.option("--layers", default=None, help="For state dicts with several nn.GRU modules "
              "making one stack: their key prefixes, bottom first (e.g. 'gru1,gru2').")
@click.option("--weights-dtype", type=click.Choice(WEIGHTS_DTYPES), default="f32",
              show_default=True, help=WEIGHTS_DTYPE_HELP)
@friendly_errors
def convert(src, dst, head, head_on, layers, weights_dtype):
    """Convert a trained model to edgegru's .npz (format recognised from the content).

    Reads PyTorch .pt/.pth state dicts (without torch), .safetensors, .npz of state-dict
    arrays, ONNX and Keras (.keras, .weights.h5, legacy .h5) files.

    \b
    Example:
      edgegru convert model.pt -o model.npz
      edgegru convert model.pt --head fc1,relu,fc2 --head-on last -o model.npz
      edgegru convert model.pt --weights-dtype bf16 -o model-bf16.npz
    """
    if head is not None and "," in head:
        head = [part.strip() for part in head.split(",")]
    layers = None if layers is None else [part.strip() for part in layers.split(",")]
    model = edgegru.load(src, head=False if head == "none" else head, head_on=head_on,
                         layers=layers)
    if weights_dtype == "bf16":
        model = recurrent_bfloat16(model)
    model.meta.setdefault("provenance", {})["converted_by"] = f"edgegru {edgegru.__version__}"
    edgegru.save(model, dst)
    click.echo(f"{src} -> {dst}: {model!r}")


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@friendly_errors
def info(model_path):
    """Describe a model file: variant, sizes, head, parameters, source, weights checksum.

    \b
    Example:
      edgegru info weights/model.npz
    """
    from edgegru.formats import describe
    for key, value in describe(edgegru.load(model_path)).items():
        click.echo(f"{key + ':':16s}{value}")


def _names(text):
    """A comma-separated list of column names (None when not given, [] when empty)."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


@main.command()
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The scoring model (.npz with preprocessing and scoring metadata).")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="CSV file to read (default: stdin). A progress bar shows on a terminal.")
@click.option("--columns", help="Input column names feeding the model's channels, in its "
              "order, comma-separated (default: the model's own column names). With "
              "--no-header: the names of all the input's fields, in order, as a header line "
              "would give them (the model reads its own column names among them).")
@click.option("--no-header", is_flag=True, help="The input has no header line: every line is a "
              "row of the model's columns in order, or of the fields --columns names (e.g. "
              "tail -f of a log, a serial port). Without it, a first line of numbers only is "
              "a row too.")
@click.option("--delimiter", metavar="CHAR", help="The field delimiter of the input: ',', ';', "
              "'tab' (default: sniffed from the first line). The output is comma-separated.")
@click.option("--keep", help="Columns to copy to the output, comma-separated; '' for none "
              "(default: every column the model does not read, e.g. the timestamp).")
@click.option("--group-by", metavar="COLUMN", help="Score each value of COLUMN (a device id) as "
              "its own stream, with its own state.")
@click.option("--threshold", type=float, help="Anomaly threshold (default: the model's).")
@click.option("--explain", is_flag=True, help="Add each channel's contribution to the score.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True, help="Output format.")
@click.option("--precision", type=click.IntRange(1, 17), default=6, show_default=True,
              help="Significant digits of scores (17 reproduces them exactly).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail",
              show_default=True, help="A bad row stops the run (exit 1), or is dropped with a "
              "note on stderr.")
@click.option("--state", type=click.Path(dir_okay=False), help="State file: resume from it if "
              "it exists; saved at the end, on Ctrl-C/SIGTERM/SIGHUP, when the output closes "
              "and every --checkpoint-every rows.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also save the state every N rows (needs --state).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no note that the kernels "
              "are being compiled (both show only on a terminal) and no advice when the input "
              "runs far from the model's normal.")
@friendly_errors
def run(weights, input_path, columns, no_header, delimiter, keep, group_by, threshold, explain,
        fmt, precision, on_error, state, checkpoint_every, quiet):
    """Score CSV sensor rows: one output row per input row, written as soon as it is read.

    Output columns: the kept columns, score (high = anomalous), anomaly (1 when
    score > threshold) and with --explain contrib_<channel>, which sensor moved. Empty fields
    and nan are missing values (imputed from the forecast). Bad rows, resuming and the score
    formula: see docs/scoring-a-stream.md.

    \b
    Exit codes: 0 done; 1 bad input row (with --on-error fail), bad model or state file,
    missing column; 2 bad usage; 74 the output or --state cannot be written (full disk,
    read-only or missing directory; checked for --state before the first row): the rows
    written are whole and --state is saved where it can be; 129 / 130 / 143 stopped by
    SIGHUP / SIGINT / SIGTERM after writing every row read and saving --state; 141 the
    output was closed (e.g. | head), --state saved.

    \b
    Examples:
      edgegru run --weights weights/model.npz < examples/sensor.csv
      tail -f sensors.csv | edgegru run --weights weights/model.npz --no-header \\
          --columns device,timestamp,temperature,vibration,current,pressure \\
          --group-by device --state run.state --checkpoint-every 1000 --on-error skip
    """
    from edgegru.stream import score_stream
    if checkpoint_every and not state:
        raise click.UsageError("--checkpoint-every needs --state FILE")
    scorer = edgegru.AnomalyScorer.from_model(edgegru.load(weights), source=weights)
    columns = _names(columns)
    if no_header and columns:
        missing = [c for c in scorer.columns if c not in columns]
        if missing:
            raise click.BadParameter(f"with --no-header it names every field of the input, and "
                                     f"must name the model's {', '.join(missing)} among them",
                                     param_hint="--columns")
    elif columns is not None and len(columns) != scorer.num_channels:
        raise click.BadParameter(f"names {len(columns)} columns, the model reads "
                                 f"{scorer.num_channels} ({', '.join(scorer.columns)})",
                                 param_hint="--columns")
    delimiter = _delimiter(delimiter)
    if sys.stdout is None:                           # started with stdout closed (>&-)
        raise WriteError("the output (stdout) is closed: redirect it to a file or a pipe")
    out = sys.stdout.buffer
    terminal = not quiet and _isatty(sys.stderr)
    if terminal:
        _say_if_compiling()
    show = bool(input_path) and terminal
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open(input_path, "rb", buffering=0)) if input_path else \
            sys.stdin.buffer
        bar = stack.enter_context(click.progressbar(
            length=os.path.getsize(input_path), label="scoring", file=sys.stderr)) if show else None
        try:
            result = score_stream(
                scorer, source, out, columns=columns, keep=_names(keep), group_by=group_by,
                explain=explain, threshold=threshold, fmt=fmt, precision=precision,
                on_error=on_error, state=state, checkpoint_every=checkpoint_every,
                progress=bar.update if bar else None, header=False if no_header else None,
                delimiter=delimiter, advise=not quiet)
        except BrokenPipeError:                      # the reader went away: stop quietly
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, io.UnsupportedOperation):
                pass
            sys.exit(141)
    if result.signal is not None:
        sys.exit(128 + result.signal)


@main.command()
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The scoring model (.npz with preprocessing and scoring metadata).")
@click.option("--broker", default="mqtt://localhost:1883", show_default=True,
              help="mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS (see --cafile).")
@click.option("--subscribe", multiple=True, required=True, metavar="TOPIC",
              help="Topic filter of the readings, e.g. 'plant/+/telemetry' (repeatable).")
@click.option("--publish", default="{topic}/anomaly", show_default=True, metavar="TEMPLATE",
              help="Result topic; {device} and {topic} are the reading's.")
@click.option("--device-from-topic", type=click.IntRange(min=1), metavar="N",
              help="Topic level N (from 1) names the device (default: the whole topic).")
@click.option("--device-key", metavar="FIELD", help="Or a field of the reading does.")
@click.option("--columns", help="The fields of CSV payloads, in order, comma-separated "
              "(default: the model's columns). JSON payloads use the model's column names.")
@click.option("--timestamp-key", default="timestamp", show_default=True, metavar="FIELD",
              help="The reading's time, echoed in the result (default there: arrival time).")
@click.option("--explain", is_flag=True, help="Add each channel's contribution (contrib).")
@click.option("--on-change", is_flag=True, help="Publish only alarms and all-clears.")
@click.option("--threshold", type=float, help="Anomaly threshold (default: the model's).")
@click.option("--client-id", help="MQTT client id of the persistent session [default: "
              "edgegru-<hostname>].")
@click.option("--state", type=click.Path(dir_okay=False), help="State file of every device: "
              "resumed from if it exists, saved on stop and every --checkpoint-every readings.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also save the state every N readings (needs --state).")
@click.option("--max-devices", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Readings of more devices are dropped as bad payloads.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
              help="CA certificates for mqtts:// (default: the system's).")
@click.option("--username", help="User name on the broker.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
              help="A file whose first line is the password (never on the command line).")
@click.option("-q", "--quiet", is_flag=True, help="No note that the kernels are compiling.")
@friendly_errors
def mqtt(weights, subscribe, columns, password_file, quiet, **options):
    """Score MQTT sensor readings: one result per reading, published back (needs paho-mqtt:
    pip install 'edgegru[mqtt]').

    A reading is a JSON object of the model's columns ({"temperature": 71.2, ...}; a
    missing key is a missing value) or a CSV line. QoS 1 both ways and a persistent session:
    readings sent while edgegru restarts are scored when it is back, in order. Delivery,
    results and broker settings: docs/mqtt.md. Exit codes: 0, 1 (bad model, state file or
    broker), 2 bad usage, 74 --state not writable, 129/130/143 stopped by a signal, state saved.

    \b
    Example:
      edgegru mqtt --weights weights/model.npz --broker mqtt://localhost:1883 \\
          --subscribe 'plant/+/telemetry' --device-from-topic 2 \\
          --publish 'plant/{device}/anomaly' --state mqtt.state --checkpoint-every 1000
    """
    from edgegru.mqtt import MqttOptions, paho, serve
    paho()
    if options["checkpoint_every"] and not options["state"]:
        raise click.UsageError("--checkpoint-every needs --state FILE")
    if password_file:
        with open(password_file, encoding="utf-8") as f:
            options["password"] = f.readline().rstrip("\r\n")
    scorer = edgegru.AnomalyScorer.load(weights)
    if not quiet and _isatty(sys.stderr):
        _say_if_compiling()
    result = serve(scorer, MqttOptions(subscribe=list(subscribe), columns=_names(columns),
                                       **options))
    click.echo(f"edgegru mqtt: {result.scored} readings scored, {result.published} results "
               f"published, {result.bad} bad payloads, {result.repeats} repeats dropped, "
               f"{result.late} late",
               err=True)
    if result.signal is not None:
        sys.exit(128 + result.signal)


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The picture to write: .png, .svg or .pdf.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Score DATA with this model.")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False),
              help="Or read the scores: edgegru run's CSV output for DATA.")
@click.option("--threshold", type=float, help="Anomaly threshold (default: the model's).")
@click.option("--explain", is_flag=True, help="Add the channels' contributions, stacked.")
@click.option("--per-channel", is_flag=True, help="One panel per channel.")
@click.option("--from", "start", metavar="ROW|TIME", help="First row shown: a row number "
              "(from 1) or a time of the time column.")
@click.option("--to", "stop", metavar="ROW|TIME", help="Last row shown.")
@click.option("--delimiter", help="Field separator of DATA (default: sniffed).")
@friendly_errors
def plot(data, output, weights, scores, threshold, explain, per_channel, start, stop,
         delimiter):
    """Plot a sensor CSV with its anomaly scores: the channels (normalised), the score on a
    log axis with the threshold, alarms shaded (needs matplotlib: pip install
    'edgegru[plot]').

    \b
    Examples:
      edgegru plot examples/sensor_heldout.csv --weights weights/model.npz -o scores.png
      edgegru plot pump.csv --scores scores.csv --explain --from 2026-01-03 -o pump.svg
    """
    from edgegru.plot import plot_csv, pyplot
    pyplot()
    if bool(weights) == bool(scores):
        raise click.UsageError("give --weights (to score DATA) or --scores, one of them")
    scorer = edgegru.AnomalyScorer.load(weights) if weights else None
    n = plot_csv(output, data, scorer, scores, threshold=threshold, explain=explain,
                 per_channel=per_channel, start=start, stop=stop,
                 delimiter=_delimiter(delimiter))
    click.echo(f"{output}: {n} rows", err=True)


class _TypedCommand(click.Command):
    """A command that keeps its arguments as typed (ctx.meta["argv"]), for the provenance."""

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


def _option(name, **kwargs):
    """An option of `edgegru train`, its default that of the field of the same name of
    TrainingOptions or CalibrationOptions (the defaults a Python caller gets)."""
    field = name.lstrip("-").replace("-", "_")
    options = TrainingOptions if field in TrainingOptions.__dataclass_fields__ else \
        CalibrationOptions
    return click.option(name, default=getattr(options, field), show_default=True, **kwargs)


def _expert(name, **kwargs):
    """An option kept out of --help (every one is listed in docs/training-and-detection.md)."""
    return _option(name, hidden=True, **kwargs)


# options train and calibrate read their data with
_DELIMITER = click.option("--delimiter", help="Field separator, e.g. ';' or '\\t' (default: "
                          "sniffed from the header line).")
_TRAIN_FRACTION = click.option("--train-fraction", type=float, metavar="F", help="The first "
                               "fraction F of the rows is normal, instead of --train-rows.")


def _calibration_options(command):
    """The expert options of how the score is calibrated, shared by train and calibrate."""
    for option in reversed([
        _expert("--smoothing", type=float, help="Score EWMA alpha in (0, 1]."),
        _expert("--shrinkage", type=float, help="Whitening: shrink the residual "
                "correlation towards the identity."),
        _expert("--whitening", type=click.Choice(["conditional", "zca"]),
                help="How the forecast residuals are decorrelated."),
        _expert("--consistency-r2", type=float, help="Consistency model for channels "
                "the others explain with at least this R^2 (above 1: none)."),
        _expert("--consistency-lags", type=int, help="Consistency model: rows read."),
        _expert("--consistency-degree", type=int, help="Consistency model: degree."),
        _expert("--consistency-smoothing", type=float, help="Consistency EWMA alpha."),
        _expert("--drift-r2", type=float, help="Drift test for channels explained "
                "with at least this R^2 (above 1: none)."),
        _expert("--drift-smoothing", type=float, help="Drift test: slow EWMA alpha."),
        _expert("--drift-fast-smoothing", type=float, help="Drift test: fast alpha."),
        _expert("--drift-baseline-smoothing", type=float, help="Drift test: baseline alpha."),
        _expert("--level-smoothing", type=float, help="Level test: EWMA alpha."),
        _expert("--level-max-ratio", type=float, help="Level test for channels whose "
                "variance ratio on the normal rows is below this (0: none)."),
        _expert("--level-margin", type=float, help="Level test: alarms above this "
                "multiple of its largest value on the normal rows."),
        _expert("--level-shrinkage", type=float, help="Level test: covariance shrinkage."),
        _expert("--level-rebaseline", type=float, help="Level test: after an alarm episode, the "
                "level the machine settles at is the new normal once the test falls below the "
                "episode's peak over this; 0: never."),
    ]):
        command = option(command)
    return command


@main.command(cls=_TypedCommand)
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The model file to write (.npz); the PyTorch state dict goes next to it "
                   "(.pt).")
@click.option("--columns", help="Channel columns, comma-separated (default: every numeric "
              "column but the timestamp).")
@_DELIMITER
@click.option("--train-rows", type=int, metavar="N", help="The first N rows are normal "
              "(anomaly-free) and trained on (default: every row).")
@_TRAIN_FRACTION
@_option("--hidden-size", type=click.IntRange(min=1), help="GRU hidden size.")
@_option("--steps", type=click.IntRange(min=1),
         help="Optimizer steps (what training time grows with).")
@_option("--false-alarm-rate", type=float,
         help="Threshold: score crossings per row on normal data.")
@_option("--seed", type=int, help="Random seed.")
@_option("--weights-dtype", type=click.Choice(WEIGHTS_DTYPES), help=WEIGHTS_DTYPE_HELP)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the calibration rows "
              "with their scores (.png/.svg, as edgegru plot does; needs matplotlib).")
@click.option("--state-dict", type=click.Path(dir_okay=False), hidden=True,
              help="Where to save the PyTorch state dict (default: OUTPUT with .pt).")
@_expert("--calibration-fraction", type=float,
         help="Trailing share of the normal rows kept out of training, to calibrate.")
@_expert("--epochs", type=int, help="Passes over the training windows (default: what --steps "
         "takes, at most 200).")
@_expert("--num-layers", type=int, help="GRU layers.")
@_expert("--window", type=int, help="Rows per training window (default: 128, or half the "
         "training rows).")
@_expert("--burn-in", type=int, help="First rows of a window that only settle the state.")
@_expert("--stride", type=int, help="Rows between window starts.")
@_expert("--batch-size", type=int, help="Windows per step.")
@_expert("--lr", type=float, help="Peak learning rate (Adam).")
@_expert("--clip", type=float, help="Gradient norm clip.")
@_expert("--forecast", type=click.Choice(FORECASTS),
         help="What the network predicts: the next row, or its step from this one.")
@_expert("--shift", type=float,
         help="Random per-window level shift (normalised units); 0: off.")
@_expert("--threads", type=int, help="Torch threads.")
@_calibration_options
@friendly_errors
def train(data, output, columns, delimiter, train_rows, train_fraction, quiet, plot, state_dict,
          **options):
    """Train a GRU forecaster on the normal rows of a sensor CSV and calibrate its anomaly
    score: writes a model for `edgegru run` (needs PyTorch: pip install 'edgegru[train]').

    DATA has a header line and one row per time step; numeric columns are the channels, a
    timestamp column is skipped. Every row is taken as normal unless --train-rows or
    --train-fraction says how many leading rows are; 400 rows will do, more is better. The
    same data, options and seed give the same file, byte for byte. Expert options (window,
    learning rate, consistency, drift and level tests): docs/training-and-detection.md.

    \b
    Examples:
      edgegru train mine.csv -o mine.npz
      edgegru train pump.csv -o pump.npz --columns temp,current --train-rows 20000
      edgegru train pump.csv -o pump.npz --hidden-size 64 --weights-dtype bf16
    """
    from edgegru.train import train_model
    if train_rows is not None and train_fraction is not None:
        raise click.UsageError("give --train-rows or --train-fraction, not both")
    delimiter = _delimiter(delimiter)
    _before_calibrating(quiet, plot)
    fields = TrainingOptions.__dataclass_fields__
    argv = click.get_current_context().meta.get("argv", [])
    log = _log(quiet)
    model = train_model(
        data, output, columns=_names(columns), delimiter=delimiter, train_rows=train_rows,
        train_fraction=train_fraction, state_dict=state_dict,
        options=TrainingOptions(**{k: v for k, v in options.items() if k in fields}),
        calibration=CalibrationOptions(**{k: v for k, v in options.items() if k not in fields}),
        # as typed, less -q (which does not change the file)
        command=" ".join(["edgegru", "train"] + _as_typed(argv)),
        log=log, progress=log if not quiet and sys.stderr.isatty() else None)
    if plot:
        _plot_calibration_rows(plot, data, model, model.meta["provenance"]["split"],
                               delimiter=delimiter)


@main.command("calibrate", cls=_TypedCommand)
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The model file to write (.npz).")
@click.option("--columns", help="The data's columns holding the model's channels, in the "
              "model's order, comma-separated (default: the model's channel names).")
@_DELIMITER
@click.option("--train-rows", type=int, metavar="N", help="The first N rows are normal "
              "(anomaly-free) and calibrated on (default: every row).")
@_TRAIN_FRACTION
@click.option("--false-alarm-rate", type=float,
              help="Threshold: score crossings per row on normal data (default: MODEL's).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw the calibration rows "
              "with their scores (.png/.svg, as edgegru plot does; needs matplotlib).")
@_expert("--calibration-fraction", type=float,
         help="Trailing share of the normal rows that sets the threshold.")
@click.option("--forecast", type=click.Choice(FORECASTS),
              help="What the network predicts: the next row, or its step from this one "
                   "(default: what MODEL says; needed for a model without a scoring section, "
                   "such as one converted from PyTorch).")
@_calibration_options
@friendly_errors
def calibrate(model_path, data, output, columns, delimiter, train_rows, train_fraction, quiet,
              plot, calibration_fraction, forecast, **options):
    """Fit a trained model to another machine, or the same one at another operating point:
    the network is kept, the normalisation and every scoring parameter (residual spreads,
    tests, threshold) are calibrated afresh on the normal rows of DATA. NumPy only, no
    PyTorch: train once on a workstation, calibrate on each device.

    DATA is a sensor CSV as `edgegru train` reads it, holding the model's channels (by
    name, or --columns). Every row is taken as normal unless --train-rows or --train-fraction
    says how many leading rows are; as for training, 400 rows will do. Calibrating a model on
    its own normal rows with its own options gives it back unchanged.

    \b
    Examples:
      edgegru calibrate pump.npz pump7-normal.csv -o pump7.npz
      edgegru calibrate pump.npz pump7.csv -o pump7.npz --train-rows 400
    """
    from edgegru.train import recalibrate_file
    if train_rows is not None and train_fraction is not None:
        raise click.UsageError("give --train-rows or --train-fraction, not both")
    ctx = click.get_current_context()
    options["calibration_fraction"] = calibration_fraction
    # as MODEL was calibrated, but for what is typed
    typed = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    _before_calibrating(quiet, plot)
    delimiter = _delimiter(delimiter)
    model = recalibrate_file(
        model_path, data, output, columns=_names(columns), delimiter=delimiter,
        train_rows=train_rows, train_fraction=train_fraction, forecast=forecast,
        command=" ".join(["edgegru", "calibrate"] + _as_typed(ctx.meta.get("argv", []))),
        log=_log(quiet), **typed)
    if plot:
        _plot_calibration_rows(plot, data, model,
                               model.meta["provenance"]["calibration"]["split"],
                               columns=_names(columns), delimiter=delimiter)


def _before_calibrating(quiet, plot):
    """What train and calibrate say before their work: on a terminal, that the scorer's
    kernels compile (calibration runs them; the GRU runs on NumPy), and with --plot that
    matplotlib is missing, if it is."""
    if not quiet and _isatty(sys.stderr):
        _say_if_compiling(("edgegru.scoring._score_rows",), "a few seconds")
    if plot:
        from edgegru.plot import pyplot
        pyplot()


def _log(quiet):
    """A function taking one message line: to stderr, or nowhere with -q."""
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


def _plot_calibration_rows(plot, data, model, split, columns=None, delimiter=None):
    """--plot of train and calibrate: the rows ``split`` (a provenance split) calibrated on,
    with the scores ``model`` gives them."""
    from edgegru.plot import plot_csv
    a, b = split["calibration_rows"]
    plot_csv(plot, data, edgegru.AnomalyScorer.from_model(model), start=a, stop=b,
             columns=columns, delimiter=delimiter, title=f"{data}: the {b - a} calibration rows")


def _as_typed(argv):
    """The arguments of `edgegru train` as typed, less those that do not change the file it
    writes (-q, --plot FILE), so that the file does not depend on them."""
    typed, skip = [], False
    for a in argv:
        if not skip and a not in ("-q", "--quiet") and not a.startswith("--plot="):
            skip = a == "--plot"
            typed += [] if skip else [a]
        else:
            skip = False
    return typed


def _delimiter(value):
    """--delimiter as one character ('tab' and '\\t' for a tab), or None: sniff it."""
    if value is None:
        return None
    value = {"tab": "\t", "\\t": "\t"}.get(value, value)
    if len(value) != 1 or value in '"\r\n':
        raise click.BadParameter("one character (or 'tab'), not a quote or a line end",
                                 param_hint="--delimiter")
    return value


def _isatty(stream):
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


def _say_if_compiling(entry_points=None, seconds="about 30 s"):
    """On a terminal, the first run says why it waits: numba compiling the kernels (those of
    ``entry_points``, default every one ``edgegru run`` uses; ``seconds``: how long, on x86)."""
    from edgegru import bench
    if bench.cold_kernels(entry_points):
        if platform.machine().lower().startswith(("aarch64", "arm")):
            seconds = "a few minutes"
        click.echo(f"edgegru: compiling the kernels for this CPU, once ({seconds}; "
                   f"`edgegru compile` does it ahead)", err=True)


@main.command("compile")
@click.argument("model_path", metavar="[MODEL]", required=False,
                type=click.Path(dir_okay=False))
@click.option("--aot/--no-aot", default=True, show_default=True,
              help="Also build the ahead-of-time module, with which a new process starts "
                   "without importing numba (needs a C compiler and Python's headers).")
@friendly_errors
def compile_(model_path, aot):
    """Compile the kernels now, so the first reading is not kept waiting.

    Compiles what step(), run(), AnomalyScorer and `edgegru run` use into numba's cache, then
    builds from them the ahead-of-time module next to it: a new process that finds it
    (matching these kernels, this Python and this CPU) scores without loading numba, its first
    score in ~0.2 s instead of ~0.6 s here. The kernels do not depend on the model's sizes:
    MODEL (optional) is loaded as a check. Run it with the same NUMBA_CACHE_DIR, user and
    NUMBA_CPU_NAME the program will run with (docs/raspberry-pi.md). When a matching module
    is already there, nothing is rebuilt (EDGEGRU_AOT=0 edgegru compile rebuilds it).

    \b
    Example:
      NUMBA_CACHE_DIR=/var/cache/edgegru edgegru compile weights/model.npz
    """
    from edgegru import _jit, bench
    model = edgegru.load(model_path) if model_path else None
    for what, seconds in bench.precompile(model).items():
        click.echo(f"{what}: {seconds:.2f} s")
    if _jit.BACKEND == "aot":
        # this process found a module matching these sources, this Python and this CPU (and
        # the kernels just ran from it): nothing to build; EDGEGRU_AOT=0 rebuilds
        click.echo("ahead-of-time module: up to date")
        click.echo(f"module: {_jit.AOT.path}")
        return
    click.echo(f"cache: {bench.cache_dir() or 'none (numba is not available)'}")
    if not (aot and _jit.BACKEND == "numba"):
        return
    from edgegru import build
    t = time.perf_counter()
    try:
        path = build.build()
    except RuntimeError as e:
        click.echo(f"ahead-of-time module: not built: {e}. New processes load numba's cache "
                   f"instead (they start slower: numba's import and set-up come first)", err=True)
        return
    click.echo(f"ahead-of-time module: {time.perf_counter() - t:.2f} s")
    click.echo(f"module: {path}")


@main.command()
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Model file to measure (default: random weights of the sizes below).")
@click.option("--input-size", type=click.IntRange(min=1), help="[default: 4]")
@click.option("--hidden-size", type=click.IntRange(min=1), help="[default: 64]")
@click.option("--num-layers", type=click.IntRange(min=1), help="[default: 1]")
@click.option("--samples", type=click.IntRange(min=100), default=100_000, show_default=True,
              help="step() calls timed one by one (for the percentiles).")
@click.option("--rows", type=click.IntRange(min=100), default=100_000, show_default=True,
              help="CSV rows through the edgegru run path.")
@click.option("--no-cold-start", is_flag=True, help="Skip the compile and cache-load timing "
              "(two new processes with an empty NUMBA_CACHE_DIR; compiling takes a while).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@friendly_errors
def bench(weights, input_size, hidden_size, num_layers, samples, rows, no_cold_start, as_json):
    """Measure edgegru on this machine: step() latency (p50/p99/p99.9/max), run() time per
    step, rows/s through the edgegru run path, compile and cache-load time, peak memory.

    \b
    Examples:
      edgegru bench --weights weights/model.npz
      edgegru bench --input-size 4 --hidden-size 128 --num-layers 2 --json
    """
    from edgegru import bench as benchmarks
    if weights:
        if input_size or hidden_size or num_layers:
            raise click.UsageError("give either --weights or the sizes, not both")
        model = edgegru.load(weights)
    else:
        I = input_size or 4
        cfg = edgegru.GRUConfig(input_size=I, hidden_size=hidden_size or 64,
                                num_layers=num_layers or 1, output_size=I)
        model = edgegru.Model(cfg, edgegru.GRUWeights.random(cfg))
    results = benchmarks.benchmark(model, samples=samples, rows=rows,
                                   cold_start=not no_cold_start)
    click.echo(benchmarks.to_json(results) if as_json else benchmarks.report(results))
