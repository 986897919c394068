"""``python -m edgegru``: the ``edgegru`` command, where the script is not on PATH."""
from edgegru.cli import main

main(prog_name="edgegru")
