"""Session-wide test settings: what the CLI's entry point would set for a real run."""

import os

import pytest

from cad.cli.app import quiet_third_party

quiet_third_party()  # before any test imports mlflow: no telemetry leaves the machine


@pytest.fixture(scope="session", autouse=True)
def private_weights_cache(tmp_path_factory):
    """Pretrained weights go to a per-session cache, never the user's (CLI subprocesses
    inherit it through the environment)."""
    path = tmp_path_factory.mktemp("cad-cache")
    previous = os.environ.get("CAD_CACHE")
    os.environ["CAD_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CAD_CACHE", None)
    else:
        os.environ["CAD_CACHE"] = previous
