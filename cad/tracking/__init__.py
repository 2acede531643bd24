"""MLflow: the only package in cad that imports it. ``client``: the never-raising
:class:`Tracker`; ``registry``: fetching model packages from ``runs:/`` and ``models:/``."""

from cad.tracking.client import MAX_KEY_LENGTH, Tracker, clean_key, redact_uri
from cad.tracking.registry import default_tracking_uri, resolve_model_uri

__all__ = [
    "MAX_KEY_LENGTH",
    "Tracker",
    "clean_key",
    "default_tracking_uri",
    "redact_uri",
    "resolve_model_uri",
]
