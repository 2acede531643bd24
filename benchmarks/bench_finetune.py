"""Fine-tuning epoch time with the fine-tuning node mid-network: cad vs a plain fp32 loop.

For ResNet50 (fine-tuning node ``layer2``, connection ``layer3``) and VGG16
(``features.16`` -> ``features.23``), random weights, on the phantom's training images
(data stages of ``pipelines/smoke.yaml`` at ``--size``), in one process, interleaved:

- cad: ``cad.finetune.train.train`` with ``cache_prefix=True`` and ``precision=auto``
  (the frozen prefix runs once -- reported separately as the one-off cache build --
  then every step runs only suffix + head, in bf16 autocast on a CPU with AVX-512 BF16);
- plain: the loop a user writes: the same ``build_transfer_model`` model (frozen params
  have ``requires_grad=False``), fp32, a shuffled ``DataLoader``, AdamW, the whole
  truncated network forward every step, backward, and a validation pass every epoch,
  with the C library's default heap (``_common.as_plain_script``).

Both see the same images (the resampled training order) for the same number of epochs.
Per-epoch times come from cad's own epoch log lines (validation included, as in the
plain loop). Then the correctness check: cad with ``cache_prefix`` True vs False, fp32,
same seed, must give the same first-epoch training loss (relative 1e-4).

    .venv/bin/python -m benchmarks.bench_finetune [--quick] [--epochs 5] [--reps 2]
        [--size 96] [--threads N] [--omp-passive]

Writes ``benchmarks/results/bench_finetune.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import sys

from benchmarks._common import early_env  # noqa: E402

early_env(sys.argv)

import argparse  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks._common import (  # noqa: E402
    RESULTS,
    ROOT,
    add_common_args,
    as_plain_script,
    cache_dir,
    cpu_banner,
    load_note,
    loadavg,
    machine_info,
    phantom_training_set,
    pipeline_input_size,
    setup_threads,
    under_load,
    with_threads,
    write_result,
)
from cad.backbones import create_backbone, get_spec  # noqa: E402
from cad.config import AugmentConfig, FinetuneConfig, FinetuneRuntime  # noqa: E402
from cad.cpu import cpu_info  # noqa: E402
from cad.device import describe, select_runtime  # noqa: E402
from cad.finetune.model import TransferModel, build_transfer_model  # noqa: E402
from cad.finetune.train import train  # noqa: E402

warnings.filterwarnings("ignore", message=".*subsequence of those obtained in train mode.*")
CASES = {  # backbone: (fine-tuning node, connection node)
    "resnet50": ("layer2.3.relu_2", "layer3.5.relu_2"),
    "vgg16": ("features.16", "features.23"),
}


class _EpochClock(logging.Handler):
    """Timestamps of cad's per-epoch log lines ("epoch k/n: ...")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []
        self.cpu: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("epoch "):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())


def transfer_model(
    name: str, in_chans: int, size: int, hidden: int, dropout: float
) -> TransferModel:
    spec = get_spec(name)
    finetune_node, connection_node = CASES[name]
    torch.manual_seed(0)
    backbone = create_backbone(name, "random", in_chans).model
    torch.manual_seed(1)
    return build_transfer_model(
        backbone,
        finetune_node,
        connection_node,
        mean=spec.mean,
        std=spec.std,
        in_chans=in_chans,
        size=size,
        hidden=hidden,
        dropout=dropout,
    )


