"""Scoring from a PACS versus from a folder: the same phantom export scored from disk, then
retrieved from a real Orthanc on loopback over DICOMweb (QIDO/WADO-RS) and DIMSE (C-FIND,
C-GET) and scored; prints each wall time, its ratio to the folder and whether the
predictions are byte-identical. Needs the Debian packages orthanc and orthanc-dicomweb.

    .venv/bin/python -m benchmarks.pacs_throughput [--patients 6] [--slices 24] [--size 128]

Uses the test suite's Orthanc launcher (tests/pacs/orthanc_server.py) and tiny model
(tests/scoring/score_helpers.py): the benchmark measures transport, not the network.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests/pacs"), str(ROOT / "tests/scoring"), str(ROOT / "tests")]
    os.environ.setdefault("CAD_SECRET", secrets.token_hex(32))
    from orthanc_server import CAD_AET, PASSWORD, USER, Orthanc, dicom_files
    from score_helpers import make_model, package_meta

    from cad.data.phantom import generate_phantom
    from cad.finetune.package import save_package
    from cad.pacs.score import score_pacs
    from cad.scoring.api import score_folder

    tmp = Path(tempfile.mkdtemp(prefix="cad-pacs-bench-"))
    package = tmp / "model"
    save_package(make_model(), package_meta(0.5), package)
    info = generate_phantom(
        tmp / "phantom", patients=args.patients, slices=args.slices, size=args.size, seed=1,
        workers=args.workers,
    )  # fmt: skip
    files = dicom_files(info.dicom_root)
    orthanc = Orthanc(tmp / "orthanc").start()
    try:
        orthanc.upload(files)
        os.environ["CAD_PACS_USER"], os.environ["CAD_PACS_PASSWORD"] = USER, PASSWORD
        options = dict(level="patient", workers=args.workers, progress=False)
        start = time.perf_counter()
        scored = score_folder(package, info.dicom_root, tmp / "folder.csv", **options)
        folder_s = time.perf_counter() - start
        print(f"{len(files)} files, {scored.slices} slices scored")
        print(f"{'source':<10} {'wall s':>8} {'x folder':>9}  identical")
        print(f"{'folder':<10} {folder_s:8.1f} {1.0:9.2f}  -")
        for name, url in (("dicomweb", orthanc.dicomweb_url), ("dimse", orthanc.dimse_url)):
            out = tmp / f"{name}.csv"
            start = time.perf_counter()
            score_pacs(
                package, url, out, study_date="19000101-20991231", calling_aet=CAD_AET,
                **options,
            )  # fmt: skip
            took = time.perf_counter() - start
            same = out.read_bytes() == (tmp / "folder.csv").read_bytes()
            print(f"{name:<10} {took:8.1f} {took / folder_s:9.2f}  {same}")
    finally:
        orthanc.stop()


if __name__ == "__main__":
    main()
