"""Input archives: the generated phantom (DICOM + boxes) and a slice-label manifest."""

from __future__ import annotations

from pathlib import Path

from cad.artifacts.base import Artifact


class PhantomArchive(Artifact):
    """The phantom written as a TCIA download (:func:`cad.data.phantom.generate_phantom`):
    ``dicom/``, Duke's ``Annotation_Boxes.csv`` and ``phantom.json``."""

    kind = "phantom"
    DICOM_DIR = "dicom"
    BOXES_CSV = "Annotation_Boxes.csv"
    INFO = "phantom.json"

    @property
    def dicom_root(self) -> Path:
        return self.path / self.DICOM_DIR

    @property
    def boxes_csv(self) -> Path:
        return self.path / self.BOXES_CSV


class ManifestFile(Artifact):
    """One manifest CSV (``data_manifests/README.md`` schema) built from an archive."""

    kind = "manifest"
    CSV = "manifest.csv"

    @property
    def csv(self) -> Path:
        return self.path / self.CSV

    @classmethod
    def csv_in(cls, out: Path) -> Path:
        return out / cls.CSV
