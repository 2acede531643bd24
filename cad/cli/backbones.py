"""``cad backbones``: list the registry, inspect a backbone's candidate nodes."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cad.cli.app import backbones_app, handle_errors
from cad.log import print_table


@backbones_app.command("list")
@handle_errors
def backbones_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also build each network: parameters and GFLOPs."),
    ] = False,
) -> None:
    """Every registered backbone: source, input size, ImageNet weights (and whether their
    file is cached here), candidate nodes; with --verbose parameters and GFLOPs too (this
    builds every network, about a minute)."""
    from cad.backbones import describe, list_specs
    from cad.log import progress

    specs = list_specs()
    rows = []
    with progress("measuring backbones", len(specs) if verbose else 0, "nets") as advance:
        for spec in specs:
            rows.append(describe(spec, measure=verbose))
            advance(1)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="cad backbones")
    columns = ["name", "source", "input", "ImageNet weights", "cached", "nodes"]
    if verbose:
        columns[2:2] = ["params (M)", "GFLOPs"]
    for column in columns:
        table.add_column(column, no_wrap=True)
    for r in rows:
        cells = [
            str(r["name"]),
            str(r["source"]),
            str(r["input_size"]),
            "yes" if r["pretrained"] else "no",
            "yes" if r.get("cached") else "no",
            str(r["nodes"]),
        ]
        if verbose:
            cells[2:2] = [f"{int(r['params']) / 1e6:.1f}", f"{float(r['gflops']):.2f}"]
        table.add_row(*cells)
    print_table(table)
    if not verbose:
        print("parameters and GFLOPs: cad backbones list --verbose")


@backbones_app.command("inspect")
@handle_errors
def backbones_inspect(
    name: Annotated[str, typer.Argument(help="Backbone name, e.g. resnet50.")],
    size: Annotated[int | None, typer.Option(help="Input size (default: the network's).")] = None,
    in_chans: Annotated[int, typer.Option(help="Input channels.")] = 3,
) -> None:
    """Candidate nodes of a backbone with their output shapes at the given input size."""
    from cad.backbones import create_backbone, get_spec, node_shapes

    spec = get_spec(name)
    size = size or spec.input_size
    model = create_backbone(name, weights="random", in_chans=in_chans).model
    shapes = node_shapes(model, spec.nodes, size, in_chans)
    table = Table(title=f"{name}: candidate nodes at {in_chans}x{size}x{size}")
    for column in ("#", "node", "depth", "output shape", "dim"):
        table.add_column(column)
    for i, (node, depth) in enumerate(zip(spec.nodes, spec.node_depths, strict=True)):
        shape = shapes[node]
        dim = 1
        for s in shape:
            dim *= s
        table.add_row(str(i), node, str(depth), " x ".join(map(str, shape)), str(dim))
    print_table(table)
