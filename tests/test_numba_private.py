"""The numba internals edgegru relies on (edgegru/_numba_private.py) are there in this numba, and
`edgegru compile` still fills numba's cache, and says why it built no module, where numba's
deprecated pycc is missing."""
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegru
from edgegru import _jit

ROOT = Path(__file__).resolve().parents[1]

needs_numba = pytest.mark.skipif(_jit.BACKEND != "numba", reason="needs numba's JIT")


@needs_numba
def test_the_numba_internals_edgegru_uses_are_there():
    import numba
    from edgegru import _numba_private
    gone = _numba_private.missing()
    assert not gone, (f"numba {numba.__version__} changed internals edgegru uses: "
                      f"{'; '.join(gone)}. Adapt edgegru/_numba_private.py (each has a "
                      f"fallback), then raise numba's bound in pyproject.toml")
    assert _jit.NO_NRT == {"_nrt": False}


@needs_numba
def test_a_compiled_kernels_cache_paths_are_found():
    from edgegru import _numba_private, csvio
    csvio.parse_lines(b"1,2\n", csvio.Layout.without_header(["a", "b"]))     # compiled now
    dispatcher = csvio._parse_lines
    assert _numba_private.cache_index_path(dispatcher), "numba's cache layout changed"
    assert _numba_private.cache_dir(dispatcher), "numba's cache layout changed"
    [signature] = dispatcher.signatures
    assert str(_numba_private.return_type(dispatcher, signature)) == "int64"


def test_numba_is_bounded_below_its_next_minor_release():
    """The internals above are checked against the installed numba: a newer minor release may
    change them, so pip must not install one before it has been checked."""
    text = (ROOT / "pyproject.toml").read_text()
    bound = re.search(r'"numba>=[\d.]+,<(\d+)\.(\d+)', text)
    assert bound, "pyproject.toml: numba needs an upper bound (<next minor)"
    try:
        import numba
    except ImportError:
        pytest.skip("numba is not installed")
    installed = tuple(int(v) for v in numba.__version__.split(".")[:2])
    assert installed < (int(bound[1]), int(bound[2])), \
        f"numba {numba.__version__} is past pyproject.toml's bound: check it, then raise it"


@needs_numba
def test_compile_without_pycc_fills_numbas_cache_and_says_so(monkeypatch, tmp_path):
    from edgegru import build
    from edgegru.cli import main
    monkeypatch.setitem(sys.modules, "numba.pycc", None)     # as in a numba without pycc
    with pytest.raises(RuntimeError, match="needs numba's pycc"):
        build.build(tmp_path)
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(main, ["compile"])
    assert result.exit_code == 0, result.output
    assert "scoring (edgegru run):" in result.output       # the kernels compiled or loaded
    assert "cache: " in result.output
    assert re.search(r"ahead-of-time module: not built: needs numba's pycc and setuptools "
                     r"\(.*\); pip install 'edgegru\[aot\]'\. New processes load numba's "
                     r"cache instead", result.output), result.output
    assert edgegru.JIT
