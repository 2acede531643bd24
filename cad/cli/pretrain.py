"""``cad pretrain``: fill the user-level cache with backbones pretrained on cad's offline
source, for air-gapped machines and for ``weights: pretrain`` outside a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cad.cli.app import app, handle_errors
from cad.log import print_table, setup_logging


@app.command()
@handle_errors
def pretrain(
    backbones: Annotated[
        list[str] | None,
        typer.Argument(help="Backbones to pretrain; default: the pipeline's backbones."),
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="Take input channels and the pretrain: section from this pipeline."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set pretrain.steps=2000."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="A contrastive pretrain.method: the pipeline's workdir, where its data "
            "stages run (the training patients' slices are what it learns from)."
        ),
    ] = None,
) -> None:
    """Pretrain backbones on procedural shape classes (no patient data, no download), or
    contrastively on a pipeline's training slices (``pretrain.method``), and cache the
    weights (``$CAD_CACHE`` or next to torch's hub cache). A rerun reuses them; a killed
    run resumes from its last checkpoint. `cad run` does the same on its own for backbones
    with ``weights: pretrain`` or ``fallback: pretrain``."""
    from rich.table import Table

    from cad.backbones import get_spec
    from cad.config import PipelineConfig, load_config, validate
    from cad.errors import ConfigError
    from cad.pretrain import ensure_pretrained

    setup_logging()
    if pipeline is not None:
        cfg = load_config(pipeline, set_ or [])
    else:
        from cad.config import apply_overrides

        cfg = validate(apply_overrides({}, set_ or []), "--set")
    assert isinstance(cfg, PipelineConfig)
    names = backbones or [b.name for b in cfg.backbones]
    for name in names:
        get_spec(name)  # unknown names fail before any training
    table = Table(title="cad pretrain")
    for column in ("backbone", "steps", "source accuracy", "chance", "cache", "weights file"):
        table.add_column(column, no_wrap=column != "weights file", overflow="fold")
    if cfg.pretrain.uses_slices:
        if pipeline is None or workdir is None:
            raise ConfigError(
                f"pretrain.method {cfg.pretrain.method}: contrastive pretraining learns from a "
                "pipeline's training slices: give --pipeline P and --workdir W"
            )
        from cad.api import pretrain_pipeline

        made = [
            (a.record(), reused, a.weights) for a, reused in pretrain_pipeline(cfg, workdir, names)
        ]
    else:
        made = []
        for name in names:
            cached = ensure_pretrained(name, cfg.input.in_chans, cfg.pretrain)
            made.append((cached.record, cached.reused, cached.weights))
    for record, reused, weights in made:
        table.add_row(
            record.backbone,
            str(record.steps),
            f"{record.source_accuracy:.3f}",
            f"{1 / record.classes:.3f}",
            "reused" if reused else f"trained in {record.wall_s:.0f} s",
            str(weights),
        )
    print_table(table)
