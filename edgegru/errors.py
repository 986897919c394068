"""The errors edgegru raises on purpose, so callers (and the CLI) can tell them from bugs."""


class EdgeGRUError(Exception):
    """Base class of edgegru's own errors."""


class ModelFormatError(EdgeGRUError, ValueError):
    """A model file or state dict that cannot be used: the message says what and where."""
