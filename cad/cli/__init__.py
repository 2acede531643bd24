"""The ``cad`` command: thin typer shells over :mod:`cad.api` and the data tools.

Each subcommand lives in its own module (``run``, ``data``, ``backbones``; ``score`` in
:mod:`cad.scoring.cli`). Exit codes: 0 success; 1 partial failure (some input files
unusable, the rest processed); 2 usage, configuration, weights, model or disk errors; 3 an
internal error (a bug; a PHI-free crash report, :mod:`cad.cli.crash`); 128 + N on signal N.
"""

from __future__ import annotations

from cad.cli import backbones, compare, data, doctor, listen, pacs, pretrain, run  # noqa: F401  (registers the subcommands)
from cad.cli.app import app, register_score

register_score()

__all__ = ["app"]
