"""``cad score --pacs``: stage the query's studies, then score the staged folder with
:func:`cad.scoring.api.score_folder`, the path ``cad score DIR`` takes, so outcomes,
resume and outputs are the same as for a folder holding the same files.

Besides the scoring outputs, ``<out stem>.transfers.csv`` lists every study the query
matched with its transfer outcome (pseudonyms only). The staging folder is deleted after
a run in which every study was retrieved and scored, unless ``keep_staged``.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cad.pacs.client import open_client
from cad.pacs.errors import TransferError
from cad.pacs.fetch import TRANSFER_HEADER, StudyTransfer, fetch
from cad.pacs.query import build_query
from cad.pacs.staging import Staging, default_staging
from cad.phi import Pseudonymizer, load_secret
from cad.scoring.summary import EXIT_PARTIAL, ScoreSummary

log = logging.getLogger("cad.pacs")


@dataclass
class PacsScoreSummary(ScoreSummary):
    """A scoring summary plus what happened to each study of the query."""

    transfers: list[StudyTransfer] = field(default_factory=list)
    transfers_csv: str = ""
    staging: str = ""
    staging_kept: bool = False

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.transfers)


def transfers_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.transfers.csv")


def write_transfers(path: Path, transfers: list[StudyTransfer]) -> None:
    """The transfer report, replaced atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRANSFER_HEADER)
        writer.writerows(t.row() for t in transfers)
    os.replace(tmp, path)


def score_pacs(
    model: str | Path,
    pacs: str,
    out: str | Path,
    *,
    study_date: str | None = None,
    accessions: str | Path | None = None,
    patients: str | Path | None = None,
    calling_aet: str | None = None,
    staging: str | Path | None = None,
    keep_staged: bool = False,
    timeout: float = 30.0,
    progress: bool = True,
    _on_file: Callable[[], None] = lambda: None,
    **score_options,
) -> PacsScoreSummary:
    """Query ``pacs`` (DICOMweb or DIMSE URL), stage the matching studies, score them.

    ``score_options`` go to :func:`cad.scoring.api.score_folder` (errors, level,
    batch_size, workers, resume, cam_dir, key_map, tracking_uri). Raises PacsError when the
    PACS cannot be queried or no study could be retrieved; a study that fails to transfer
    is an outcome in the transfer report (exit code 1), the others are scored.
    """
    from cad.scoring.api import score_folder

    out = Path(out)
    filters = build_query(
        study_date,
        Path(accessions) if accessions is not None else None,
        Path(patients) if patients is not None else None,
    )
    client = open_client(pacs, calling_aet, timeout)
    area = Staging(staging if staging is not None else default_staging(out)).open()
    log.info("staging retrieved studies (patient data) in %s", area.root)
    pseudo = Pseudonymizer(load_secret(out.parent))  # the secret lives beside the outputs
    try:
        transfers = fetch(client, filters, area, pseudo, _on_file)
    finally:
        client.close()
    write_transfers(transfers_path(out), transfers)
    staged = [t for t in transfers if t.staged]
    if not staged:
        raise TransferError(
            f"no study could be retrieved from the PACS at {client.target.url}: "
            f"{transfers[0].reason}; see {transfers_path(out)}"
        )
    scored = score_folder(model, area.studies, out, progress=progress, **score_options)
    summary = PacsScoreSummary(**vars(scored))
    summary.transfers, summary.transfers_csv = transfers, str(transfers_path(out))
    if len(staged) < len(transfers):
        summary.exit_code = max(summary.exit_code, EXIT_PARTIAL)
        log.warning(
            "%d of %d studies were not retrieved (see %s); rerun the same command to fetch "
            "them (staged studies are not fetched again)",
            len(transfers) - len(staged),
            len(transfers),
            summary.transfers_csv,
        )
    summary.staging_kept = keep_staged or len(staged) < len(transfers)
    summary.staging = str(area.root)
    if not summary.staging_kept:
        area.delete()
    return summary
