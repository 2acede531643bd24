"""Study or series -> network-ready slices ``(S, C, H, W)`` float32.

Training ingest and batch scoring both call these functions, so one slice gets the same
input either way: statistics always come from whole volumes (never from the slices that
happen to be requested), padding is to a square with the reference volume's minimum, and
resizing is antialiased bilinear interpolation (torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cad.config import InputConfig
from cad.errors import DataError
from cad.io.series import Series
from cad.io.study import Study


def parse_phase(expression: str) -> list[tuple[str, float]]:
    """``"post1-pre"`` -> ``[("post1", 1.0), ("pre", -1.0)]``."""
    parts = expression.split("-")
    return [(parts[0], 1.0)] + [(p, -1.0) for p in parts[1:]]


def _statistics(volume: np.ndarray, spec: InputConfig) -> tuple[float, float, float]:
    """(offset, scale, minimum): ``(v - offset) / scale`` maps p_low/p_high to 0/1, or
    the mean/std to 0/1 for z-score."""
    flat = volume.reshape(-1)
    if spec.normalization == "percentile":
        low, high = np.percentile(flat, spec.percentiles)
        offset, scale = float(low), float(high - low)
        if scale <= 0:  # more than p_high of the voxels share one value: use the full range
            offset, scale = float(flat.min()), float(flat.max() - flat.min())
    else:
        offset, scale = float(flat.mean(dtype=np.float64)), float(flat.std(dtype=np.float64))
    if scale <= 0:
        raise DataError("a series has constant intensity; it carries no image to normalise")
    return offset, scale, float(flat.min())


def _cached_stats(cache: dict, key: str, spec: InputConfig, volume) -> tuple[float, float, float]:
    full_key = (key, spec.normalization, tuple(spec.percentiles))
    if full_key not in cache:
        cache[full_key] = _statistics(volume(), spec)
    return cache[full_key]


def _indices(slice_indices: Sequence[int] | None, count: int) -> np.ndarray:
    if slice_indices is None:
        return np.arange(count)
    idx = np.asarray(list(slice_indices), dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= count)]
    if bad.size:
        raise DataError(
            f"slice index {int(bad[0])} is outside the volume ({count} slices, 0-based); "
            "fix the manifest's slice_index"
        )
    return idx


def _square_resize(channels: list[np.ndarray], pads: list[float], size: int) -> np.ndarray:
    """Stack (S, H, W) channels to (S, C, size, size): pad to square, antialiased resize."""
    slices, height, width = channels[0].shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    out = np.empty((slices, len(channels), side, side), dtype=np.float32)
    for c, (channel, pad) in enumerate(zip(channels, pads, strict=True)):
        out[:, c] = pad
        out[:, c, top : top + height, left : left + width] = channel
    if side != size:
        tensor = F.interpolate(
            torch.from_numpy(out),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out = tensor.numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


def _require(study: Study, phases: set[str]) -> None:
    missing = sorted(phases - set(study.phases))
    if missing:
        raise DataError(
            f"the study has no {', '.join(missing)} phase; phases found: "
            f"{study.describe_phases()}. Choose input.phases among the found ones, or use "
            "channels 'repeat'/'single' with a series that exists"
        )


def study_slices(
    study: Study, spec: InputConfig, slice_indices: Sequence[int] | None = None
) -> np.ndarray:
    """Slices of a DCE study as ``(S, C, spec.size, spec.size)`` float32.

    ``dce``: one channel per phase expression (e.g. pre, post1, post1-pre). ``repeat``:
    the first expression, normalised by itself, repeated to 3 channels. ``single``: 1 channel.
    """
    expressions = [parse_phase(e) for e in spec.phases]
    if spec.channels == "dce":
        _require(study, {name for terms in expressions for name, _ in terms} | {"pre"})
        reference = study.phases["pre"]
        # Every phase is normalised with the pre-contrast statistics, not its own: then
        # enhancement (post > pre) stays visible and post1 - pre is a true subtraction.
        offset, scale, minimum = _cached_stats(reference._stats, "self", spec, reference.volume)
        shape = reference.volume().shape
        idx = _indices(slice_indices, shape[0])
        raw: dict[str, np.ndarray] = {}
        for terms in expressions:
            for name, _ in terms:
                volume = study.phases[name].volume()
                if volume.shape != shape:
                    raise DataError(
                        f"phase {name} has shape {volume.shape}, pre has {shape}; "
                        "DCE phases must share one geometry"
                    )
                raw.setdefault(name, volume if slice_indices is None else volume[idx])
        channels, pads = [], []
        for terms in expressions:
            total = sum(sign for _, sign in terms)
            channels.append(_combine(raw, terms, total * offset, scale))
            pads.append(total * (minimum - offset) / scale)
        return _square_resize(channels, pads, spec.size)
    terms = expressions[0]
    _require(study, {name for name, _ in terms})
    if len(terms) == 1:
        return series_slices(study.phases[terms[0][0]], spec, slice_indices)
    volume = sum(sign * study.phases[name].volume() for name, sign in terms)
    offset, scale, minimum = _cached_stats(study._stats, spec.phases[0], spec, lambda: volume)
    idx = _indices(slice_indices, volume.shape[0])
    return _expand((volume[idx] - offset) / scale, (minimum - offset) / scale, spec)


def _combine(
    raw: dict[str, np.ndarray], terms: list[tuple[str, float]], offset: float, scale: float
) -> np.ndarray:
    """``(sum(sign * raw[name]) - offset) / scale`` as float32, the same float operations
    in the same order as the plain expression, on one new array instead of one per step."""
    channel: np.ndarray | None = None
    for name, sign in terms:
        term = raw[name] if sign == 1.0 else sign * raw[name]  # x * 1.0 is x exactly
        if channel is None:
            channel = 0 + term  # what ``sum`` starts with (it turns -0.0 into 0.0)
        else:
            channel += term
    assert channel is not None
    channel -= offset
    channel /= scale
    return channel.astype(np.float32, copy=False)


def _expand(channel: np.ndarray, pad: float, spec: InputConfig) -> np.ndarray:
    copies = 3 if spec.channels == "repeat" else 1
    return _square_resize([channel.astype(np.float32)] * copies, [pad] * copies, spec.size)


def series_slices(
    series: Series, spec: InputConfig, slice_indices: Sequence[int] | None = None
) -> np.ndarray:
    """Slices of one series normalised by its own statistics (``repeat`` or ``single``)."""
    if spec.channels == "dce":
        raise DataError(
            "channels 'dce' needs a DCE study (manifest series 'dce'); a single series "
            "(manifest series 'single') needs input.channels 'repeat' or 'single'"
        )
    offset, scale, minimum = _cached_stats(series._stats, "self", spec, series.volume)
    volume = series.volume()
    idx = _indices(slice_indices, volume.shape[0])
    return _expand((volume[idx] - offset) / scale, (minimum - offset) / scale, spec)
