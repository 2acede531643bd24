"""Batch scoring of DICOM folders (``cad score``).

- ``api``: ``score_folder``, what the CLI, tests and notebooks call.
- ``cli``: the typer shell that ``cad score`` registers (imports nothing heavy).
- ``stream``: folder walk, header pass and per-study decoding in worker processes.
- ``run``: one pass over the indexed folder: predict, write, commit per patient.
- ``infer``: batching slices across studies, inference, per-study/patient aggregation.
- ``writers``: predictions/errors/key-map CSVs and the resume sidecar.
- ``summary``: the counts and exit code a run reports.
- ``cam``: Grad-CAM overlays at the model's connection node.
- ``dicom_sr``: ``--dicom-out``: a DICOM Comprehensive SR per scored study (highdicom).
- ``report``: ``--report-dir``: a self-contained HTML (and PDF) report per scored study.

Nothing is imported here, so that ``cad --help`` stays fast.
"""
