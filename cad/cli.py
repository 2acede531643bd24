"""The ``cad`` command: a thin typer shell over :mod:`cad.api` and the data tools.

Exit codes: 0 success; 1 partial failure (some input files unusable, the rest processed);
2 usage, configuration, weights or model errors (nothing was done).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cad import __version__
from cad.errors import CadError
from cad.log import console, setup_logging

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2

app = typer.Typer(
    help="cad: breast-MRI computer-aided diagnosis by transfer learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="DICOM tools: check a folder, generate the phantom, build manifests.", no_args_is_help=True
)
backbones_app = typer.Typer(
    help="The backbone registry: list networks, inspect candidate nodes.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(backbones_app, name="backbones")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """CadError -> a one-paragraph message and exit code 2 (no traceback for users)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CadError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"cad {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose=verbose)


@app.command()
@handle_errors
def run(
    pipeline: Annotated[
        Path, typer.Argument(help="Pipeline YAML, e.g. pipelines/breast_mri.yaml.")
    ],
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Working directory for artifacts, report, "
            "MLflow db. Default: runs/<pipeline name>."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config value, e.g. --set finetune.epochs=2 (repeatable)."
        ),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            help="Redo this stage even if finished: "
            "phantom, manifest, ingest, split, augment, extract, probe, finetune, "
            "evaluate (repeatable)."
        ),
    ] = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="Skip MLflow logging.")] = False,
) -> None:
    """Run the pipeline: data -> per-layer probe -> fine-tune -> evaluate -> report + MLflow.

    Finished stages are reused; a changed stage config redoes that stage and what follows.
    """
    from cad.config import load_config
    from cad.errors import did_you_mean

    cfg = load_config(pipeline, set_ or [])  # fail fast, before the heavy imports
    stages = [
        "phantom",
        "manifest",
        "ingest",
        "split",
        "augment",
        "extract",
        "probe",
        "finetune",
        "evaluate",
    ]
    for stage in force or []:
        if stage not in stages:
            raise CadError(f"--force: unknown stage '{stage}';{did_you_mean(stage, stages)}")
    workdir = workdir or Path("runs") / cfg.name
    setup_logging(workdir / "logs" / "run.log")
    from cad.api import run_pipeline

    result = run_pipeline(cfg, workdir, force=force or [], track=not no_track)
    summary = result.summary
    table = Table(title=f"cad run: {cfg.name}")
    for column in (
        "backbone",
        "round",
        "fine-tuning node",
        "connection node",
        "val F1",
        "test F1",
        "test AUC",
    ):
        table.add_column(column)
    for r in summary["results"]:
        table.add_row(
            r["backbone"],
            str(r["round"]),
            r["nodes"]["finetune"],
            r["nodes"]["connection"],
            f"{r['val_f1']:.3f}",
            f"{r['test']['f1']['value']:.3f}",
            f"{r['test']['roc_auc']['value']:.3f}",
        )
    console.print(table)
    tracking = summary.get("tracking") or {}
    if tracking and not tracking.get("ok", True):
        console.print(
            f"[bold yellow]MLflow logging failed[/] ({tracking['uri']}); all artifacts "
            "are on disk. See report.md."
        )
    console.print(f"report: {workdir / 'report.md'}\nsummary: {workdir / 'summary.json'}")
    if tracking.get("ok"):
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {tracking['uri']}")


