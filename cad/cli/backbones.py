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
) -> None:
    """Every registered backbone: source, parameters, GFLOPs, pretrained weights, nodes."""
    from cad.backbones import describe, list_specs

    rows = [describe(spec) for spec in list_specs()]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="cad backbones")
    for column in (
        "name",
        "source",
        "params (M)",
        "GFLOPs",
        "input",
        "pretrained",
        "cached",
        "nodes",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            r["source"],
            f"{r['params'] / 1e6:.1f}",
            f"{r['gflops']:.2f}",
            str(r["input_size"]),
            "yes" if r["pretrained"] else "no",
            "yes" if r.get("cached") else "no",
            str(r["nodes"]),
        )
    print_table(table)


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
