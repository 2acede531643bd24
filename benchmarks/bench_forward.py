"""Inference forward (what ``evaluate`` and ``cad score`` run): cad vs the plain fp32 model.

A transfer model with random weights cut at the registry's two middle candidate nodes
(ResNet50: layer2 -> layer3 blocks), as ``finetune`` packages it, on random slices at
``--size``, in one process, interleaved:

- plain: the model as a user runs it: fp32, ``torch.inference_mode``, batches of
  ``--batch-size``, the C library's default heap (``_common.as_plain_script``);
- cad_glibc_heap (diagnostic): cad's :class:`cad.finetune.predict.Predictor` (BatchNorm
  folded, weights cast to bf16 once, channels_last) with the default heap;
- cad: the same Predictor with cad's heap reuse (:mod:`cad.heap`), as cad runs it;
- cad_compiled (``--compile``): the Predictor's frozen module through ``torch.compile``
  (inductor, weight freezing: ``cad.features.extract.CompiledOrEager``), compiled in the
  untimed warm-up; a candidate for where bf16 is missing.
- cad_int8 (``--int8``): the Predictor's frozen fp32 module quantized to int8
  (:mod:`cad.quantize`), calibrated on 64 other random slices; another candidate.

Prints slices/s, the ratios, the page faults per slice of each side (the heap's share),
the largest probability difference between cad and the fp32 forward, and the relative
difference of their connection-node features.

    .venv/bin/python -m benchmarks.bench_forward [--backbone resnet50] [--size 224]
        [--batch-size 64] [--slices 256] [--reps 3]

Writes ``benchmarks/results/bench_forward_<backbone>_<size>.json``.
"""

from __future__ import annotations

import sys

from benchmarks._common import early_env  # noqa: E402

early_env(sys.argv)

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    RESULTS,
    add_common_args,
    as_plain_script,
    cpu_banner,
    interleave,
    load_note,
    loadavg,
    machine_info,
    setup_threads,
    under_load,
    write_result,
)
from cad.backbones import create_backbone, get_spec  # noqa: E402
from cad.device import describe, select_runtime  # noqa: E402
from cad.finetune.model import TransferModel, build_transfer_model  # noqa: E402
from cad.finetune.predict import Predictor  # noqa: E402


def transfer_model(name: str, size: int) -> TransferModel:
    torch.manual_seed(0)
    spec = get_spec(name)
    middle = len(spec.nodes) // 2
    return build_transfer_model(
        create_backbone(name, "random", 3).model,
        spec.nodes[middle],
        spec.nodes[middle + 1],
        mean=spec.mean,
        std=spec.std,
        in_chans=3,
        size=size,
        hidden=256,
        dropout=0.5,
    ).eval()


def plain_forward(model: TransferModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The obvious loop: fp32 eager forward, softmax, positive class."""
    data = torch.from_numpy(images)
    with torch.inference_mode():
        logits = torch.cat(
            [model(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]
        )
    return torch.softmax(logits, dim=1)[:, 1].numpy()


def connection_node_error(model: TransferModel, predictor: Predictor, images: np.ndarray) -> float:
    """max |cad - fp32| / max |fp32| of the connection node's features (the head's input).
    With random weights the head's probabilities hardly vary between slices, so the
    features are what shows whether bf16 and BatchNorm folding kept the forward's maths."""
    x = torch.from_numpy(images)
    with torch.inference_mode():
        reference = model.features(x).float()
        ours = predictor.module[:-1](predictor.runtime.batch(x)).float()  # all but the head
    return float((ours - reference).abs().max() / reference.abs().max())


def int8_predictor(model: TransferModel, size: int, batch_size: int) -> Predictor:
    """The Predictor on an fp32 runtime with its frozen network (normalize + body, the
    traced graph) quantized to int8, calibrated on 64 random slices that are not the timed
    ones; the head stays fp32 (its pooling branches on the input's rank, which FX cannot
    trace)."""
    from cad.device import Runtime
    from cad.quantize import CALIBRATION_IMAGES, calibration_batches, quantize_int8

    fp32 = Runtime(torch.device("cpu"), None, True)
    predictor = Predictor(model, fp32, batch_size)
    shape = (CALIBRATION_IMAGES, 3, size, size)
    calibration = np.random.default_rng(1).random(shape, dtype=np.float32)
    batches = calibration_batches(calibration, fp32.batch, batch_size)
    normalize, body, select, head = predictor.module
    quantized = quantize_int8(torch.nn.Sequential(normalize, body), batches)
    predictor.module = torch.nn.Sequential(quantized, select, head)
    return predictor