@data_app.command("check")
@handle_errors
def data_check(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder tree of DICOM files.")],
    report: Annotated[
        Path | None,
        typer.Option(help="Write a per-file CSV report (pseudonymous file keys, outcome, reason)."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Header-reading worker processes.")] = 2,
) -> None:
    """Give every file one typed outcome; exit 0 when all are usable, 1 when some are not."""
    from cad.data.check import check_folder
    from cad.log import progress
    from cad.phi import Pseudonymizer, load_secret

    if not dicom_dir.is_dir():
        raise CadError(f"{dicom_dir} is not a folder; pass the root of a DICOM export")
    with progress("check", None, "steps") as advance:
        seen = [0]

        def update(done: int, total: int) -> None:  # check_folder reports cumulative counts
            advance(done - seen[0])
            seen[0] = done

        result = check_folder(dicom_dir, workers=workers, progress=update)
    table = Table(title="DICOM check")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome, count in sorted(result.summary().items()):
        table.add_row(str(outcome), str(count))
    console.print(table)
    if report is not None:
        result.write_report(report, Pseudonymizer(load_secret()))
        console.print(f"report: {report}")
    raise typer.Exit(EXIT_OK if result.all_ok else EXIT_PARTIAL)


@data_app.command("phantom")
@handle_errors
def data_phantom(
    out: Annotated[Path, typer.Option(help="Output folder (dicom/ and Annotation_Boxes.csv).")],
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 36,
    slices: Annotated[int, typer.Option(help="Slices per series.")] = 24,
    size: Annotated[int, typer.Option(help="Matrix size in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
    lesion_fraction: Annotated[float, typer.Option(help="Share of patients with a lesion.")] = 0.6,
) -> None:
    """Write the deterministic synthetic breast DCE-MRI phantom as real DICOM files."""
    from cad.data.phantom import generate_phantom
    from cad.log import progress

    with progress("phantom", patients, "patients") as advance:
        info = generate_phantom(
            out,
            patients=patients,
            slices=slices,
            size=size,
            seed=seed,
            lesion_fraction=lesion_fraction,
            progress=lambda done, total: advance(1),
        )
    console.print(
        f"{info.files} DICOM files for {info.patients} patients "
        f"({info.lesion_patients} with a lesion) in {info.dicom_root}; "
        f"labels: {info.boxes_csv}"
    )


@data_app.command("manifest")
@handle_errors
def data_manifest(
    dicom_root: Annotated[Path, typer.Option(help="Data root (patient/study/series folders).")],
    out: Annotated[Path, typer.Option(help="Manifest CSV to write, e.g. data_manifests/duke.csv.")],
    boxes: Annotated[
        Path | None, typer.Option(help="Duke Annotation_Boxes.csv (slice labels).")
    ] = None,
    series_labels: Annotated[
        Path | None, typer.Option(help="Per-series label CSV instead (patient_id,path,label).")
    ] = None,
    margin: Annotated[
        int, typer.Option(help="Negatives at least this many slices from a box.")
    ] = 5,
    unboxed: Annotated[
        str, typer.Option(help="Patients without a box: skip or negative.")
    ] = "skip",
    numbering: Annotated[
        str,
        typer.Option(
            help="How box slice numbers count: 'position' (along "
            "the sorted volume) or 'instance' (InstanceNumber "
            "order). Check one patient by eye first."
        ),
    ] = "position",
    workers: Annotated[int, typer.Option(help="Header-reading worker processes.")] = 1,
) -> None:
    """Build a slice-level manifest from bounding boxes (or per-series labels)."""
    from cad.data.manifest import build_from_boxes, build_from_series_labels, write_manifest

    if (boxes is None) == (series_labels is None):
        raise CadError(
            "give exactly one label source: --boxes Annotation_Boxes.csv or "
            "--series-labels labels.csv"
        )
    if boxes is not None:
        rows = build_from_boxes(
            dicom_root, boxes, margin=margin, unboxed=unboxed, numbering=numbering, workers=workers
        )
    else:
        rows = build_from_series_labels(dicom_root, series_labels)
    write_manifest(rows, out)
    positives = sum(r.label for r in rows)
    console.print(
        f"{len(rows)} rows ({positives} positive) from "
        f"{len({r.patient_id for r in rows})} patients -> {out}"
    )


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
    console.print(table)


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
    console.print(table)


def _register_score() -> None:
    from cad.scoring.cli import score_command

    app.command("score")(handle_errors(score_command))


_register_score()


def entrypoint() -> None:  # pragma: no cover - console script
    sys.exit(app())
