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
