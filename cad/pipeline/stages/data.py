"""Data stages: phantom -> manifest -> ingest -> split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cad.artifacts.archive import ManifestFile, PhantomArchive
from cad.artifacts.images import ImageSet
from cad.artifacts.splits import SplitAssignment, Splits, SplitSize
from cad.config import IngestConfig, InputConfig, PhantomConfig, SplitConfig
from cad.data.samples import column
from cad.errors import DataError
from cad.log import progress
from cad.phi import Pseudonymizer
from cad.pipeline.stage import Settings, Stage, StageContext


class PhantomSettings(Settings):
    phantom: PhantomConfig


class PhantomStage(Stage[PhantomSettings]):
    name = "phantom"
    summary = "the synthetic DCE-MRI archive as real DICOM + Annotation_Boxes.csv (no manifest)"
    settings_type = PhantomSettings
    output = PhantomArchive

    def run(self, ctx: StageContext, settings: PhantomSettings) -> dict[str, Any]:
        from cad.data.phantom import generate_phantom

        p = settings.phantom
        with progress("phantom", p.patients, "patients") as advance:
            info = generate_phantom(
                ctx.out,
                patients=p.patients,
                slices=p.slices,
                size=p.size,
                seed=p.seed,
                lesion_fraction=p.lesion_fraction,
                progress=lambda done, total: advance(1),
                workers=p.runtime.workers,
            )
        return {
            "items": info.files,
            "patients": info.patients,
            "lesion_patients": info.lesion_patients,
        }


class ManifestSettings(Settings):
    margin: int


class ManifestStage(Stage[ManifestSettings]):
    name = "manifest"
    summary = (
        "slice labels from the boxes: positive inside a box's slice range, negative at "
        "least `data.margin` slices away"
    )
    settings_type = ManifestSettings
    inputs = {"archive": PhantomArchive}
    output = ManifestFile

    def run(
        self, ctx: StageContext, settings: ManifestSettings, archive: PhantomArchive
    ) -> dict[str, Any]:
        from cad.data.manifest import build_from_boxes, write_manifest

        rows = build_from_boxes(
            archive.dicom_root,
            archive.boxes_csv,
            margin=settings.margin,
            unboxed="negative",
            pseudonymizer=Pseudonymizer(ctx.secret),  # the workdir's secret, not the cwd's
        )
        write_manifest(rows, ManifestFile.csv_in(ctx.out))
        return {"items": len(rows), "positives": sum(r.label for r in rows)}


class IngestSettings(Settings):
    """``manifest``/``root`` locate a user's manifest and data on this machine (local, never
    hashed); their content enters the key as ``manifest_sha256`` and ``root_digest``."""

    local_fields = ("manifest", "root")

    input: InputConfig
    ingest: IngestConfig
    secret_fingerprint: str  # pseudonyms depend on the secret: another secret, other keys
    manifest_sha256: str | None = None
    root_digest: str | None = None
    manifest: Path | None = None
    root: Path | None = None


class IngestStage(Stage[IngestSettings]):
    name = "ingest"
    summary = (
        "every DICOM file gets a typed outcome; slices decoded once, normalised per study, "
        "mapped to channels, resized, cached as `images.npy` with pseudonymous `samples.csv`"
    )
    settings_type = IngestSettings
    inputs = {"manifest": ManifestFile, "archive": PhantomArchive}
    optional_inputs = frozenset({"manifest", "archive"})
    output = ImageSet

    def run(
        self,
        ctx: StageContext,
        settings: IngestSettings,
        manifest: ManifestFile | None = None,
        archive: PhantomArchive | None = None,
    ) -> dict[str, Any]:
        from cad.data.ingest import run_ingest
        from cad.data.manifest import read_manifest

        if manifest is not None and archive is not None:
            manifest_csv, root = manifest.csv, archive.dicom_root
        elif settings.manifest is not None and settings.root is not None:
            manifest_csv, root = settings.manifest, settings.root
        else:  # the graph builder always gives one of the two
            raise ValueError("ingest needs a manifest artifact and archive, or local paths")
        rows = read_manifest(manifest_csv)
        check_both_classes(rows)
        folders = len({(r.path, r.series) for r in rows})
        with progress("ingest", folders, "studies") as advance:
            meta = run_ingest(
                ctx.out,
                root,
                rows,
                settings.input,
                ctx.secret,
                workers=settings.ingest.runtime.workers,
                progress=advance,
            )
        return {**meta, "input": settings.input.model_dump(mode="json")}


def check_both_classes(rows: list) -> None:
    """Training needs positive and negative slices; say so before any decoding (and before
    imbalanced-learn or the stratified split fail on one class)."""
    labels = {r.label for r in rows}
    if len(labels) < 2:
        only = "positive (1)" if labels == {1} else "negative (0)"
        raise DataError(
            f"every row of the manifest (data.manifest) is {only}: a classifier needs both "
            "labels; add the other class's slices (cad data manifest --unboxed negative "
            "labels patients without a box as negative)"
        )


class SplitSettings(Settings):
    split: SplitConfig


class SplitStage(Stage[SplitSettings]):
    name = "split"
    summary = (
        "train / validation / test **by patient** (stratified, seeded) and patient-grouped "
        "CV folds inside train"
    )
    settings_type = SplitSettings
    inputs = {"images": ImageSet}
    output = Splits

    def run(self, ctx: StageContext, settings: SplitSettings, images: ImageSet) -> dict[str, Any]:
        from cad.data.splits import assign_folds, check_disjoint, split_patients

        samples = images.samples()
        patients, labels = column(samples, "patient"), column(samples, "label")
        splits = split_patients(list(patients), list(labels), settings.split)
        check_disjoint(splits)
        train = set(splits["train"])
        mask = np.array([p in train for p in patients])
        folds = assign_folds(
            patients[mask], labels[mask], settings.split.folds, settings.split.seed
        )
        sizes = {}
        for name, keys in splits.items():
            member = np.isin(patients, keys)
            sizes[name] = SplitSize(
                patients=len(keys), samples=int(member.sum()), positives=int(labels[member].sum())
            )
        assignment = SplitAssignment(
            train=splits["train"], val=splits["val"], test=splits["test"], folds=folds, sizes=sizes
        )
        Splits.write(ctx.out, assignment)
        return {"items": len(samples), "sizes": {k: v.model_dump() for k, v in sizes.items()}}
