"""``python -m cad.cli``: the same as the ``cad`` command."""

from cad.cli import app

app()
