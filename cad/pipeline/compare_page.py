"""``cad compare --html``: one self-contained page (table and plots inline) comparing the
backbones of one or more finished runs, for a browser or an e-mail attachment."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from cad.artifacts.summary import RunDir

PLOTS = (
    (RunDir.COMPARISON, "Layer F1 by relative depth (best node starred, chance dashed)"),
    (RunDir.COMPARISON_METRICS, "Test F1 and ROC AUC with 95% patient-bootstrap intervals"),
    (RunDir.COMPARISON_ROC, "Test ROC curves"),
)
STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%;text-align:left}"
    "th{background:#f3f3f3}figure{display:inline-block;margin:1em 1em 0 0}"
    "img{max-width:560px;border:1px solid #eee}figcaption{font-size:85%;color:#555}"
)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def write_compare_page(rows: Sequence[dict[str, str]], runs: Sequence[RunDir], path: Path) -> Path:
    """Write the page; plots a run does not have (older runs) are left out."""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cad compare</title>"
        f"<style>{STYLE}</style></head><body><h1>cad compare</h1>"
        f"<table><tr>{head}</tr>{body}</table>"
    ]
    for run in runs:
        figures = [
            f"<figure>{_image(run.file(name))}<figcaption>{html.escape(caption)}</figcaption>"
            "</figure>"
            for name, caption in PLOTS
            if run.file(name).is_file()
        ]
        if figures:
            parts.append(f"<h2>{html.escape(run.root.name)}</h2>" + "".join(figures))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path
