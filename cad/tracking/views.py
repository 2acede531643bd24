"""The comparison a person opens in the MLflow UI: the backbone runs in one flat table,
best test ROC AUC first, with the columns that compare them.

The MLflow 3 UI saves a shared view (the runs table's "Share" button) as an experiment tag
``mlflow.sharedViewState.<key>`` holding the view's JSON, and opens it from a link with
``viewStateShareKey=<key>``; cad writes that same tag, so the link it prints opens the
comparison with no clicking. Sorting by a metric lists child runs flat instead of folded
under the parent. ``workflowType=machine_learning`` picks the UI's model-training pages
(its default is GenAI traces). Older UIs ignore both. tests/tracking/test_mlflow_ui.py
opens the link in headless Chromium and reads what a person would see.
"""

from __future__ import annotations

import json

SHARE_KEY = "cad-comparison"
VIEW_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
SORT_METRIC = "test_roc_auc"

# the UI groups columns (attributes, metrics A-Z, params, tags) and draws only those that fit
# the window: the run name already names backbone and round, intervals are in comparison.md
COLUMNS = (
    "attributes.`Duration`",
    "metrics.`probe_chance_f1`",
    "metrics.`probe_f1_best`",
    "metrics.`test_chance_f1`",
    "metrics.`test_ece`",
    "metrics.`test_f1`",
    "metrics.`test_roc_auc`",
    "tags.`finetune_node`",
)


def comparison_view() -> str:
    """The shared view's JSON (search facets and table state in one object)."""
    return json.dumps(
        {
            "orderByKey": f"metrics.`{SORT_METRIC}`",
            "orderByAsc": False,
            "selectedColumns": list(COLUMNS),
        }
    )


def comparison_link(experiment_id: str) -> str:
    """The part of the UI address after the server's root, e.g. ``#/experiments/1/runs?...``."""
    return (
        f"#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={SHARE_KEY}"
    )
