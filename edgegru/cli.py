"""The ``edgegru`` command: a thin shell over the library. Each command builds the library
object and loops; edgegru's own errors become one-line messages (no traceback) in one place.

Exit codes: 0 success, 1 an error edgegru detected (bad model file, bad input data), 2 bad
usage (Click's own), 130 interrupted by Ctrl-C.
"""
import functools
import sys

import click

import edgegru
from edgegru.errors import EdgeGRUError


def friendly_errors(command):
    """Turn edgegru's errors into ``Error: <message>`` and exit code 1, instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeGRUError as exc:
            raise click.ClickException(str(exc)) from None
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


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="The edgegru .npz to write.")
@click.option("--head", default=None, help="For state dicts: the key prefix of the nn.Linear "
              "head (e.g. 'fc'), or 'none'.")
@friendly_errors
def convert(src, dst, head):
    """Convert a trained model to edgegru's .npz (format recognised from the content).

    Reads PyTorch .pt/.pth state dicts (without torch), .safetensors, .npz of state-dict
    arrays, ONNX and Keras (.keras, .weights.h5) files.

    \b
    Example:
      edgegru convert model.pt -o model.npz
    """
    model = edgegru.load(src, head=False if head == "none" else head)
    model.meta.setdefault("provenance", {})["converted_by"] = f"edgegru {edgegru.__version__}"
    model.save(dst)
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
