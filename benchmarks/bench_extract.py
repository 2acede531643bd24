"""Feature extraction at every candidate node: cad vs the obvious fp32 script.

For VGG16, InceptionV3 and ResNet50 (random weights) on the phantom's training images
(the data stages of ``pipelines/smoke.yaml`` at ``--size``), one process, interleaved
rounds (cad, fp32, cad, fp32, ...):

- cad: ``cad.features.extract.extract_features`` with ``select_runtime("auto")``
  (BatchNorm folded, weights cast to bf16 once on a CPU with AVX-512 BF16, channels_last,
  inference_mode, freed activations reused from the heap: ``cad.heap``);
- fp32: what a user would write: torchvision ``create_feature_extractor``, fp32, a
  ``DataLoader`` over a ``TensorDataset``, ``torch.no_grad``, ``adaptive_avg_pool2d`` per node,
  with the C library's default heap (``_common.as_plain_script``).

Reports images/s (best and median of the rounds), achieved GFLOP/s (FLOPs of one forward
counted with ``FlopCounterMode``) against the machine's own GEMM GFLOP/s measured in the
same rounds (the best of a 2048^2 ``torch.mm`` and a 256-channel 3x3 convolution, in bf16
and fp32: the practical ceiling), and the probe F1 of every node from both feature sets
(``cad.probe.svm.score_nodes`` with the pipeline's patient folds): the max |dF1| must stay
within 0.01. Both sides trace the network (``create_feature_extractor``) inside the timed
pass, as cad does once per extract stage; the trace time is reported separately.

Data: by default the data stages of ``pipelines/smoke.yaml`` with 16 patients and one
augmented copy (~200 images; quick: 10 patients, no copies, ~64 images). ``--pipeline
pipelines/breast_mri.yaml --reps 1`` uses the main pipeline's data as-is (~1,700 images;
slow, but its F1 comparison has the pipeline's statistical resolution).

``--variants`` adds prototypes of proposed changes to the same rounds (see the README);
a variant is ``+``-joined tokens applied to cad's path:
``bNN``     batch size NN (cad's default is extract.runtime.batch_size = 32);
``nocl``    without channels_last;
``compile`` cad's ``extract.compile`` path (inductor, freezing) compiled once before the
            rounds: the one-off compile time is reported apart, the rounds time the
            steady state;
``cadcompile`` ``extract_features(compile="on")`` as the pipeline calls it: every round
            compiles again (from inductor's on-disk cache after the first);
``tN``      N torch threads for this side (e.g. ``t1``);
``cadfp32`` cad's path with ``extract.precision: fp32`` (BatchNorm folding, heap reuse and
            channels_last, no bf16): the features a user gets when they must match fp32;
``bf16``    cad's path forced to bf16 (skipped, with the reason printed, on a CPU without
            native bf16, where it would be emulated at a tenth of fp32's speed);
``int8``    cad's path with ``extract.quantize: int8`` (:mod:`cad.quantize`: the frozen
            fp32 module quantized, calibrated on the first 64 images; its "% limit" is
            of a quantized 3x3 convolution's rate, measured in the same rounds);
``wino``    (with ``cadfp32``) cad's fp32 path with every 3x3, stride-1 convolution run by
            NNPACK's fast (Winograd/FFT) kernels (bundled with torch, AVX2; oneDNN keeps the
            rest): a prototype of a faster fp32 path for CPUs without bf16;
``fp32cl``  (alone) the fp32 script with channels_last; ``fp32+tN`` the fp32 script on N
            threads.
e.g. ``--variants compile,cadcompile,nocl+b64,t1,fp32+t1``.

    .venv/bin/python -m benchmarks.bench_extract [--quick] [--size 96|224] [--reps 3]
        [--pipeline pipelines/breast_mri.yaml]
        [--backbones vgg16,inception_v3,resnet50]
        [--variants compile,cadcompile,b64,nocl+b64,fp32cl]
        [--threads N] [--omp-passive]

Writes ``benchmarks/results/bench_extract.json`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._common import early_env  # noqa: E402

early_env(sys.argv)

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from benchmarks._common import (  # noqa: E402
    RESULTS,
    ROOT,
    MatmulLimit,
    add_common_args,
    as_plain_script,
    cache_dir,
    cpu_banner,
    interleave,
    load_note,
    loadavg,
    machine_info,
    native_precisions,
    phantom_training_set,
    pipeline_input_size,
    setup_threads,
    under_load,
    with_threads,
    write_result,
)
from cad.backbones import create_backbone, get_spec  # noqa: E402
from cad.cpu import cpu_info  # noqa: E402
from cad.device import Runtime, describe, select_runtime  # noqa: E402
from cad.features.extract import (  # noqa: E402
    CompiledOrEager,
    extract_features,
    inference_module,
    multi_node_extractor,
    pool,
)
from cad.finetune.model import Normalize  # noqa: E402
from cad.probe.svm import choose_finetune_node, score_nodes  # noqa: E402

warnings.filterwarnings("ignore", message=".*subsequence of those obtained in train mode.*")
BACKBONES = ("vgg16", "inception_v3", "resnet50")
Features = dict[str, np.ndarray]


def fp32_script(
    model: nn.Module,
    nodes: Sequence[str],
    images: np.ndarray,
    normalize: nn.Module,
    batch_size: int,
    channels_last: bool = False,
) -> Features:
    """The obvious script: torchvision feature extractor, fp32, DataLoader, no_grad."""
    extractor = create_feature_extractor(model.eval(), return_nodes=list(nodes)).eval()
    if channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    loader = DataLoader(TensorDataset(torch.from_numpy(images)), batch_size=batch_size)
    out: dict[str, list[np.ndarray]] = {n: [] for n in nodes}
    with torch.no_grad():
        for (x,) in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = extractor(normalize(x))
            for n in nodes:
                t = features[n]
                pooled = nn.functional.adaptive_avg_pool2d(t, 1).flatten(1) if t.dim() == 4 else t
                out[n].append(pooled.numpy())
    return {n: np.concatenate(parts) for n, parts in out.items()}


def winograd_convs(fn: Callable[[], Features]) -> Callable[[], Features]:
    """``fn`` with fp32 3x3 stride-1 convolutions on torch's bundled NNPACK (its fast
    Winograd/FFT algorithms, AVX2 kernels) instead of oneDNN's direct ones: fewer
    multiplications where the fp32 FLOP limit binds."""

    def nnpack_or_onednn(
        self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            self.kernel_size == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1)
            and self.groups == 1 and x.dtype == torch.float32 and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
        ):  # fmt: skip
            return torch._nnpack_spatial_convolution(
                x.contiguous(), weight.contiguous(), bias, list(self.padding), [1, 1]
            )
        return original(self, x, weight, bias)

    original = nn.Conv2d._conv_forward
    assert torch._nnpack_available()  # also initializes NNPACK

    def run() -> Features:
        nn.Conv2d._conv_forward = nnpack_or_onednn  # type: ignore[method-assign]
        try:
            return fn()
        finally:
            nn.Conv2d._conv_forward = original  # type: ignore[method-assign]

    return run


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compiled_extractor(
    model: nn.Module,
    nodes: Sequence[str],
    normalize: Normalize,
    runtime: Runtime,
    batch_size: int,
    shape: Sequence[int],
) -> Callable:
    """cad's ``extract.compile`` path (the frozen bf16 module through torch.compile with
    inductor freezing), compiled and warmed up here at one batch shape so that the rounds
    time the steady state."""
    module, needs_autocast = inference_module(
        multi_node_extractor(model, nodes), normalize, runtime
    )
    assert not needs_autocast or runtime.amp_dtype is None
    compiled = CompiledOrEager(module)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return compiled(runtime.batch(batch))

    run(torch.zeros(batch_size, *shape))
    return run


def run_padded(fn: Callable, nodes: Sequence[str], images: np.ndarray, batch_size: int) -> Features:
    """Feed ``fn`` fixed-size batches (the last one zero-padded) and pool every node."""
    out: dict[str, list[np.ndarray]] = {n: [] for n in nodes}
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(images[start : start + batch_size])
        real = len(chunk)
        if real < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros(batch_size - real, *chunk.shape[1:])])
        features = fn(chunk)
        for n in nodes:
            out[n].append(pool(features[n][:real], ("avg",)).numpy())
    return {n: np.concatenate(parts) for n, parts in out.items()}


def forward_flops(model: nn.Module, nodes: Sequence[str], size: int, in_chans: int) -> float:
    """FLOPs of one image through the multi-node extractor (2 per multiply-add)."""
    extractor = create_feature_extractor(model.eval(), return_nodes=list(nodes)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        extractor(torch.zeros(1, in_chans, size, size))
    return float(counter.get_total_flops())


def f1_by_node(features: Features, nodes: Sequence[str], depths: dict[str, int], data) -> dict:
    scores = score_nodes(
        {n: features[n] for n in nodes},
        depths,
        data.labels,
        data.folds,
        data.config.probe,
        data.config.balance,
    )
    best = choose_finetune_node(scores)
    return {"f1": {s.node: s.f1_mean for s in scores}, "chosen": best.node}


def bench_backbone(name: str, data, args, limit: MatmulLimit, variants: Sequence[str]) -> dict:
    spec = get_spec(name)
    nodes = list(spec.nodes)
    in_chans = data.images.shape[1]
    torch.manual_seed(0)
    model = create_backbone(name, "random", in_chans).model.eval()
    normalize = Normalize(spec.mean, spec.std, in_chans)
    runtime = select_runtime("auto")
    images, bs = data.images, args.batch_size
    sides: dict[str, Callable[[], Features]] = {
        "cad": lambda: extract_features(model, nodes, images, normalize, runtime, bs),
        "fp32": lambda: fp32_script(model, nodes, images, normalize, bs),
    }
    compile_s = {}
    precision_of = {"cad": "bf16" if runtime.amp_dtype is not None else "fp32", "fp32": "fp32"}
    for variant in variants:
        tokens = set(variant.split("+"))
        threads = next((int(t[1:]) for t in tokens if t[0] == "t" and t[1:].isdigit()), None)
        if variant == "fp32cl":
            sides[variant] = lambda: fp32_script(model, nodes, images, normalize, bs, True)
            continue
        if "fp32" in tokens:
            sides[variant] = with_threads(
                threads, lambda: fp32_script(model, nodes, images, normalize, bs)
            )
            continue
        vbs = next((int(t[1:]) for t in tokens if t[0] == "b" and t[1:].isdigit()), bs)
        amp = None if "cadfp32" in tokens else runtime.amp_dtype  # extract.precision: fp32
        if "bf16" in tokens:
            if "bf16" not in native_precisions():
                print(f"  {variant}: skipped: this CPU ({cpu_info().cpu_class}) has no native bf16")
                continue
            amp = torch.bfloat16
        int8 = "int8" in tokens
        amp = None if int8 else amp
        vrt = Runtime(runtime.device, amp, "nocl" not in tokens)
        precision_of[variant] = "int8" if int8 else "fp32" if amp is None else "bf16"
        if "compile" in tokens and "cadcompile" not in tokens:
            start = time.perf_counter()
            fn = compiled_extractor(model, nodes, normalize, vrt, vbs, images.shape[1:])
            compile_s[variant] = time.perf_counter() - start
            sides[variant] = lambda fn=fn, vbs=vbs: run_padded(fn, nodes, images, vbs)
        elif "cadcompile" in tokens:  # extract_features(compile="on"), compile included
            sides[variant] = lambda vrt=vrt, vbs=vbs: extract_features(
                model, nodes, images, normalize, vrt, vbs, compile="on"
            )
        else:
            sides[variant] = lambda vrt=vrt, vbs=vbs, int8=int8: extract_features(
                model, nodes, images, normalize, vrt, vbs, quantize="int8" if int8 else "off"
            )
        if "wino" in tokens:
            sides[variant] = winograd_convs(sides[variant])
        sides[variant] = with_threads(threads, sides[variant])

    for side in [side for side in sides if side.startswith("fp32")]:  # the plain script's heap
        sides[side] = as_plain_script(sides[side])
    flops = forward_flops(model, nodes, images.shape[-1], in_chans)
    trace_s = min(_time(lambda: multi_node_extractor(model, nodes)) for _ in range(2))
    times, outputs = interleave(sides, args.reps, between=limit.measure)
    n = len(images)
    result: dict = {
        "nodes": nodes,
        "images": n,
        "gflop_per_image": flops / 1e9,
        "trace_s": trace_s,
        "compile_s": compile_s,
        "sides": {},
    }
    for side, t in times.items():
        ips_best, ips_median = n / t.best, n / t.median
        precision = precision_of.get(side, "fp32")  # the limit of the precision it ran in
        gflops = flops * ips_best / 1e9
        per_cpu = flops * n / t.cpu_best / 1e9
        result["sides"][side] = {
            **t.as_dict(),
            "images_per_s_best": ips_best,
            "images_per_s_median": ips_median,
            "gflops_best": gflops,
            "precision": precision,
            "pct_of_limit": 100 * gflops / limit.best(precision),
            "images_per_cpu_s_best": n / t.cpu_best,
            "gflop_per_cpu_s_best": per_cpu,
            "pct_of_limit_cpu": 100 * per_cpu / limit.best_per_cpu_s(precision),
        }
    fp32 = result["sides"]["fp32"]
    for row in result["sides"].values():
        row["speedup_vs_fp32_best"] = row["images_per_s_best"] / fp32["images_per_s_best"]
        row["speedup_vs_fp32_median"] = row["images_per_s_median"] / fp32["images_per_s_median"]
        row["speedup_vs_fp32_cpu"] = fp32["cpu_best_s"] / row["cpu_best_s"]
    if not args.no_f1:
        depths = dict(zip(spec.nodes, spec.node_depths, strict=True))
        # the noise floor: the fp32 script's own features, rounded once to bf16 at the end
        outputs["fp32_rounded_bf16"] = {
            n: torch.from_numpy(np.ascontiguousarray(f)).bfloat16().float().numpy()
            for n, f in outputs["fp32"].items()
        }
        probe = {side: f1_by_node(outputs[side], nodes, depths, data) for side in outputs}
        ref = probe["fp32"]["f1"]
        for side, p in probe.items():
            p["max_abs_df1_vs_fp32"] = max(abs(p["f1"][n] - ref[n]) for n in nodes)
            p["same_choice_as_fp32"] = p["chosen"] == probe["fp32"]["chosen"]
            p["max_rel_feature_err"] = max(
                float(
                    np.abs(outputs[side][n] - outputs["fp32"][n]).max()
                    / (np.abs(outputs["fp32"][n]).max() + 1e-12)
                )
                for n in nodes
            )
        result["probe"] = probe
    return result


def print_backbone(name: str, r: dict) -> None:
    print(
        f"\n{name}: {r['images']} images, {r['gflop_per_image']:.2f} GFLOP/image, "
        f"graph trace {r['trace_s']:.2f} s (inside each timed pass)"
    )
    for variant, seconds in r["compile_s"].items():
        print(f"  {variant}: one-off compile {seconds:.1f} s (not in the rounds below)")
    print(
        f"  {'side':<12} {'prec':>4} {'img/s best':>10} {'median':>8} {'GFLOP/s':>8} "
        f"{'% limit':>8} "
        f"{'x fp32':>7} {'(median)':>8} {'(cpu)':>6} {'%lim cpu':>8} {'max|dF1|':>9} "
        f"{'chosen node':>18}"
    )
    for side, row in r["sides"].items():
        p = r.get("probe", {}).get(side, {})
        df1 = f"{p['max_abs_df1_vs_fp32']:.4f}" if p else "-"
        print(
            f"  {side:<12} {row['precision']:>4} {row['images_per_s_best']:>10.1f} "
            f"{row['images_per_s_median']:>8.1f} "
            f"{row['gflops_best']:>8.1f} {row['pct_of_limit']:>7.0f}% "
            f"{row['speedup_vs_fp32_best']:>6.2f}x {row['speedup_vs_fp32_median']:>7.2f}x "
            f"{row['speedup_vs_fp32_cpu']:>5.2f}x {row['pct_of_limit_cpu']:>7.0f}% "
            f"{df1:>9} {p.get('chosen', '-'):>18}"
        )
    floor = r.get("probe", {}).get("fp32_rounded_bf16")
    if floor:
        print(
            f"  noise floor: the fp32 features rounded once to bf16 move the probe F1 by up to "
            f"{floor['max_abs_df1_vs_fp32']:.4f} (chosen node {floor['chosen']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="input size (default: breast_mri.yaml's input.size; e.g. 224)",
    )
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--batch-size", type=int, default=32, help="as extract.runtime.batch_size")
    parser.add_argument("--reps", type=int, default=None, help="interleaved rounds (3; quick 2)")
    parser.add_argument(
        "--pipeline",
        type=Path,
        default=None,
        help="take the data of this pipeline as-is (default: a small smoke.yaml)",
    )
    parser.add_argument("--patients", type=int, default=None, help="phantom patients (16/10)")
    parser.add_argument("--copies", type=int, default=None, help="augmented copies (1; quick 0)")
    parser.add_argument(
        "--variants",
        default="",
        help="comma list, e.g. compile,cadcompile,b64,nocl,nocl+b64,fp32cl",
    )
    parser.add_argument("--no-f1", action="store_true", help="skip the probe F1 agreement check")
    parser.add_argument("--name", default=None, help="result file name (default by --quick)")
    args = parser.parse_args()
    args.reps = args.reps or (2 if args.quick else 3)
    args.size = args.size or pipeline_input_size()
    patients = args.patients or (10 if args.quick else 16)
    copies = args.copies if args.copies is not None else (0 if args.quick else 1)
    variants = [v for v in args.variants.split(",") if v]

    machine = machine_info()
    print(cpu_banner(), flush=True)
    threads = setup_threads(args.threads)
    runtime = select_runtime("auto")
    if args.pipeline is None:
        pipeline = ROOT / "pipelines" / "smoke.yaml"
        overrides = [
            f"input.size={args.size}",
            f"data.phantom.patients={patients}",
            f"augment.copies={copies}",
            "probe.runtime.n_jobs=1",
        ]
        workdir = cache_dir(f"extract-{args.size}-{patients}-{copies}")
    else:
        pipeline = args.pipeline.resolve()
        overrides = [f"input.size={args.size}", "probe.runtime.n_jobs=1"]
        workdir = cache_dir(f"data-{pipeline.stem}")
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"threads {threads}; cad runtime: {describe(runtime)}"
    )
    print(f"phantom data ({pipeline.name} + {overrides}) in {workdir}", flush=True)
    data = phantom_training_set(pipeline, overrides, workdir)
    print(
        f"{len(data.images)} training images {data.images.shape[1:]}, "
        f"{int(data.labels.sum())} positive, folds {sorted(set(data.folds.tolist()))}",
        flush=True,
    )

    limit = MatmulLimit(int8=any("int8" in v.split("+") for v in variants))
    results = {}
    for name in args.backbones.split(","):
        results[name] = bench_backbone(name, data, args, limit, variants)
        print_backbone(name, results[name])
        print(
            "  limit so far: "
            + ", ".join(f"{p} {limit.best(p):.0f}" for p in limit.labels)
            + f" GFLOP/s; load {loadavg()}",
            flush=True,
        )

    end = loadavg()
    print(
        f"\nhardware limit (best torch.mm {limit.n}^2 / 3x3 conv seen in the rounds): "
        + ", ".join(
            f"{p} {limit.best(p):.0f} GFLOP/s ({limit.best_per_cpu_s(p):.0f} per CPU-s)"
            for p in limit.labels
        )
        + ("" if "bf16" in limit.labels else "; bf16 not measured (not native here)")
    )
    target = 3.0 if cpu_info().bf16 else 2.0  # issue 17: 3x on a bf16 CPU, 2x on AVX2
    print(
        f"targets ({cpu_info().label}): cad >= {target:.0f}x the fp32 script, % of the limit "
        "of the precision each side ran in, max|dF1| within the noise floor"
    )
    for name, r in results.items():
        for side in [s for s in r["sides"] if s != "fp32"]:
            row = r["sides"][side]
            df1 = r.get("probe", {}).get(side, {}).get("max_abs_df1_vs_fp32", float("nan"))
            label = "cad" if side == "cad" else f"cad {side}"
            print(
                f"  {name:<13} {label + '/fp32':<20} {row['speedup_vs_fp32_best']:.2f}x (median "
                f"{row['speedup_vs_fp32_median']:.2f}x, CPU time "
                f"{row['speedup_vs_fp32_cpu']:.2f}x), {row['pct_of_limit']:.0f}% of limit "
                f"({row['pct_of_limit_cpu']:.0f}% per CPU-s) in {row['precision']}, "
                f"max|dF1| {df1:.4f}"
            )
    print(load_note(machine["loadavg_start"], end))
    name = args.name or ("bench_extract_quick" if args.quick else "bench_extract")
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "threads": threads,
            "runtime": describe(runtime),
            "config": {
                "size": args.size,
                "batch_size": args.batch_size,
                "reps": args.reps,
                "pipeline": pipeline.name,
                "overrides": overrides,
                "images": len(data.images),
                "positives": int(data.labels.sum()),
                "folds": len(set(data.folds.tolist())),
                "variants": variants,
            },
            "limit": limit.as_dict(),
            "backbones": results,
            "loadavg_end": end,
            "under_load": under_load(machine["loadavg_start"]) or under_load(end),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
