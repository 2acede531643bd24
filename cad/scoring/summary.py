"""What a scoring run reports: counts, exit code, output paths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

EXIT_OK, EXIT_PARTIAL = 0, 1


@dataclass
class ScoreSummary:
    """Counts of one ``score_folder`` run (a resumed run reports the whole folder)."""

    files: int = 0
    studies: int = 0
    studies_scored: int = 0
    slices: int = 0
    scored_files: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # files not scored, by outcome
    cams: int = 0
    dicom_results: int = 0  # SR documents written (--dicom-out)
    reports: int = 0  # HTML reports written (--report-dir)
    exit_code: int = EXIT_OK
    seconds: float = 0.0
    resumed: bool = False
    predictions: str = ""
    errors_csv: str = ""
    key_map: str = ""

    @property
    def error_files(self) -> int:
        return sum(self.errors.values())

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0


def summary_from_counts(counts: dict, files: int) -> ScoreSummary:
    """A ScoreSummary from the running counts a Run keeps (and the sidecar stores)."""
    errors = dict(sorted(Counter(counts.get("errors", {})).items()))
    names = ("studies", "studies_scored", "slices", "scored_files", "skipped", "cams")
    names += ("dicom_results", "reports")
    summary = ScoreSummary(files=files, errors=errors, **{k: counts.get(k, 0) for k in names})
    summary.exit_code = EXIT_PARTIAL if summary.error_files else EXIT_OK
    return summary


def progress_or_nothing(
    enabled: bool, description: str, total: int | None, unit: str
) -> AbstractContextManager[Callable[[int], None]]:
    """``cad.log.progress`` when enabled, else a context yielding a no-op ``advance``."""
    if enabled:
        from cad.log import progress

        return progress(description, total, unit)
    return nullcontext(lambda n=1: None)
