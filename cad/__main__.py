"""``python -m cad``: the same as the ``cad`` command (what ``torchrun -m cad`` launches)."""

from cad.cli import app

app()
