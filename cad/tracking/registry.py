"""Where a model package comes from: a directory, ``runs:/`` or ``models:/`` URIs fetched
from the MLflow store (tracking server or the workdir's sqlite file)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cad.errors import ModelPackageError
from cad.tracking.client import redact_uri
from cad.tracking.failures import configure_http, transport_error


def default_tracking_uri(workdir: Path, configured: str | None) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(workdir).resolve()}/mlflow.db"


_HOW = (
    "pass a model package directory, runs:/<run_id>/model, models:/<name>@<alias> or "
    "models:/<name>/<version>"
)


def _parse_models_uri(model: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/name@alias`` or ``models:/name/version``."""
    rest = model[len("models:/") :].strip("/")
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise ModelPackageError(f"'{model}' is not a registered-model URI; {_HOW}")


def _download(client: MlflowClient, model: str, tracking_uri: str, dest: Path) -> str:
    if model.startswith("runs:/"):
        run_id, _, path = model[len("runs:/") :].strip("/").partition("/")
        return client.download_artifacts(run_id, path, str(dest))
    name, alias, version = _parse_models_uri(model)
    found = (
        client.get_model_version_by_alias(name, alias)
        if alias is not None
        else client.get_model_version(name, version)
    )
    source = client.get_model_version_download_uri(name, found.version)
    if source.startswith("runs:/"):
        return _download(client, source, tracking_uri, dest)
    # Download the version's source ourselves: mlflow's models:/ resolver reads the registry
    # from mlflow's global default URI, not from the registry_uri it is given (mlflow 3.17).
    return mlflow.artifacts.download_artifacts(
        artifact_uri=source,
        dst_path=str(dest),
        tracking_uri=tracking_uri,
        registry_uri=tracking_uri,
    )


def resolve_model_uri(
    model: str, tracking_uri: str, dest: Path, *, retries: int = 2, timeout_s: float = 10.0
) -> Path:
    """The local model-package directory for a directory, ``runs:/`` or ``models:/`` URI.

    URIs are downloaded into ``dest``; a directory is returned as is. Raises
    ``ModelPackageError`` with the reason when the model cannot be fetched.
    """
    if not model.startswith(("runs:/", "models:/")):
        if "://" not in model and Path(model).expanduser().is_dir():
            return Path(model).expanduser()
        raise ModelPackageError(f"no model package directory at '{model}'; {_HOW}")
    if model.startswith("models:/"):
        _parse_models_uri(model)  # a malformed URI fails before any connection
    configure_http(retries, timeout_s)
    try:
        Path(dest).mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        path = Path(_download(client, model, tracking_uri, Path(dest)))
    except Exception as exc:  # noqa: BLE001 - any backend error becomes a typed error
        reason = transport_error(exc) or (
            exc.message if isinstance(exc, MlflowException) else type(exc).__name__
        )
        raise ModelPackageError(
            f"cannot fetch '{model}' from MLflow at {redact_uri(tracking_uri)}: {reason}. "
            "Check the URI and MLFLOW_TRACKING_URI, or pass a local model directory."
        ) from exc
    if not path.is_dir():
        raise ModelPackageError(f"'{model}' is a single file, not a model package directory")
    return path
