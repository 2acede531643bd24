"""The PACS options of ``cad score`` and the ``cad pacs send`` command (typer shells).

Imported when the ``cad`` CLI starts: nothing heavy at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Pacs = Annotated[
    str | None,
    typer.Option(
        help="Score studies from a PACS instead of DICOM_DIR: http://host:port/dicom-web "
        "(DICOMweb) or dicom://CALLED_AET@host:port (DIMSE). Credentials: CAD_PACS_USER / "
        "CAD_PACS_PASSWORD or CAD_PACS_CREDENTIALS (a 0600 JSON file), never an option.",
    ),
]
StudyDate = Annotated[
    str | None, typer.Option(help="With --pacs: studies of these dates, YYYYMMDD[-YYYYMMDD].")
]
Accessions = Annotated[
    Path | None, typer.Option(help="With --pacs: a file of accession numbers, one per line.")
]
Patients = Annotated[
    Path | None,
    typer.Option(
        help="With --pacs: a CSV pseudonym,patient_id (or a cad key map): those patients' studies."
    ),
]
CallingAet = Annotated[
    str, typer.Option(help="Our DICOM AE title for dicom:// PACS (the PACS must know it).")
]
Staging = Annotated[
    Path | None,
    typer.Option(
        help="With --pacs: private folder (0700) for retrieved studies (patient data). "
        "Default: <out stem>.staged next to --out."
    ),
]
KeepStaged = Annotated[
    bool,
    typer.Option(
        "--keep-staged", help="With --pacs: keep the staged studies after a successful run."
    ),
]


SendResults = Annotated[
    bool,
    typer.Option(
        "--send-results",
        help="With --pacs and --dicom-out: store the written SR and key images back into the "
        "PACS (STOW-RS or C-STORE) after scoring.",
    ),
]


def send_back(pacs: str, dicom_out: Path, calling_aet: str) -> int:
    """Store what --dicom-out holds into the PACS; the exit code of that part (0 or 1)."""
    from cad.log import console
    from cad.pacs.send import send_results

    if not any(dicom_out.rglob("*.dcm")):
        console.print("no DICOM results were written, so none were sent")
        return 0
    report = send_results(pacs, dicom_out, calling_aet)
    console.print(
        f"results stored into the PACS: {len(report.stored)} of "
        f"{len(report.stored) + len(report.failed)} files"
    )
    return report.exit_code


def check_source(dicom_dir: Path | None, pacs: str | None, pacs_options: dict) -> None:
    """Exactly one input: a folder or a PACS; the PACS options only with a PACS."""
    from cad.errors import CadError

    if (dicom_dir is None) == (pacs is None):
        raise CadError(
            "pass either DICOM_DIR (a folder) or --pacs URL (a PACS), not "
            + ("both" if pacs else "neither")
        )
    used = [name for name, value in pacs_options.items() if value not in (None, False)]
    if pacs is None and used:
        raise CadError(f"{', '.join(used)} only apply with --pacs URL")


def print_transfers(summary) -> None:
    """The transfer part of a ``cad score --pacs`` summary."""
    from cad.log import console

    counts: dict[str, int] = {}
    for transfer in summary.transfers:
        counts[transfer.outcome] = counts.get(transfer.outcome, 0) + 1
    detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    console.print(f"studies from the PACS: {detail}\ntransfers: {summary.transfers_csv}")
    if summary.staging_kept:
        console.print(
            f"staged studies (patient data, keep private; delete when done): {summary.staging}"
        )
    else:
        console.print("staged studies deleted")


def send_command(
    files: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (e.g. what --dicom-out wrote).")
    ],
    pacs: Annotated[
        str,
        typer.Option(help="http://host:port/dicom-web (STOW-RS) or dicom://AET@host:port."),
    ],
    calling_aet: CallingAet = "CAD",
) -> None:
    """Store DICOM files into a PACS (STOW-RS or C-STORE). Exit 0: all stored; 1: some
    files were refused (listed by pseudonymous file key); 2: PACS unreachable or
    credentials refused."""
    from cad.log import console
    from cad.pacs.send import expand, secret_folder, send_results
    from cad.phi import Pseudonymizer, load_secret

    report = send_results(pacs, list(files), calling_aet)
    pseudo = Pseudonymizer(load_secret(secret_folder(expand(list(files)))))
    for path, error in report.failed.items():
        console.print(f"not stored: {pseudo.file(path)}: {error}", highlight=False)
    console.print(
        f"stored {len(report.stored)} of {len(report.stored) + len(report.failed)} "
        f"files into {report.pacs}"
    )
    raise typer.Exit(report.exit_code)
