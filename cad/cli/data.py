"""``cad data``: check a DICOM folder, generate the phantom, build manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cad.cli.app import EXIT_OK, EXIT_PARTIAL, data_app, handle_errors
from cad.errors import CadError
from cad.io.files import refuse_symlink
from cad.log import console, print_table


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
    from cad.io.check import check_folder
    from cad.log import progress
    from cad.phi import Pseudonymizer, load_secret

    if not dicom_dir.is_dir():
        raise CadError(f"{dicom_dir} is not a folder; pass the root of a DICOM export")
    refuse_symlink(report, "--report")
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
    print_table(table)
    if report is not None:
        result.write_report(report, Pseudonymizer(load_secret(report.parent)))
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
    from cad.phi import Pseudonymizer, load_secret

    refuse_symlink(out, "--out")

    if (boxes is None) == (series_labels is None):
        raise CadError(
            "give exactly one label source: --boxes Annotation_Boxes.csv or "
            "--series-labels labels.csv"
        )
    pseudo = Pseudonymizer(load_secret(out.parent))  # the secret lives beside the output
    if boxes is not None:
        rows = build_from_boxes(
            dicom_root,
            boxes,
            margin=margin,
            unboxed=unboxed,
            numbering=numbering,
            workers=workers,
            pseudonymizer=pseudo,
        )
    else:
        rows = build_from_series_labels(dicom_root, series_labels, pseudonymizer=pseudo)
    write_manifest(rows, out)
    positives = sum(r.label for r in rows)
    console.print(
        f"{len(rows)} rows ({positives} positive) from "
        f"{len({r.patient_id for r in rows})} patients -> {out}"
    )
