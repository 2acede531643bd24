"""``cad doctor``: what this machine offers cad (CPU class, precision, GPU, libraries)."""

from __future__ import annotations

import json
import platform
from typing import Annotated, Any

import typer

from cad.cli.app import app, handle_errors
from cad.log import print_table


def machine_report() -> dict[str, Any]:
    import torch
    import torchvision

    from cad import __version__
    from cad.cpu import cpu_info
    from cad.device import resolved_precision

    return {
        "cad": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu": cpu_info().as_dict(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "precision_auto": resolved_precision("auto"),
    }


@app.command()
@handle_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the CPU class (ISA level, bf16, AMX, VNNI, cores), GPU and the precision
    `precision: auto` resolves to here: the machine every speed figure should name."""
    report = machine_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # never truncate a value into something uncopyable
    cpu = report.pop("cpu")
    for key in ("model", "cpu_class", "label", "isa", "bf16", "amx", "vnni", "cores"):
        table.add_row(f"cpu.{key}", str(cpu[key]))
    for key, value in report.items():
        table.add_row(key, str(value))
    print_table(table)
