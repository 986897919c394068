"""The errors edgegru raises on purpose, so callers (and the CLI) can tell them from bugs."""


class EdgeGRUError(Exception):
    """Base class of edgegru's own errors."""


class ModelFormatError(EdgeGRUError, ValueError):
    """A model file or state dict that cannot be used: the message says what and where."""


class InputError(EdgeGRUError, ValueError):
    """Input data that cannot be scored (a bad CSV row, a missing column): the message names the
    line and column. ``line`` and ``column`` hold them too (column may be None)."""

    def __init__(self, message, line=None, column=None):
        super().__init__(message if line is None or message.startswith("line ")
                         else f"line {line}: {message}")
        self.line = line
        self.column = column


class TrainingError(EdgeGRUError, ValueError):
    """Data or options that cannot train a model (too few rows, a constant channel, PyTorch
    missing): the message says what to change."""


class WriteError(EdgeGRUError):
    """The output or the state file cannot be written (a full disk, a read-only or missing
    directory): the message says which file and why. The command exits with ``exit_code``."""

    exit_code = 74               # EX_IOERR of sysexits.h, so a service manager can tell it apart
