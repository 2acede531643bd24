"""DICOM results of ``cad score --dicom-out``: one Comprehensive SR per scored study,
and the key image of its top slice (``cad.scoring.dicom_sc``) beside it.

The SR goes back into the patient's own study, so it carries the study's real patient and
study attributes, copied (by highdicom) from the source headers: the one place cad writes
identifiers. It is filed under the study's pseudonym (``DIR/<study key>/sr.dcm``,
``key_image.dcm``), never under a UID or patient ID, and nothing about it reaches the
CSVs or logs.

Content tree (codes from DCM/SCT; highdicom builds and checks the items)::

    CONTAINER  CAD Processing and Findings Summary
      TEXT     Algorithm Name       e.g. "cad resnet50 round 1"
      TEXT     Algorithm Version    cad version, package digest (and MLflow URI)
      TEXT     Comment              the intended-use disclaimer
      NUM      Probability of cancer  study max of calibrated slice probabilities
      NUM      Threshold Value      the model's decision threshold
      CODE     Finding              Abnormal (max >= threshold) | Normal
      CONTAINER Key Images          top-k slices, most suspicious first
        CONTAINER Single Image Finding
          NUM    Probability of cancer  that slice's calibrated probability
          IMAGE  Source image           SOP Class / Instance UID of its file
                                        (and frame number in a multi-frame file)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
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
from cad.scoring.dicom_sc import build_key_image, geometry
from cad.scoring.infer import Scored
from cad.scoring.stream import StudyResult

log = logging.getLogger("cad.scoring")

DISCLAIMER = "Research use only; not for diagnostic use"
TOP_K = 3
SR_NAME = "sr.dcm"
KEY_IMAGE_NAME = "key_image.dcm"
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
    def from_package(
        cls, backbone: str, round_: int, threshold: float, sums: str, uri: str = ""
    ) -> ModelInfo:
        """``sums``: the package's SHA256SUMS text; ``uri``: the model's MLflow URI
        (``runs:/...``, ``models:/...``), named in the version; a local path is not."""
        digest = hashlib.sha256(sums.encode()).hexdigest()[:16]
        version = f"cad {__version__}; package {digest}"
        if uri.startswith(("runs:/", "models:/")):
            version += f"; MLflow {uri}"
        return cls(f"cad {backbone} round {round_}", version, threshold)


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


def source_headers(
    scored: Scored, task: StudyTask, secret: bytes, k: int = TOP_K
) -> dict[str, Dataset]:
    """Instance key -> source header of the study's top-``k`` slices."""
    r = scored.result
    wanted = {r.instances[i] for i in top_slices(scored.probs, k)}
    headers = _headers(task, wanted, Pseudonymizer(secret))
    if len(headers) != len(wanted):
        raise DicomResultError(
            f"study {r.study}: {len(wanted) - len(headers)} source file(s) of its top slices "
            "could not be re-read (changed or removed since scoring); rerun cad score"
        )
    return headers


def build_sr(
    scored: Scored, task: StudyTask, model: ModelInfo, secret: bytes, k: int = TOP_K
) -> ComprehensiveSR:
    """The SR of one scored study (``scored.probs`` non-empty, ``task`` its files)."""
    return sr_from_headers(scored, source_headers(scored, task, secret, k), model, k)


def sr_from_headers(
    scored: Scored, headers: dict[str, Dataset], model: ModelInfo, k: int = TOP_K
) -> ComprehensiveSR:
    r = scored.result
    top = top_slices(scored.probs, k)
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
        _slice_finding(headers[r.instances[i]], scored.probs[i], frame_number(r, i, headers))
        for i in top
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


def frame_number(r: StudyResult, index: int, headers: dict[str, Dataset]) -> int | None:
    """The 1-based frame of slice ``index`` in a multi-frame source; None for one frame."""
    source = headers[r.instances[index]]
    if int(source.get("NumberOfFrames") or 1) < 2 or len(r.frames) <= index:
        return None
    return r.frames[index] + 1


def _slice_finding(source: Dataset, prob: float, frame: int | None) -> ContainerContentItem:
    item = ContainerContentItem(codes.DCM.SingleImageFinding, relationship_type=CONTAINS)
    item.ContentSequence = [
        NumContentItem(
            codes.DCM.ProbabilityOfCancer, float(prob), PROBABILITY_UNIT, None, CONTAINS
        ),
        ImageContentItem(
            codes.DCM.SourceImage,
            source.SOPClassUID,
            source.SOPInstanceUID,
            referenced_frame_numbers=frame,
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
    """Writes ``DIR/<study key>/sr.dcm`` (and, with a ``cam_map``, ``key_image.dcm``) for
    each scored study; a study whose results cannot be built is logged (by pseudonym) and
    skipped, never aborting the run."""

    def __init__(
        self,
        directory: Path,
        model: ModelInfo,
        secret: bytes,
        k: int = TOP_K,
        cam_map: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        self.directory = directory
        self.model = model
        self.secret = secret
        self.k = k
        self.cam_map = cam_map  # dicom_sc.CamMap: the key image's Grad-CAM
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def key_images(self) -> bool:
        """Whether the run must keep each study's top slice (for the key image)."""
        return self.cam_map is not None

    def path(self, study: str, name: str = SR_NAME) -> Path:
        return self.directory / study / name

    def write(self, scored: Scored, task: StudyTask) -> bool:
        """True when the SR was written."""
        try:
            headers = source_headers(scored, task, self.secret, self.k)
        except DicomResultError as exc:
            log.warning("--dicom-out: %s", exc)
            return False
        save_atomic(
            sr_from_headers(scored, headers, self.model, self.k), self.path(scored.result.study)
        )
        if self.cam_map is not None and scored.top_image is not None:
            self._key_image(scored, headers)
        return True

    def _key_image(self, scored: Scored, headers: dict[str, Dataset]) -> None:
        cam = self.cam_map(scored.top_image)
        if cam is None:
            log.warning("--dicom-out: the connection node has no spatial map; no key images")
            self.cam_map = None
            return
        r = scored.result
        index = top_slices(scored.probs, 1)[0]
        source = headers[r.instances[index]]
        frame = frame_number(r, index, headers)
        title = (
            f"{self.model.name}  p={float(scored.probs[index]):.3f}  "
            f"slice {index + 1} of {len(scored.probs)}{slice_position(source, frame)}"
        )
        sc = build_key_image(
            source,
            _evidence(source),
            scored.top_image,
            cam,
            title,
            DISCLAIMER,
            [r.study, self.model.version],
            frame,
        )
        save_atomic(sc, self.path(r.study, KEY_IMAGE_NAME))


def slice_position(source: Dataset, frame: int | None) -> str:
    """The slice's position along its normal, in mm (from the source header)."""
    position, cosines = geometry(source, frame)
    if position is None or cosines is None:
        return ""
    normal = np.cross(np.asarray(cosines[:3], float), np.asarray(cosines[3:], float))
    return f"  position {float(np.dot(normal, np.asarray(position, float))):.1f} mm"
