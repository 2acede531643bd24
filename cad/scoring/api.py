"""``score_folder``: score every DICOM study below a folder with a model package.

Flow: resolve and verify the model -> header pass over the folder (worker processes, one
parse per file) -> studies sorted by pseudonymous (patient, study) key -> each study
assembled from its records, decoded and preprocessed in a worker exactly as training
ingest does -> slices batched across studies
-> rows written as each patient finishes. Memory holds a small per-file index, the
studies in flight and one batch, whatever the folder size.

Worker processes start from a fork server and import the caller's ``__main__`` module,
like every multiprocessing program: a script calling ``score_folder`` must do so under
``if __name__ == "__main__":`` (or pass ``workers=0``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cad.artifacts.model_package import SUMS, read_card
from cad.device import describe, select_runtime
from cad.errors import CadError, ModelPackageError, look_up_option
from cad.finetune.package import load_package
from cad.io.files import refuse_symlink, walk
from cad.io.index import index_paths
from cad.io.pool import WorkerPool
from cad.phi import Pseudonymizer, load_secret
from cad.scoring.run import Run
from cad.scoring.stream import PRELOAD, init_worker
from cad.scoring.summary import ScoreSummary, progress_or_nothing
from cad.scoring.writers import sidecar_path

log = logging.getLogger("cad.scoring")

LEVELS = ("slice", "series", "patient")
EXECUTORS = ("local", "ray")


def resolve_model(model: str | Path, tracking_uri: str | None, dest: Path) -> Path:
    """A package directory: given directly (or a run's finetune artifact), or via MLflow."""
    text = str(model)
    if text.startswith(("runs:/", "models:/")):
        from cad.tracking import default_tracking_uri, resolve_model_uri

        uri = default_tracking_uri(Path.cwd(), tracking_uri)
        local = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if local is not None and not local.is_file():  # never create an empty store here
            raise CadError(
                f"{text}: there is no MLflow store in this folder (mlflow.db); pass "
                "--tracking-uri sqlite:///<workdir>/mlflow.db (a run's store is in its "
                "workdir, e.g. runs/breast_mri/mlflow.db) or set MLFLOW_TRACKING_URI"
            )
        return resolve_model_uri(text, uri, dest)
    path = Path(text).expanduser()
    if not (path / "model.json").exists() and (path / "model" / "model.json").exists():
        path = path / "model"  # a run's finetune artifact directory
    if not path.is_dir():
        where = "" if path.is_absolute() else " (a relative path is read from the current folder)"
        raise ModelPackageError(
            f"no model package directory at '{text}'{where}; pass the 'model' directory a run "
            "wrote (model.safetensors, model.json, SHA256SUMS; summary.json's best.model_dir "
            "is relative to the workdir, best.model_dir_abs is absolute), runs:/<run_id>/model, "
            "models:/<name>@<alias> or models:/<name>/<version>"
        )
    return path


def _check_paths(
    dicom_dir: Path,
    out: Path,
    errors: Path,
    key_map: Path | None,
    cam_dir: Path | None,
    dicom_out: Path | None = None,
    report_dir: Path | None = None,
) -> None:
    if not dicom_dir.is_dir():
        raise CadError("DICOM_DIR is not a folder; pass the root folder of the DICOM export")
    root = dicom_dir.resolve()
    outputs = {"--out": out, "--errors": errors, "--key-map": key_map, "--cam": cam_dir}
    outputs["--out's progress file"] = sidecar_path(out)
    outputs["--dicom-out"] = dicom_out
    outputs["--report-dir"] = report_dir
    for option, path in outputs.items():
        refuse_symlink(path, option)
        if path is not None and path.resolve().is_relative_to(root):
            raise CadError(
                f"{option} points inside DICOM_DIR, which is scanned for input; "
                "write outputs to another folder"
            )
    if out.resolve() == errors.resolve():
        raise CadError("--errors must be a different file from --out")
    if key_map is not None:
        taken = {p.resolve() for p in (out, errors, sidecar_path(out))}
        target = key_map.resolve()
        if target in taken or (cam_dir and target.is_relative_to(cam_dir.resolve())):
            raise CadError(
                "--key-map must be its own file (it holds patient identifiers), not "
                "the predictions, errors or progress file; e.g. --key-map "
                "reidentification_key.csv, kept away from shared outputs"
            )


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise CadError(f"--shard '{text}': expected K/N with 1 <= K <= N, e.g. --shard 2/8")
    return int(k), int(n)


def default_errors_path(out: Path) -> Path:
    """``predictions.csv`` -> ``predictions.errors.csv``."""
    return out.with_name(f"{out.stem}.errors.csv")


def score_folder(
    model: str | Path,
    dicom_dir: str | Path,
    out: str | Path,
    errors: str | Path | None = None,
    level: str = "slice",
    batch_size: int = 64,
    workers: int = 2,
    resume: bool = False,
    cam_dir: str | Path | None = None,
    key_map: str | Path | None = None,
    tracking_uri: str | None = None,
    shard: str | None = None,
    dicom_out: str | Path | None = None,
    executor: str = "local",
    report_dir: str | Path | None = None,
    report_phi: bool = False,
    report_pdf: bool = False,
    *,
    progress: bool = True,
    _on_commit: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every study below ``dicom_dir``; write predictions, errors and (opt.) key map.

    ``workers`` decode studies in parallel (0: in this process). ``shard="K/N"`` scores
    only the K-th of N deterministic shards (by patient) and records each patient's byte
    ranges, so that :func:`cad.scoring.merge.merge_shards` rebuilds exactly the files an
    unsharded run writes. ``dicom_out``: a DICOM SR and a key image per scored study, in
    ``dicom_out/<study key>/`` (see :mod:`cad.scoring.dicom_sr`). ``executor="ray"``
    decodes and predicts on Ray (:mod:`cad.scoring.ray_data`; a local instance, or the
    cluster in ``RAY_ADDRESS``), writing the same bytes. ``report_dir``: an HTML report
    per scored study (``report_phi``: with the patient's name, ID and study date;
    ``report_pdf``: also printed to PDF; see :mod:`cad.scoring.report`). Raises CadError for
    usage and model problems; bad input files end up in the errors file, never raise.
    ``_on_commit(patients_done)`` is a test hook called after each finished patient.
    On CPU call :func:`cad.heap.reuse_freed_memory` first, as ``cad score`` does: the
    forward runs about 2x faster with it (this function leaves the caller's heap alone).
    """
    started = time.perf_counter()
    level = look_up_option(level, LEVELS, "--level")
    executor = look_up_option(executor, EXECUTORS, "--executor")
    if batch_size < 1 or workers < 0:
        raise CadError(
            f"--batch-size must be >= 1 and --workers >= 0; got {batch_size} and {workers}"
        )
    dicom_dir, out = Path(dicom_dir), Path(out)
    errors = Path(errors) if errors is not None else default_errors_path(out)
    key_map = Path(key_map) if key_map is not None else None
    cam_dir = Path(cam_dir) if cam_dir is not None else None
    dicom_out = Path(dicom_out) if dicom_out is not None else None
    report_dir = Path(report_dir) if report_dir is not None else None
    if (report_phi or report_pdf) and report_dir is None:
        raise CadError(
            "--report-phi and --report-pdf shape the --report-dir reports: add --report-dir DIR"
        )
    _check_paths(dicom_dir, out, errors, key_map, cam_dir, dicom_out, report_dir)
    if executor == "ray":
        from cad.scoring.ray_data import package_files, refuse_unsupported

        refuse_unsupported(cam_dir, dicom_out, report_dir)
    shard_k, shard_n = parse_shard(shard) if shard is not None else (1, 1)

    with WorkerPool(workers, initializer=init_worker, preload=PRELOAD) as pool:
        pool.start()  # workers boot while the model loads
        with tempfile.TemporaryDirectory(prefix="cad-model-") as tmp:
            package = resolve_model(model, tracking_uri, Path(tmp))
            loaded = load_package(package)
            model_digest = (package / SUMS).read_text()
            card = read_card(package)
            files = package_files(package) if executor == "ray" else {}
        runtime = select_runtime("auto")
        net = runtime.prepare(loaded.model)
        secret = load_secret(out.parent)  # the secret lives beside the outputs
        pseudo = Pseudonymizer(secret)
        log.info(
            "model %s (%s), threshold %.4f; %s",
            loaded.meta.backbone,
            pseudo.key("model", model_digest),
            loaded.threshold,
            describe(runtime),
        )

        paths = walk(dicom_dir)
        if not paths:
            raise CadError("DICOM_DIR holds no files; pass the root folder of the DICOM export")
        with progress_or_nothing(progress, "index", len(paths), "files") as advance:
            index = index_paths(paths, pool, secret, key_map is not None, advance)
        del paths
        if shard is not None:
            index = index.shard(shard_k, shard_n)
        fingerprint = {
            "model": pseudo.key("model", model_digest, 32),
            "folder": index.digest,
            "level": level,
            "key_map": key_map is not None,
            "cam": cam_dir is not None,
            **({"shard": f"{shard_k}/{shard_n}"} if shard is not None else {}),
            **({"dicom_out": True} if dicom_out is not None else {}),
            **({"report": [report_phi, report_pdf]} if report_dir is not None else {}),
        }
        results = None
        if dicom_out is not None:
            from cad.scoring.dicom_sc import CamMap
            from cad.scoring.dicom_sr import ModelInfo, SrWriter

            meta = loaded.meta
            info = ModelInfo.from_package(
                meta.backbone, meta.round, meta.threshold, model_digest, str(model)
            )
            cam_map = CamMap(net, runtime.device, loaded.prepare_images)
            results = SrWriter(dicom_out, info, secret, cam_map=cam_map)
        report = None
        if report_dir is not None:
            report = _report_writer(loaded, net, runtime, secret, model_digest, str(model), card)
            report = report(report_dir, report_phi, report_pdf)
        run = Run(
            loaded, net, runtime, secret, level, batch_size, cam_dir, _on_commit, results, report
        )
        if executor == "ray":
            from cad.scoring.ray_data import RayRun

            run = RayRun(files, loaded, net, runtime, secret, level, batch_size, None, _on_commit)
        summary = run.execute(
            index, pool, out, errors, key_map, fingerprint, resume, progress, shard is not None
        )
    summary.seconds = time.perf_counter() - started
    summary.predictions, summary.errors_csv = str(out), str(errors)
    summary.key_map = str(key_map or "")
    _log_summary(summary)
    return summary


def _report_writer(loaded, net, runtime, secret, model_digest, uri, card):
    """``(directory, phi, pdf) -> ReportWriter`` for this model."""
    from cad.scoring.dicom_sc import CamMap
    from cad.scoring.dicom_sr import ModelInfo
    from cad.scoring.report import ReportModel, ReportWriter

    meta = loaded.meta
    info = ModelInfo.from_package(meta.backbone, meta.round, meta.threshold, model_digest, uri)
    model = ReportModel(info.name, info.version, info.threshold, card)
    cam_map = CamMap(net, runtime.device, loaded.prepare_images)
    return lambda directory, phi, pdf: ReportWriter(directory, model, secret, cam_map, phi, pdf)


def _log_summary(s: ScoreSummary) -> None:
    log.info(
        "scored %d slices of %d/%d studies in %.1f s (%.1f slices/s); %d files skipped "
        "(other series of scored studies)",
        s.slices,
        s.studies_scored,
        s.studies,
        s.seconds,
        s.slices_per_second,
        s.skipped,
    )
    if s.error_files:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(s.errors.items()))
        log.warning(
            "%d of %d files not scored (%s); see the errors file", s.error_files, s.files, detail
        )
