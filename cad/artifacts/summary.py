"""What a finished run reports: ``summary.json`` as a versioned model, and the workdir layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from cad.artifacts.base import read_model, write_model
from cad.artifacts.evaluation import ChanceLevels, Interval
from cad.artifacts.model_package import Nodes
from cad.artifacts.probe import LayerScore, ProbeChoice
from cad.artifacts.splits import SplitSize
from cad.errors import CadError

SUMMARY_SCHEMA = 1


class StageRecord(BaseModel):
    """What happened to one stage in this invocation."""

    stage: str
    label: str
    key: str
    reused: bool
    wall_s: float  # spent in this invocation (0 when reused)
    items: int
    built_wall_s: float  # what computing the artifact took when it ran
    ended: float = 0.0  # when this invocation finished with it (Unix seconds)


class ChainSummary(BaseModel):
    """One backbone and round: the probe, both nodes, training and the test metrics."""

    backbone: str
    round: int
    weights_source: str
    fell_back_to_random: bool
    layer_scores: list[LayerScore]
    probe: ProbeChoice  # the fine-tuning node's CV F1 with its chance levels
    nodes: Nodes
    trainable_params: int
    frozen_params: int
    best_epoch: int
    val_f1: float
    threshold: float
    test: dict[str, Interval]  # slice level
    test_chance: ChanceLevels
    test_patient: dict[str, Interval]  # a patient is positive if any slice is
    test_patient_chance: ChanceLevels
    calibration: str = "none"  # fitted on validation: temperature, isotonic or none
    test_operating: dict[str, float] = {}  # ECE, Brier, sensitivity at 0.90 specificity, ...
    test_patient_operating: dict[str, float] = {}
    flags: list[str] = []
    model_dir: str  # relative to the workdir
    model_dir_abs: str
    artifacts: dict[str, str]  # stage -> artifact key
    mlflow_run_id: str | None = None

    @property
    def title(self) -> str:
        return f"{self.backbone} round {self.round}"


class DataSummary(BaseModel):
    manifest_hash: str
    splits: dict[str, SplitSize]
    ingest: dict[str, Any]
    denoise: dict[str, float] | None = None


class BestModel(BaseModel):
    backbone: str
    round: int
    chosen_by: Literal["validation F1"] = "validation F1"
    model_dir: str
    model_dir_abs: str


class TrackingSummary(BaseModel):
    uri: str  # credentials redacted
    experiment: str
    parent_run_id: str | None
    child_runs: dict[str, str | None]
    registered_model: str | None
    registered_version: str | None
    ok: bool
    failures: list[str]
    # the comparison view in the MLflow UI, relative to the server's root (cad.tracking.views)
    ui_link: str | None = None


class RunSummary(BaseModel):
    schema_version: Literal[1] = 1
    pipeline: str
    cad_version: str
    data: DataSummary
    results: list[ChainSummary]
    best: BestModel | None
    stages: list[StageRecord]
    wall_s: float
    tracking: TrackingSummary | None = None
    machine: dict[str, Any] = {}  # CPU class (ISA, bf16, AMX, VNNI, cores), GPU, precision


class RunDir:
    """The files of one workdir: the artifact store, scratch space, logs and the run's
    summary, report and comparison plot."""

    SUMMARY = "summary.json"
    REPORT = "report.md"
    COMPARISON = "layer_f1_comparison.png"
    COMPARISON_TABLE = "comparison.md"
    COMPARISON_CSV = "comparison.csv"
    COMPARISON_METRICS = "test_metrics_comparison.png"
    COMPARISON_ROC = "roc_comparison.png"
    CONFIG = "config.resolved.yaml"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs / "run.log"

    @property
    def redacted_config(self) -> Path:
        return self.logs / self.CONFIG

    def file(self, name: str) -> Path:
        return self.root / name

    @property
    def summary_path(self) -> Path:
        return self.root / self.SUMMARY

    def write_summary(self, summary: RunSummary) -> Path:
        return write_model(summary, self.summary_path)

    def read_summary(self) -> RunSummary:
        if not self.summary_path.is_file():
            raise CadError(
                f"{self.root} has no {self.SUMMARY}: it is not a finished cad run; "
                f"run `cad run PIPELINE --workdir {self.root}` first"
            )
        raw = json.loads(self.summary_path.read_text())
        if raw.get("schema_version", SUMMARY_SCHEMA) > SUMMARY_SCHEMA:
            raise CadError(f"{self.summary_path} was written by a newer cad; upgrade cad")
        return read_model(RunSummary, self.summary_path)