def run_cad(model: TransferModel, data, cfg: FinetuneConfig, precision: str | None = None) -> dict:
    """cad's train(); per-epoch wall times from its log lines, one-offs separately."""
    runtime = select_runtime(precision or cfg.precision)
    clock, batches, batches_cpu = _EpochClock(), [], []
    logger = logging.getLogger("cad.finetune")
    logger.addHandler(clock)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def tick(_: int) -> None:
        batches.append(time.perf_counter())
        batches_cpu.append(time.process_time())

    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        result = train(
            model,
            data.images,
            data.labels,
            data.order,
            data.val_images,
            data.val_labels,
            cfg,
            AugmentConfig(mode="offline"),
            runtime,
            checkpoint_dir=None,
            progress=tick,
        )
    finally:
        logger.removeHandler(clock)
        logger.setLevel(old_level)
    end = time.perf_counter()
    steps = -(-len(data.order) // cfg.batch_size)
    # epoch 1 starts one step before the first progress call
    step1 = (batches[steps - 1] - batches[0]) / max(steps - 1, 1) if steps > 1 else 0.0
    epoch1_start = batches[0] - step1
    ends = clock.times
    epochs = [ends[0] - epoch1_start] + [b - a for a, b in zip(ends, ends[1:], strict=False)]
    cpu1 = (batches_cpu[steps - 1] - batches_cpu[0]) / max(steps - 1, 1) if steps > 1 else 0.0
    cpu_ends = clock.cpu
    epochs_cpu = [cpu_ends[0] - (batches_cpu[0] - cpu1)] + [
        b - a for a, b in zip(cpu_ends, cpu_ends[1:], strict=False)
    ]
    return {
        "total_s": end - start,
        "setup_and_cache_s": epoch1_start - start,
        "epoch_cpu_s": epochs_cpu,
        "setup_and_cache_cpu_s": batches_cpu[0] - cpu1 - cpu_start,
        "final_predict_s": end - ends[-1],
        "epoch_s": epochs,
        "train_loss": [h["train_loss"] for h in result.history],
        "used_prefix_cache": result.used_prefix_cache,
        "runtime": describe(runtime),
        "precision": "fp32" if runtime.amp_dtype is None else "bf16",
    }


def run_plain(model: TransferModel, data, cfg: FinetuneConfig) -> dict:
    """The obvious fp32 loop over the whole truncated network."""
    start = time.perf_counter()
    order = torch.from_numpy(np.asarray(data.order))
    x = torch.from_numpy(np.asarray(data.images)[order.numpy()])  # a writable copy
    y = torch.from_numpy(data.labels)[order]
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    val_x = torch.from_numpy(data.val_images)
    epochs, epochs_cpu, losses = [], [], []
    for _ in range(cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()  # TransferModel keeps the frozen modules (and their BN) in eval
        total, seen = 0.0, 0
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(yb), seen + len(yb)
        model.eval()
        with torch.no_grad():
            logits = torch.cat(
                [model(val_x[i : i + cfg.batch_size]) for i in range(0, len(val_x), cfg.batch_size)]
            )
        f1_score(data.val_labels, (logits.argmax(1)).numpy(), zero_division=0)
        epochs.append(time.perf_counter() - t0)
        epochs_cpu.append(time.process_time() - c0)
        losses.append(total / seen)
    return {
        "total_s": time.perf_counter() - start,
        "setup_and_cache_s": 0.0,
        "epoch_s": epochs,
        "epoch_cpu_s": epochs_cpu,
        "train_loss": losses,
    }


def loss_check(base: TransferModel, data, cfg: FinetuneConfig, steps: int = 3) -> dict:
    """First-epoch training loss, fp32, same seed: cached prefix vs full forwards (on the
    first ``steps`` batches of the training order, which is enough to compare)."""
    data = copy.copy(data)
    data.order = np.asarray(data.order)[: steps * cfg.batch_size]
    one = cfg.model_copy(update={"epochs": 1, "precision": "fp32"})
    cached_cfg, full_cfg = (
        one.model_copy(update={"runtime": FinetuneRuntime(cache_prefix=c)}) for c in (True, False)
    )
    cached = run_cad(copy.deepcopy(base), data, cached_cfg)
    full = run_cad(copy.deepcopy(base), data, full_cfg)
    a, b = cached["train_loss"][0], full["train_loss"][0]
    rel = abs(a - b) / max(abs(b), 1e-12)
    return {
        "loss_cached": a,
        "loss_full": b,
        "rel_diff": rel,
        "ok": rel <= 1e-4,
        "used_prefix_cache": [cached["used_prefix_cache"], full["used_prefix_cache"]],
        "fp32_cached_epoch_s": cached["epoch_s"][0],
        "fp32_full_epoch_s": full["epoch_s"][0],
    }


def prefix_bound(model: TransferModel, shape) -> dict:
    """FLOPs of one image through the frozen prefix (P) and the trainable rest (T), and what
    skipping the prefix can save at most: a training step costs about P + 3T (forward, and
    a backward of twice the forward) in the plain loop and 3T with the cache."""
    from torch.utils.flop_counter import FlopCounterMode

    from cad.finetune.model import split_prefix

    prefix, suffix = split_prefix(model.body)
    model.eval()
    with torch.no_grad():
        x = model.normalize(torch.zeros(1, *shape))
        with FlopCounterMode(display=False) as counter:
            cached = prefix(x)
        p = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.head(suffix(cached))
        t = counter.get_total_flops()
    return {
        "prefix_gflop": p / 1e9,
        "trainable_gflop": t / 1e9,
        "max_gain_from_cache": (p + 3 * t) / (3 * t),
    }


def bench_case(name: str, data, args) -> dict:
    in_chans, size = data.images.shape[1], data.images.shape[-1]
    cfg = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        hidden=256,
        dropout=0.5,
        patience=args.epochs + 1,
        runtime={"cache_prefix": True},
        precision="auto",
        seed=0,
    )
    base = transfer_model(name, in_chans, size, cfg.hidden, cfg.dropout)
    sides = {
        "cad": lambda: run_cad(copy.deepcopy(base), data, cfg),
        "plain": as_plain_script(lambda: run_plain(copy.deepcopy(base), data, cfg)),
    }
    if args.compile_step:  # cad with finetune.runtime.compile_step (compile inside epoch 1)
        compiled_cfg = cfg.model_copy(
            update={"runtime": FinetuneRuntime(cache_prefix=True, compile_step=True)}
        )
        sides["cad_compiled_step"] = lambda: run_cad(copy.deepcopy(base), data, compiled_cfg)
    for n in args.thread_variants:  # the same two sides with n torch threads
        sides[f"cad_t{n}"] = with_threads(n, sides["cad"])
        sides[f"plain_t{n}"] = with_threads(n, sides["plain"])
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.reps):  # interleaved: cad, plain, cad, plain, ...
        for side, fn in sides.items():
            runs[side].append(fn())
    out: dict = {
        "finetune_node": CASES[name][0],
        "connection_node": CASES[name][1],
        "images_per_epoch": len(data.order),
        "epochs": cfg.epochs,
        "trainable_params": sum(p.numel() for p in base.trainable_parameters()),
        "bound": prefix_bound(base, data.images.shape[1:]),
        "frozen_params": sum(p.numel() for p in base.frozen_parameters().values()),
        "runs": runs,
    }
    for side, rs in runs.items():
        epochs = [e for r in rs for e in r["epoch_s"]]
        epochs_cpu = [e for r in rs for e in r["epoch_cpu_s"]]
        out[side] = {
            "epoch_s_best": min(epochs),
            "epoch_s_median": statistics.median(epochs),
            "epoch_cpu_s_best": min(epochs_cpu),
            "epoch_cpu_s_median": statistics.median(epochs_cpu),
            "total_s_best": min(r["total_s"] for r in rs),
            "setup_and_cache_s_best": min(r["setup_and_cache_s"] for r in rs),
            "precision": rs[0].get("precision", "fp32"),
        }
    out["ratio_epoch_best"] = out["plain"]["epoch_s_best"] / out["cad"]["epoch_s_best"]
    out["ratio_epoch_median"] = out["plain"]["epoch_s_median"] / out["cad"]["epoch_s_median"]
    out["ratio_total_best"] = out["plain"]["total_s_best"] / out["cad"]["total_s_best"]
    out["ratio_epoch_cpu"] = out["plain"]["epoch_cpu_s_median"] / out["cad"]["epoch_cpu_s_median"]
    for n in args.thread_variants:
        cad_n, plain_n = out[f"cad_t{n}"], out[f"plain_t{n}"]
        out[f"t{n}"] = {
            "ratio_epoch_median": plain_n["epoch_s_median"] / cad_n["epoch_s_median"],
            "cad_speedup_vs_default_threads": out["cad"]["epoch_s_median"]
            / cad_n["epoch_s_median"],
        }
    if not args.no_loss_check:
        out["loss_check"] = loss_check(base, data, cfg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--size", type=int, default=None, help="input size (default: breast_mri.yaml's input.size)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="5; quick 2")
    parser.add_argument("--reps", type=int, default=None, help="interleaved runs (2; quick 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patients", type=int, default=None, help="phantom patients (16/10)")
    parser.add_argument("--copies", type=int, default=None, help="augmented copies (1; quick 0)")
    parser.add_argument("--backbones", default=",".join(CASES))
    parser.add_argument("--no-loss-check", action="store_true")
    parser.add_argument(
        "--compile-step",
        action="store_true",
        help="add cad with finetune.runtime.compile_step (torch.compile of suffix + head)",
    )
    parser.add_argument(
        "--thread-variants",
        default="",
        help="comma list of thread counts to add as extra interleaved sides",
    )
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.size = args.size or pipeline_input_size()
    args.thread_variants = [int(n) for n in args.thread_variants.split(",") if n]
    args.reps = args.reps or (1 if args.quick else 2)
    patients = args.patients or (10 if args.quick else 16)
    copies = args.copies if args.copies is not None else (0 if args.quick else 1)

    machine = machine_info()
    print(cpu_banner(), flush=True)
    threads = setup_threads(args.threads)
    overrides = [
        f"input.size={args.size}",
        f"data.phantom.patients={patients}",
        f"augment.copies={copies}",
        "probe.runtime.n_jobs=1",
    ]
    workdir = cache_dir(f"extract-{args.size}-{patients}-{copies}")
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"threads {threads}; cad runtime {describe(select_runtime('auto'))}",
        flush=True,
    )
    data = phantom_training_set(ROOT / "pipelines" / "smoke.yaml", overrides, workdir)
    print(
        f"{len(data.images)} training images (resampled order {len(data.order)}), "
        f"{len(data.val_images)} validation images, {data.images.shape[1:]}",
        flush=True,
    )

    results = {}
    for name in args.backbones.split(","):
        r = results[name] = bench_case(name, data, args)
        cad, plain = r["cad"], r["plain"]
        print(
            f"\n{name} (finetune {r['finetune_node']} -> connection {r['connection_node']}; "
            f"{r['images_per_epoch']} images x {r['epochs']} epochs)"
        )
        print(
            f"  cad ({cad['precision']}) one-off setup + prefix cache "
            f"{cad['setup_and_cache_s_best']:.2f} s, "
            f"epoch best {cad['epoch_s_best']:.2f} s / median {cad['epoch_s_median']:.2f} s, "
            f"total {cad['total_s_best']:.1f} s"
        )
        print(
            f"  plain epoch best {plain['epoch_s_best']:.2f} s / median "
            f"{plain['epoch_s_median']:.2f} s, total {plain['total_s_best']:.1f} s"
        )
        print(
            f"  per epoch: {r['ratio_epoch_best']:.2f}x (best) {r['ratio_epoch_median']:.2f}x "
            f"(median), {r['ratio_epoch_cpu']:.2f}x (CPU time, median); total over "
            f"{r['epochs']} epochs: {r['ratio_total_best']:.2f}x"
        )
        b = r["bound"]
        print(
            f"  FLOPs per image: frozen prefix {b['prefix_gflop']:.2f} G, trainable part "
            f"{b['trainable_gflop']:.2f} G: the cache alone can save at most "
            f"{b['max_gain_from_cache']:.2f}x; the rest of the ratio ("
            f"{r['ratio_epoch_best'] / b['max_gain_from_cache']:.2f}x or more) comes from "
            f"{'bf16, ' if cad['precision'] == 'bf16' else ''}the fused optimizer and "
            "cad's other settings"
        )
        if "cad_compiled_step" in r:
            c = r["cad_compiled_step"]
            print(
                f"  cad compiled step: epoch best {c['epoch_s_best']:.2f} s / median "
                f"{c['epoch_s_median']:.2f} s (epoch 1 includes the compile), "
                f"{plain['epoch_s_median'] / c['epoch_s_median']:.2f}x the plain loop (median)"
            )
        for n in args.thread_variants:
            cn, pn = r[f"cad_t{n}"], r[f"plain_t{n}"]
            print(
                f"  with {n} thread(s): cad epoch median {cn['epoch_s_median']:.2f} s, plain "
                f"{pn['epoch_s_median']:.2f} s: {r[f't{n}']['ratio_epoch_median']:.2f}x; cad "
                f"{r[f't{n}']['cad_speedup_vs_default_threads']:.2f}x faster than with default "
                "threads"
            )
        if "loss_check" in r:
            lc = r["loss_check"]
            print(
                f"  fp32 first-epoch loss cached {lc['loss_cached']:.6f} vs full "
                f"{lc['loss_full']:.6f}: rel {lc['rel_diff']:.1e} "
                f"({'OK' if lc['ok'] else 'MISMATCH'} at 1e-4)"
            )
        print(f"  load {loadavg()}", flush=True)

    end = loadavg()
    print(f"\ntarget ({cpu_info().label}): >= {3 if cpu_info().bf16 else 2}x per epoch")
    for name, r in results.items():
        print(
            f"  {name:<9} per epoch {r['ratio_epoch_best']:.2f}x (median "
            f"{r['ratio_epoch_median']:.2f}x, CPU time {r['ratio_epoch_cpu']:.2f}x), "
            f"total {r['ratio_total_best']:.2f}x"
        )
    print(load_note(machine["loadavg_start"], end))
    name = "bench_finetune_quick" if args.quick else "bench_finetune"
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "threads": threads,
            "config": {
                "size": args.size,
                "epochs": args.epochs,
                "reps": args.reps,
                "batch_size": args.batch_size,
                "phantom_overrides": overrides,
            },
            "cases": results,
            "loadavg_end": end,
            "under_load": under_load(machine["loadavg_start"]) or under_load(end),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
