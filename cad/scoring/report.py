"""``cad score --report-dir DIR``: a self-contained HTML report per scored study (and, with
``--report-pdf``, ``report.pdf`` printed from it by headless Chromium).

``DIR/<study pseudonym>/report.html`` holds the finding (the study's peak calibrated
probability and the decision at the model's threshold), the top slices with their Grad-CAM
maps (PNG, inline as base64; rendered like the ``--dicom-out`` key image), and the
package's model card. PHI-free by default; ``phi=True`` (``--report-phi``) adds the
patient's name, ID and study date from the source header, because the report is about
that study and is read by its radiologist.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cad.errors import CadError
from cad.io.files import replace_text
from cad.io.index import StudyTask
from cad.scoring.dicom_sc import CamMap, render
from cad.scoring.dicom_sr import (
    DISCLAIMER,
    TOP_K,
    DicomResultError,
    frame_number,
    slice_position,
    source_headers,
    top_slices,
)
from cad.scoring.infer import Scored

log = logging.getLogger("cad.scoring")

REPORT_NAME = "report.html"
PDF_NAME = "report.pdf"
NO_INTERVAL = (
    "None stated for a single study: the model gives a point estimate, calibrated on the "
    "validation patients. How well such probabilities held on held-out patients (ECE, Brier "
    "score, sensitivity and specificity with patient-bootstrap intervals) is in the model "
    "card below."
)
STYLE = """
body{font-family:sans-serif;max-width:60em;margin:1em auto;color:#222}
.finding{font-size:1.3em;padding:.5em;border:2px solid #444}
.abnormal{background:#fde2e2}.normal{background:#e6f4e6}
figure{display:inline-block;margin:.5em;text-align:center}
figure img{width:22em}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}
.disclaimer{font-weight:bold;color:#a00}
"""


class ReportError(CadError):
    """The report (or its PDF) cannot be produced as asked."""


def find_chromium() -> str:
    """The headless Chromium that prints the PDF; ReportError naming the fix if absent."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise ReportError(
            "--report-pdf prints the HTML report with headless Chromium, which is not "
            "installed; install it (Debian: apt-get install chromium) or drop --report-pdf"
        )
    return found


def print_pdf(chromium: str, page: Path, pdf: Path) -> None:
    """``page`` (a local HTML file) printed to ``pdf`` by headless Chromium."""
    tmp = pdf.with_name(f".{pdf.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
            + ["--no-pdf-header-footer", f"--print-to-pdf={tmp}", page.resolve().as_uri()],
            capture_output=True,
            timeout=300,
        )
        if done.returncode != 0 or not tmp.is_file():
            raise ReportError(
                f"headless Chromium could not print {page.parent.name}/{page.name} (exit "
                f"{done.returncode}); run `{chromium} --headless --print-to-pdf` by hand "
                "to see why"
            )
        os.replace(tmp, pdf)
    finally:
        tmp.unlink(missing_ok=True)


def card_html(card: str | None) -> str:
    """The model card's markdown as HTML (markdown-it, already installed with rich)."""
    if card is None:
        return "<p>This model package has no model card (written before cad wrote cards).</p>"
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(card)


def png_data_uri(pixels: np.ndarray) -> str:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, pixels, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class ReportModel:
    """What the report says about the model."""

    name: str  # e.g. "cad resnet50 round 1"
    version: str
    threshold: float
    card: str | None  # the package's model_card.md


def _patient_block(source: Dataset) -> str:
    rows = [
        ("Patient name", str(source.get("PatientName", ""))),
        ("Patient ID", str(source.get("PatientID", ""))),
        ("Study date", str(source.get("StudyDate", ""))),
    ]
    cells = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Patient</h2><table>{cells}</table>"


class ReportWriter:
    """Writes ``DIR/<study key>/report.html`` (and ``report.pdf``) per scored study; a study
    whose report cannot be built is logged by pseudonym and skipped."""

    def __init__(
        self,
        directory: Path,
        model: ReportModel,
        secret: bytes,
        cam_map: CamMap,
        phi: bool = False,
        pdf: bool = False,
        k: int = TOP_K,
    ) -> None:
        self.directory, self.model, self.secret, self.cam_map = directory, model, secret, cam_map
        self.phi, self.k = phi, k
        self.chromium = find_chromium() if pdf else None  # fail before scoring starts
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, study: str, name: str = REPORT_NAME) -> Path:
        return self.directory / study / name

    def write(self, scored: Scored, task: StudyTask) -> bool:
        """True when the report was written."""
        try:
            headers = source_headers(scored, task, self.secret, self.k)
        except DicomResultError as exc:
            log.warning("--report-dir: %s", exc)
            return False
        page = self.path(scored.result.study)
        page.parent.mkdir(parents=True, exist_ok=True)
        replace_text(page, self.html(scored, headers))
        if self.chromium is not None:
            print_pdf(self.chromium, page, self.path(scored.result.study, PDF_NAME))
        return True

    def html(self, scored: Scored, headers: dict[str, Dataset]) -> str:
        r, model = scored.result, self.model
        peak = float(np.max(scored.probs))
        abnormal = peak >= model.threshold
        decision = "Abnormal (at or above threshold)" if abnormal else "Normal (below threshold)"
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>cad report {html.escape(r.study)}</title><style>{STYLE}</style></head><body>",
            f"<h1>cad report: study {html.escape(r.study)}</h1>",
            f"<p class='disclaimer'>{DISCLAIMER}</p>",
        ]
        if self.phi:
            parts.append(_patient_block(headers[r.instances[top_slices(scored.probs, 1)[0]]]))
        parts += [
            "<h2>Finding</h2>",
            f"<p class='finding {'abnormal' if abnormal else 'normal'}' id='finding'>"
            f"Probability of cancer {peak:.3f} (calibrated; most suspicious of "
            f"{len(scored.probs)} slices). Decision at threshold {model.threshold:.3f}: "
            f"<b>{decision}</b></p>",
            f"<p><b>Interval of the probability:</b> {NO_INTERVAL}</p>",
            f"<p>Model: {html.escape(model.name)} ({html.escape(model.version)})</p>",
            "<h2>Key slices (Grad-CAM)</h2>",
            *self._figures(scored, headers),
            "<h2>Model card</h2>",
            card_html(model.card),
            "</body></html>",
        ]
        return "\n".join(parts)

    def _figures(self, scored: Scored, headers: dict[str, Dataset]) -> list[str]:
        r, out = scored.result, []
        images = scored.top_images if scored.top_images is not None else []
        for rank, (index, image) in enumerate(
            zip(top_slices(scored.probs, self.k), images, strict=False), start=1
        ):
            source = headers[r.instances[index]]
            where = slice_position(source, frame_number(r, index, headers)).strip()
            caption = (
                f"#{rank}: slice {index + 1} of {len(scored.probs)}"
                f"{', ' + where if where else ''}, p={float(scored.probs[index]):.3f}"
            )
            cam = self.cam_map(image)
            if cam is None:
                cam = np.zeros(image.shape[-2:], np.float32)
                caption += " (no spatial map at the connection node)"
            pixels = render(image[0], cam, caption, DISCLAIMER)
            out.append(
                f"<figure class='key-slice'><img alt='key slice {rank}' "
                f"src='{png_data_uri(pixels)}'><figcaption>{html.escape(caption)}"
                "</figcaption></figure>"
            )
        return out
