"""What makes the ahead-of-time module stale (edgegru.aot.compiled_digest): a change to compiled
code, to a constant it reads or to a helper that builds one; not a message in a Python function,
a comment or the module docstring. And every module holding compiled code is watched."""
import re
from pathlib import Path

import pytest

from edgegru import aot

PACKAGE = Path(aot.__file__).resolve().parent

MODULE = '''"""A module."""
import numpy as np

from edgegru._jit import njit

LIMIT = 15                      # a constant the kernel reads
TABLE = np.array(_powers(16)) if False else None


def _powers(n):
    return [10.0 ** k for k in range(n)]


@njit(cache=True)
def _kernel(x):
    """Sum up to LIMIT."""
    return x[:LIMIT].sum() + _helper(x)


@njit
def _helper(x):
    return x[0]


def wrapper(x):
    if x.ndim != 1:
        raise ValueError("x must be 1-d")
    return _kernel(x)


class Layout:
    def message(self):
        return "a message"
'''


def digest(text):
    return aot.compiled_digest(text)


@pytest.mark.parametrize("edit", [
    ('raise ValueError("x must be 1-d")', 'raise ValueError("x must be one-dimensional")'),
    ('return "a message"', 'return "another message"'),
    ('"""A module."""', '"""A module, described better."""'),
    ("# a constant the kernel reads", "# the kernel's bound"),
    ("\n\ndef wrapper", "\n\n\n# a new comment\ndef wrapper"),
])
def test_edits_outside_compiled_code_keep_the_digest(edit):
    assert digest(MODULE.replace(*edit)) == digest(MODULE)


@pytest.mark.parametrize("edit", [
    ("x[:LIMIT].sum()", "x[:LIMIT].max()"),                 # a kernel
    ("return x[0]", "return x[1]"),                          # a kernel it calls
    ("LIMIT = 15", "LIMIT = 14"),                            # a constant
    ("10.0 ** k", "10 ** k"),                                # a helper a constant comes from
    ("@njit(cache=True)", "@njit(cache=True, fastmath=True)"),
])
def test_edits_to_compiled_code_change_the_digest(edit):
    assert digest(MODULE.replace(*edit)) != digest(MODULE)


def test_a_message_in_the_real_csv_module_keeps_the_digest_and_the_parser_does_not():
    text = (PACKAGE / "csvio.py").read_text()
    assert "is not a number" in text and "if digits == 0 or digits > 15:" in text
    assert digest(text.replace("is not a number", "is no number")) == digest(text)
    assert digest(text.replace("digits > 15:", "digits > 14:")) != digest(text)


def test_every_module_with_compiled_code_is_watched():
    jit = re.compile(r"^\s*@(njit|_jitable|intrinsic|jit|register_jitable)\b", re.M)
    compiled = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if jit.search(p.read_text())}
    assert compiled, "no compiled module found: the pattern is stale"
    unwatched = compiled - set(aot.COMPILED_SOURCES)
    assert not unwatched, (f"{sorted(unwatched)} hold compiled code: add them to "
                           f"edgegru.aot.COMPILED_SOURCES, so that a change to them makes the "
                           f"ahead-of-time module stale")
    for name in aot.SOURCES:
        assert (PACKAGE / name).exists(), name