def counting_faults(fn, faults: list[int]):
    def run():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = fn()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add the cad_compiled side")
    parser.add_argument("--int8", action="store_true", help="add the cad_int8 side")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.reps = 64, 1

    machine = machine_info()
    print(cpu_banner(), flush=True)
    threads = setup_threads(args.threads)
    runtime = select_runtime("auto")
    model = transfer_model(args.backbone, args.size)
    images = np.random.default_rng(0).random(
        (args.slices, 3, args.size, args.size), dtype=np.float32
    )
    predictor = Predictor(model, runtime, args.batch_size)
    bs = args.batch_size
    faults: dict[str, list[int]] = {"plain": [], "cad_glibc_heap": [], "cad": []}
    sides = {
        "plain": as_plain_script(
            counting_faults(lambda: plain_forward(model, images, bs), faults["plain"])
        ),
        "cad_glibc_heap": as_plain_script(
            counting_faults(lambda: predictor(images), faults["cad_glibc_heap"])
        ),
        "cad": counting_faults(lambda: predictor(images), faults["cad"]),
    }
    if args.compile:
        from cad.features.extract import CompiledOrEager

        compiled = Predictor(model, runtime, bs)
        compiled.module = CompiledOrEager(compiled.module)
        faults["cad_compiled"] = []
        sides["cad_compiled"] = counting_faults(lambda: compiled(images), faults["cad_compiled"])
    int8 = int8_predictor(model, args.size, bs) if args.int8 else None
    if int8 is not None:
        faults["cad_int8"] = []
        sides["cad_int8"] = counting_faults(lambda: int8(images), faults["cad_int8"])
    for side, fn in sides.items():  # warm-up: thread pool, kernel choice, heap growth, compile
        start = time.perf_counter()
        fn()
        if side == "cad_compiled":
            print(f"  cad_compiled: compile and first pass {time.perf_counter() - start:.1f} s")
    for values in faults.values():
        values.clear()
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"threads {threads}; cad runtime {describe(runtime)}; {args.backbone} "
        f"({model.body.__class__.__name__} cut at the middle nodes), {args.slices} slices "
        f"at {args.size} px, batch {bs}",
        flush=True,
    )
    timings, outputs = interleave(sides, args.reps)
    end = loadavg()
    rates = {side: args.slices / t.best for side, t in timings.items()}
    medians = {side: args.slices / t.median for side, t in timings.items()}
    diff = float(np.max(np.abs(outputs["cad"] - outputs["plain"])))
    feature_err = connection_node_error(model, predictor, images[:bs])
    for side, t in timings.items():
        print(
            f"  {side:<15} {rates[side]:7.1f} slices/s (median {medians[side]:.1f}), CPU "
            f"{1e3 * t.cpu_median / args.slices:.1f} ms/slice, page faults/slice "
            f"{np.median(faults[side]) / args.slices:.0f}"
        )
    print(
        f"cad vs plain fp32: {rates['cad'] / rates['plain']:.2f}x (median "
        f"{medians['cad'] / medians['plain']:.2f}x); heap reuse alone: "
        f"{rates['cad'] / rates['cad_glibc_heap']:.2f}x; max |probability difference| "
        f"{diff:.2e}; connection-node features: max relative difference {feature_err:.4f}"
    )
    int8_err = None
    if int8 is not None:
        qdiff = float(np.max(np.abs(outputs["cad_int8"] - outputs["plain"])))
        int8_err = connection_node_error(model, int8, images[:bs])
        print(
            f"cad int8 vs plain fp32: {rates['cad_int8'] / rates['plain']:.2f}x (median "
            f"{medians['cad_int8'] / medians['plain']:.2f}x); vs cad "
            f"{rates['cad_int8'] / rates['cad']:.2f}x; max |probability difference| to plain "
            f"fp32 {qdiff:.2e}; connection-node features: max relative difference "
            f"{int8_err:.4f}"
        )
    if "cad_compiled" in rates:
        cdiff = float(np.max(np.abs(outputs["cad_compiled"] - outputs["cad"])))
        print(
            f"cad compiled vs plain fp32: {rates['cad_compiled'] / rates['plain']:.2f}x "
            f"(median {medians['cad_compiled'] / medians['plain']:.2f}x); vs cad eager "
            f"{rates['cad_compiled'] / rates['cad']:.2f}x; max |probability difference| to cad "
            f"eager {cdiff:.2e}"
        )
    print(load_note(machine["loadavg_start"], end))
    name = f"bench_forward_{args.backbone}_{args.size}" + ("_quick" if args.quick else "")
    path = write_result(
        name,
        {
            "benchmark": name,
            "machine": machine,
            "threads": threads,
            "config": vars(args),
            "runtime": describe(runtime),
            "sides": {
                side: {
                    **t.as_dict(),
                    "slices_per_s_best": rates[side],
                    "slices_per_s_median": medians[side],
                    "page_faults_per_slice": float(np.median(faults[side])) / args.slices,
                }
                for side, t in timings.items()
            },
            "ratio_cad_vs_plain_best": rates["cad"] / rates["plain"],
            "ratio_cad_vs_plain_median": medians["cad"] / medians["plain"],
            "ratio_heap_reuse": rates["cad"] / rates["cad_glibc_heap"],
            "max_abs_prob_diff": diff,
            "max_rel_feature_err": feature_err,
            "max_rel_feature_err_int8": int8_err,
            "loadavg_end": end,
            "under_load": under_load(machine["loadavg_start"]) or under_load(end),
        },
        args.out or RESULTS / f"{name}.json",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
