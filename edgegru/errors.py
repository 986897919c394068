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
