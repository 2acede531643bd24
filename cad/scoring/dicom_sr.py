"""DICOM results of ``cad score --dicom-out``: one Comprehensive SR per scored study.

The SR goes back into the patient's own study, so it carries the study's real patient and
study attributes, copied (by highdicom) from the source headers: the one place cad writes
identifiers. It is filed under the study's pseudonym (``DIR/<study key>/sr.dcm``), never
under a UID or patient ID, and nothing about it reaches the CSVs or logs.

Content tree (codes from DCM/SCT; highdicom builds and checks the items)::

    CONTAINER  CAD Processing and Findings Summary
      TEXT     Algorithm Name       e.g. "cad resnet50 round 1"
      TEXT     Algorithm Version    cad version and model package digest
      TEXT     Comment              the intended-use disclaimer
      NUM      Probability of cancer  study max of calibrated slice probabilities
      NUM      Threshold Value      the model's decision threshold
      CODE     Finding              Abnormal (max >= threshold) | Normal
      CONTAINER Key Images          top-k slices, most suspicious first
        CONTAINER Single Image Finding
          NUM    Probability of cancer  that slice's calibrated probability
          IMAGE  Source image           SOP Class / Instance UID of its file
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cad import __version__
from cad.errors import CadError
from cad.io.index import StudyTask
from cad.phi import Pseudonymizer
from cad.scoring.infer import Scored

log = logging.getLogger("cad.scoring")

DISCLAIMER = "Research use only; not for diagnostic use"
TOP_K = 3
SR_NAME = "sr.dcm"
SERIES_NUMBER = 9901  # cad's results series in the study (a high number, after the scans)
MANUFACTURER = "cad"

CAD_SUMMARY = CodedConcept("111017", "DCM", "CAD Processing and Findings Summary")
PROBABILITY_UNIT = CodedConcept("1", "UCUM", "no units")
CONTAINS = RelationshipTypeValues.CONTAINS
# Type 2 study/patient attributes highdicom reads from the evidence: empty when absent.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber")
TYPE2 += ("StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


class DicomResultError(CadError):
    """A DICOM result could not be built for a scored study (its source files changed)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the SR says about the model."""

    name: str  # e.g. "cad resnet50 round 1"
    version: str  # cad version and package digest
    threshold: float

    @classmethod
    def from_package(cls, backbone: str, round_: int, threshold: float, sums: str) -> ModelInfo:
        digest = hashlib.sha256(sums.encode()).hexdigest()[:16]
        return cls(
            f"cad {backbone} round {round_}", f"cad {__version__}; package {digest}", threshold
        )


def top_slices(probs: np.ndarray, k: int = TOP_K) -> list[int]:
    """Indices of the ``k`` highest probabilities, highest first (ties: the lower index)."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:k]]


def _headers(task: StudyTask, wanted: set[str], pseudo: Pseudonymizer) -> dict[str, Dataset]:
    """Source headers (no pixels) of the instances whose keys are ``wanted``."""
    found: dict[str, Dataset] = {}
    for path in task.paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - a file that changed is reported below
            continue
        key = pseudo.instance(str(ds.get("SOPInstanceUID", "")))
        if key in wanted and key not in found:
            found[key] = ds
            if len(found) == len(wanted):
                break
    return found


def _evidence(ds: Dataset) -> Dataset:
    """A copy of a source header with every Type 2 attribute highdicom reads present."""
    copy = Dataset(ds)
    for keyword in TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy


def build_sr(
    scored: Scored, task: StudyTask, model: ModelInfo, secret: bytes, k: int = TOP_K
) -> ComprehensiveSR:
    """The SR of one scored study (``scored.probs`` non-empty, ``task`` its files)."""
    r, pseudo = scored.result, Pseudonymizer(secret)
    top = top_slices(scored.probs, k)
    wanted = {r.instances[i] for i in top}
    headers = _headers(task, wanted, pseudo)
    if len(headers) != len(wanted):
        raise DicomResultError(
            f"study {r.study}: {len(wanted) - len(headers)} source file(s) of its top slices "
            "could not be re-read (changed or removed since scoring); rerun cad score"
        )
    peak = float(np.max(scored.probs))
    finding = codes.SCT.Abnormal if peak >= model.threshold else codes.SCT.Normal
    root = ContainerContentItem(CAD_SUMMARY, template_id=None)
    items = [
        TextContentItem(codes.DCM.AlgorithmName, model.name, CONTAINS),
        TextContentItem(codes.DCM.AlgorithmVersion, model.version, CONTAINS),
        TextContentItem(codes.DCM.Comment, DISCLAIMER, CONTAINS),
        NumContentItem(codes.DCM.ProbabilityOfCancer, peak, PROBABILITY_UNIT, None, CONTAINS),
        NumContentItem(
            codes.DCM.ThresholdValue, float(model.threshold), PROBABILITY_UNIT, None, CONTAINS
        ),
        CodeContentItem(codes.DCM.Finding, finding, CONTAINS),
    ]
    key_images = ContainerContentItem(codes.DCM.KeyImages, relationship_type=CONTAINS)
    key_images.ContentSequence = [
        _slice_finding(headers[r.instances[i]], scored.probs[i]) for i in top
    ]
    root.ContentSequence = [*items, key_images]
    evidence = [_evidence(headers[key]) for key in dict.fromkeys(r.instances[i] for i in top)]
    # Stable UIDs per (study, model): re-writing a study's SR replaces it, never duplicates.
    seed = [r.study, model.version]
    return ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[*seed, "sr"]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"cad results ({DISCLAIMER})"[:64],
    )


def _slice_finding(source: Dataset, prob: float) -> ContainerContentItem:
    item = ContainerContentItem(codes.DCM.SingleImageFinding, relationship_type=CONTAINS)
    item.ContentSequence = [
        NumContentItem(
            codes.DCM.ProbabilityOfCancer, float(prob), PROBABILITY_UNIT, None, CONTAINS
        ),
        ImageContentItem(
            codes.DCM.SourceImage,
            source.SOPClassUID,
            source.SOPInstanceUID,
            relationship_type=CONTAINS,
        ),
    ]
    return item


def save_atomic(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class SrWriter:
    """Writes ``DIR/<study key>/sr.dcm`` for each scored study; a study whose SR cannot be
    built is logged (by pseudonym) and skipped, never aborting the run."""

    def __init__(self, directory: Path, model: ModelInfo, secret: bytes, k: int = TOP_K) -> None:
        self.directory = directory
        self.model = model
        self.secret = secret
        self.k = k
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, study: str) -> Path:
        return self.directory / study / SR_NAME

    def write(self, scored: Scored, task: StudyTask) -> bool:
        """True when the SR was written."""
        try:
            sr = build_sr(scored, task, self.model, self.secret, self.k)
        except DicomResultError as exc:
            log.warning("--dicom-out: %s", exc)
            return False
        save_atomic(sr, self.path(scored.result.study))
        return True
