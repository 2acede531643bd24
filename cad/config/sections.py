"""The sections of a pipeline YAML as pydantic models, one per stage.

Every section separates what defines a stage's result from how fast it is computed: the
fields of a section are result fields (they enter the stage's artifact key), and its
``runtime`` block holds throughput knobs (batch sizes for inference, workers, compile,
threads, caches) that never change a result and never enter a key, so tuning them reuses
every finished artifact. Every model forbids unknown keys and non-finite numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cad.config.base import Precision, Runtime, Section
from cad.config.pretrain import PretrainConfig

MAX_IMAGE_SIZE = 1024  # pixels per side; larger inputs are a typo, not a plan (16 GB per 1k slices)


class PhantomRuntime(Runtime):
    workers: int | None = Field(None, ge=1, le=256, description="processes (default: one per CPU)")


class PhantomConfig(Section):
    patients: int = Field(36, ge=4, le=10000, description="number of synthetic patients")
    slices: int = Field(24, ge=8, le=512, description="slices per series")
    size: int = Field(128, ge=32, le=MAX_IMAGE_SIZE, description="in-plane matrix (pixels)")
    seed: int = 7
    lesion_fraction: float = Field(0.6, gt=0, lt=1, description="share of patients with a lesion")
    runtime: PhantomRuntime = PhantomRuntime()


class DataConfig(Section):
    """Where samples come from: the built-in phantom, or a manifest under a data root."""

    phantom: PhantomConfig = PhantomConfig()
    manifest: str | None = Field(None, description="manifest CSV; when set the phantom is unused")
    root: str | None = Field(None, description="data root the manifest's paths are relative to")
    margin: int = Field(5, ge=0, le=1000, description="slices between positive and negative labels")

    @property
    def uses_phantom(self) -> bool:
        return self.manifest is None


class InputConfig(Section):
    """How a DICOM study becomes a network input. Stored in every model package."""

    channels: Literal["dce", "repeat", "single"] = "dce"
    phases: tuple[str, ...] = ("pre", "post1", "post1-pre")
    normalization: Literal["percentile", "zscore"] = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    size: int = Field(96, ge=16, le=MAX_IMAGE_SIZE, description="slices are resized to size^2")

    @field_validator("phases")
    @classmethod
    def _check_phases(cls, phases: tuple[str, ...]) -> tuple[str, ...]:
        if not phases:
            raise ValueError("give at least one phase, e.g. [pre, post1, post1-pre]")
        for phase in phases:
            for part in phase.split("-"):
                if part != "pre" and not (part.startswith("post") and part[4:].isdigit()):
                    raise ValueError(
                        f"phase '{phase}' is not pre, postN or a difference like 'post1-pre'"
                    )
        return phases

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError("percentiles must be (low, high) with 0 <= low < high <= 100")
        return value

    @property
    def in_chans(self) -> int:
        if self.channels == "single":
            return 1
        return 3 if self.channels == "repeat" else len(self.phases)


class IngestRuntime(Runtime):
    workers: int = Field(2, ge=0, le=256, description="decoding processes (0: in-process)")


class IngestConfig(Section):
    """Decoding is fully defined by ``input``; this section only tunes its speed."""

    runtime: IngestRuntime = IngestRuntime()


class SplitConfig(Section):
    test: float = Field(0.2, gt=0, lt=0.5, description="share of patients held out for test")
    val: float = Field(0.15, gt=0, lt=0.5, description="share of patients for validation")
    folds: int = Field(3, ge=2, le=50, description="patient-grouped CV folds inside train")
    seed: int = 0


class BalanceConfig(Section):
    method: Literal["none", "over", "under", "combined"] = "over"
    ratio: float = Field(1.0, gt=0, le=1, description="minority/majority ratio after resampling")
    seed: int = 0


class AugmentConfig(Section):
    mode: Literal["none", "offline", "online"] = "offline"
    copies: int = Field(2, ge=0, le=100, description="augmented copies per training slice")
    flip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    rotate_deg: float = Field(10.0, ge=0, le=180)
    scale: float = Field(0.1, ge=0, lt=1, description="max relative zoom in/out")
    elastic: float = Field(0.0, ge=0, le=1, description="probability of elastic deformation")
    bias_field: float = Field(0.3, ge=0, le=1)
    gibbs: float = Field(0.0, ge=0, le=1)
    noise: float = Field(0.2, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0, le=1)
    seed: int = 0


class DenoiseConfig(Section):
    """Optional DnCNN denoising, trained on the training images with synthetic noise."""

    enabled: bool = False
    sigma: float = Field(0.05, gt=0, description="synthetic Gaussian noise (normalised units)")
    epochs: int = Field(5, ge=1, le=10000)
    depth: int = Field(8, ge=3, le=64, description="DnCNN layers (the paper uses 17)")
    features: int = Field(32, ge=4, le=1024)
    batch_size: int = Field(16, ge=1, le=4096)
    seed: int = 0


class BackboneConfig(Section):
    name: str
    weights: str = Field(
        "imagenet", description="imagenet, pretrain (cad's offline source), random, or a file"
    )
    fallback: Literal["none", "pretrain", "random"] = Field(
        "none", description="when the weights are unavailable: pretrain, random, or fail"
    )
    nodes: tuple[str, ...] | None = Field(None, description="candidate nodes; default: registry")


class ExtractRuntime(Runtime):
    batch_size: int = Field(32, ge=1, le=4096)
    channels_last: bool = True
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the frozen extractor (inductor, weights frozen); auto: "
        "only when the forward work exceeds compile_min_tflop, where the one-off compile "
        "pays for itself, and one image's forward is below compile_max_gflop_per_image "
        "(small inputs, where per-op overhead is what compiling removes)",
    )
    compile_min_tflop: float | None = Field(
        None, gt=0, description="unset: the measured figure for the resolved precision/CPU"
    )
    compile_max_gflop_per_image: float | None = Field(
        None, gt=0, description="unset: the measured figure for the resolved precision/CPU"
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        """YAML reads a bare on/off as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ExtractConfig(Section):
    pooling: tuple[Literal["avg", "max"], ...] = ("avg",)
    grid: tuple[int, ...] = Field(
        (1,),
        description="spatial pyramid levels: 1 pools each map globally, 2 adds its 2x2 "
        "quadrants (where in the slice a response lies), ...",
    )
    precision: Precision = "auto"
    quantize: Literal["off", "int8"] = Field(
        "off",
        description="int8: the frozen extractor runs int8 (post-training quantization "
        "calibrated on the first training images; CPU only), the fast path without bf16; "
        "its features differ from fp32 by a few percent (measured in README Speed)",
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: tuple[int, ...]) -> tuple[int, ...]:
        if not grid or len(set(grid)) != len(grid) or not all(1 <= g <= 8 for g in grid):
            raise ValueError("grid must list distinct levels from 1 to 8, e.g. [1, 2]")
        return grid

    @field_validator("quantize", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML reads a bare off as false."""
        return "off" if value is False else value

    runtime: ExtractRuntime = ExtractRuntime()


class ProbeRuntime(Runtime):
    n_jobs: int = Field(-1, ge=-1, le=256, description="threads over nodes (-1: all cores)")

    @field_validator("n_jobs")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("n_jobs must be -1 (all cores) or >= 1")
        return value


class ProbeConfig(Section):
    kernel: Literal["linear", "rbf"] = "linear"
    C: float = Field(1.0, gt=0)
    solver: Literal["auto", "libsvm", "liblinear"] = Field(
        "auto",
        description="linear kernel: libsvm (kernel form, fast when samples < features "
        "or few samples), liblinear (many samples); auto picks by shape",
    )
    max_iter: int = Field(5000, ge=100, description="liblinear iterations")
    runtime: ProbeRuntime = ProbeRuntime()


class FinetuneRuntime(Runtime):
    cache_prefix: bool = Field(True, description="reuse frozen-prefix activations every epoch")
    compile_step: bool = Field(
        False,
        description="torch.compile the cached-prefix training step (suffix + head, forward "
        "and backward; one process only); off by default: not shown to pay on CPUs yet",
    )
    distributed: Literal["auto", "off"] = Field(
        "auto",
        description="auto: data-parallel (DistributedDataParallel) over the ranks when launched "
        "by torchrun --nproc_per_node N -m cad run ...; off: rank 0 trains alone",
    )
    distributed_wait_s: float = Field(
        86400.0,
        gt=0,
        description="how long ranks > 0 wait for rank 0's next fine-tuning job while it runs "
        "the other stages",
    )

    @field_validator("distributed", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        """YAML reads a bare off as false."""
        return {True: "auto", False: "off"}.get(value, value) if isinstance(value, bool) else value


class FinetuneConfig(Section):
    connection: str = Field("next", description="next, same, last, or a node name")
    freeze: bool = Field(True, description="freeze up to the fine-tuning node (false: train all)")
    hidden: int = Field(256, ge=1, le=65536)
    dropout: float = Field(0.5, ge=0, lt=1)
    pool: Literal["avg", "max", "avgmax"] = Field(
        "avg", description="the head's global pooling: avg, max (focal findings) or both"
    )
    epochs: int = Field(8, ge=1, le=10000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=10, description="the backbone's trainable layers learn at lr x this"
    )
    weight_decay: float = Field(1e-4, ge=0, le=10)
    scheduler: Literal["none", "cosine"] = "cosine"
    loss: Literal["weighted", "plain"] = "plain"
    patience: int = Field(3, ge=1, description="early stopping on validation F1")
    calibration: Literal["temperature", "isotonic", "none"] = Field(
        "temperature",
        description="fitted on the validation patients; the package carries it, cad score and "
        "evaluate report calibrated probabilities",
    )
    precision: Precision = "auto"
    channels_last: bool = Field(
        True, description="memory layout in training (a result field: bf16 gradients differ)"
    )
    seed: int = 0
    runtime: FinetuneRuntime = FinetuneRuntime()


class TransferConfig(Section):
    rounds: Literal[1, 2] = 1
    round1_manifest: str | None = Field(
        None, description="manifest for round 1 (round 2 then uses data.manifest)"
    )
    round1_root: str | None = None


class EvaluateRuntime(Runtime):
    batch_size: int = Field(64, ge=1, le=4096)
    channels_last: bool = True


class EvaluateConfig(Section):
    bootstrap: int = Field(1000, ge=10, le=100000, description="patient-level bootstrap resamples")
    ci: float = Field(0.95, gt=0, lt=1)
    precision: Precision = "auto"
    seed: int = 0
    runtime: EvaluateRuntime = EvaluateRuntime()


class ExecutorRuntime(Runtime):
    """Resources of one backbone chain when chains run as Ray tasks (``--executor ray``)."""

    cpus_per_chain: float = Field(1.0, gt=0, le=1024)
    gpus_per_chain: float = Field(0.0, ge=0, le=64)
    max_retries: int = Field(2, ge=0, le=20, description="retries of a chain whose worker died")


class ExecutorConfig(Section):
    """Where chains run never changes what they produce: runtime settings only."""

    runtime: ExecutorRuntime = ExecutorRuntime()


class TrackingConfig(Section):
    """Where a run is logged. Never part of a result: tracking changes no artifact."""

    enabled: bool = True
    uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite in workdir")
    experiment: str | None = Field(None, description="default: the pipeline name")
    register_name: str | None = Field("cad-breast-mri", description="registered model name")
    retries: int = Field(2, ge=0, le=20)
    timeout_s: float = Field(10.0, gt=0, le=600)

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value and (urlsplit(value).password or urlsplit(value).username):
            raise ValueError(
                "credentials do not belong in a config file: remove user:password@ from "
                "tracking.uri and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            )
        return value


class PipelineConfig(Section):
    name: str = Field("breast_mri", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    data: DataConfig = DataConfig()
    input: InputConfig = InputConfig()
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    balance: BalanceConfig = BalanceConfig()
    augment: AugmentConfig = AugmentConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    backbones: tuple[BackboneConfig, ...] = Field((BackboneConfig(name="resnet50"),), min_length=1)
    pretrain: PretrainConfig = PretrainConfig()
    extract: ExtractConfig = ExtractConfig()
    probe: ProbeConfig = ProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    transfer: TransferConfig = TransferConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    executor: ExecutorConfig = ExecutorConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("backbones")
    @classmethod
    def _distinct_backbones(cls, value: tuple[BackboneConfig, ...]) -> tuple[BackboneConfig, ...]:
        names = [b.name for b in value]
        if len(set(names)) != len(names):
            raise ValueError(f"a backbone is listed twice: {names}; list each once")
        return value
