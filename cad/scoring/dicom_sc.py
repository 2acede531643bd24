"""The key image of ``--dicom-out``: a Secondary Capture of a study's most suspicious slice
with its Grad-CAM map, a colour bar, the slice's position and the disclaimer burned in.

Like the SR it belongs to the patient's study and carries the study's real identifiers
(copied by highdicom from the source header). The picture is the slice as the model saw
it (its pre-contrast channel after preprocessing: in-plane orientation kept, padded square
and resized), so the source's patient orientation applies but not its pixel spacing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cad.finetune.model import TransferModel
from cad.scoring.cam import grad_cam

SERIES_NUMBER = 9902  # after the SR's series
# DICOM patient axes: +x towards the patient's left, +y posterior, +z head.
AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


class CamMap:
    """``(C, H, W)`` model input -> its ``(H, W)`` Grad-CAM map, or None when the
    connection node is not spatial."""

    def __init__(
        self,
        model: TransferModel,
        device: torch.device,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.model, self.device, self.prepare = model, device, prepare

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        batch = image[None].astype(np.float32)
        if self.prepare is not None:
            batch = self.prepare(batch)
        cams = grad_cam(self.model, torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return None if cams is None else cams[0]


def orientation_letter(direction: np.ndarray) -> str:
    """The patient axis a direction cosine vector mostly points along, e.g. "L"."""
    axis = int(np.argmax(np.abs(direction)))
    return AXIS_LETTERS[axis][int(direction[axis] > 0)]


def _functional(source: Dataset, frame: int | None, sequence: str, keyword: str):
    """``keyword`` from a multi-frame file's per-frame, else shared functional groups."""
    groups = []
    if frame is not None and len(source.get("PerFrameFunctionalGroupsSequence") or []) >= frame:
        groups.append(source.PerFrameFunctionalGroupsSequence[frame - 1])
    groups += list(source.get("SharedFunctionalGroupsSequence") or [])
    for group in groups:
        for item in group.get(sequence) or []:
            if keyword in item:
                return item.get(keyword)
    return None


def geometry(source: Dataset, frame: int | None = None) -> tuple[list | None, list | None]:
    """(ImagePositionPatient, ImageOrientationPatient) of a slice, for single- and
    multi-frame (``frame``: 1-based) sources; None where absent."""
    position = source.get("ImagePositionPatient") or _functional(
        source, frame, "PlanePositionSequence", "ImagePositionPatient"
    )
    cosines = source.get("ImageOrientationPatient") or _functional(
        source, frame, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    return (list(position) if position else None), (list(cosines) if cosines else None)


def patient_orientation(source: Dataset, frame: int | None = None) -> tuple[str, str]:
    """(row, column) direction letters from the source's ImageOrientationPatient."""
    cosines = np.asarray(geometry(source, frame)[1] or [1, 0, 0, 0, 1, 0], float)
    return orientation_letter(cosines[:3]), orientation_letter(cosines[3:])


def render(image: np.ndarray, cam: np.ndarray, title: str, footer: str) -> np.ndarray:
    """``image`` (H, W) in gray, ``cam`` in colour with a colour bar, as (h, w, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    low, high = np.percentile(image, (1, 99))
    fig = Figure(figsize=(5.6, 5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.08, 0.78, 0.82))
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    heat = ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_axis_off()
    bar = fig.colorbar(heat, cax=fig.add_axes((0.84, 0.08, 0.04, 0.82)))
    bar.solids.set_alpha(1)  # the bar shows the colours, not the blend
    bar.set_label("Grad-CAM (relative)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.02, footer, ha="center", fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def build_key_image(
    source: Dataset,
    evidence: Dataset,
    image: np.ndarray,
    cam: np.ndarray,
    title: str,
    footer: str,
    uid_seed: list[str],
    frame: int | None = None,
) -> SCImage:
    """The Secondary Capture of one slice (``image``: (C, H, W) model input)."""
    pixels = render(image[0], cam, title, footer)
    sc = SCImage.from_ref_dataset(
        ref_dataset=evidence,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(entropy_srcs=[*uid_seed, "sc-series"]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[*uid_seed, "sc"]),
        instance_number=1,
        manufacturer="cad",
        patient_orientation=patient_orientation(source, frame),
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        series_description="cad key image (Grad-CAM)",
    )
    sc.BurnedInAnnotation = "YES"  # probability, position and disclaimer are in the pixels
    sc.ImageType = ["DERIVED", "SECONDARY"]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    sc.SourceImageSequence = [ref]
    return sc
