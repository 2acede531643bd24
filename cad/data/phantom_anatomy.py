"""Anatomy and signal model of the breast DCE-MRI phantom, in memory (no DICOM here).

One patient is a 3-D axial volume in millimetres (LPS: x to the patient's left, y to
posterior, z to superior) sampled on ``slices x size x size`` voxels over a fixed slab and
a per-patient field of view, so a smaller phantom is the same body sampled more coarsely.
Tissues are painted in layers with soft (partial-volume) masks; each carries a
fat-saturated pre-contrast signal, a non-fat-saturated T1 signal and a relative
enhancement for the three post-contrast phases. The signal then gets a smooth
multiplicative bias field (breast coil), a per-patient gain and Rician noise, and is
quantised to 12-bit stored values.

Confounders are deliberate: the heart and great vessels enhance strongly over a varying
range of slices, lymph nodes enhance like small masses, and background parenchymal
enhancement (BPE) and tubular vessels vary widely between patients, so that a lesion is
told apart by its shape, size and focal enhancement rather than by how bright a slice is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cad.data.phantom_signal import (
    BLOOD_CURVE,
    BPE_RAMP,
    KINETIC_CURVES,
    SERIES,
    TISSUE_SIGNAL,
    Value,
    acquire,
    scaled,
)

FOV_MM = (300.0, 380.0)
SLAB_MM = 120.0
MAX_STORED = 4095
KINETICS = ("persistent", "plateau", "washout")
SHAPES = ("round", "lobulated", "spiculated")
TISSUES = ("air", "skin", "fat", "fgt", "muscle", "thorax", "blood", "vessel", "lesion", "node")


@dataclass(frozen=True)
class LesionBox:
    """Lesion bounding box in Duke convention: 1-based, inclusive, slices in ascending z."""

    start_row: int
    end_row: int
    start_col: int
    end_col: int
    start_slice: int
    end_slice: int


@dataclass(frozen=True)
class SimulatedPatient:
    """Stored-value volumes (slices, rows, cols) per series, slice 0 = most inferior."""

    index: int
    series: dict[str, np.ndarray]
    slope: dict[str, float]
    intercept: dict[str, float]
    box: LesionBox | None
    lesion_shape: str | None
    kinetics: str | None
    bpe: float
    pixel_spacing: float
    slice_spacing: float
    tissue: np.ndarray = field(repr=False)  # TISSUES code per voxel

    @property
    def has_lesion(self) -> bool:
        return self.box is not None

    def real(self, name: str) -> np.ndarray:
        """Real-world values of one series (stored * slope + intercept), float32."""
        return self.series[name].astype(np.float32) * self.slope[name] + self.intercept[name]


class _Volume:
    """Sampling grid, anatomy masks and painted tissue properties of one patient."""

    def __init__(self, slices: int, size: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.px = round(float(rng.uniform(*FOV_MM)), 1) / size
        self.dz = SLAB_MM / slices
        c = ((np.arange(size) - (size - 1) / 2) * self.px).astype(np.float32)
        zc = ((np.arange(slices) - (slices - 1) / 2) * self.dz).astype(np.float32)
        self.z, self.y, self.x = zc[:, None, None], c[None, :, None], c[None, None, :]
        self.shape = (slices, size, size)
        self.pre = np.zeros(self.shape, np.float32)
        self.t1 = np.zeros(self.shape, np.float32)
        self.enh = np.zeros((3, *self.shape), np.float32)
        self.tissue = np.zeros(self.shape, np.uint8)

    def noise(self, sigma_mm: float) -> np.ndarray:
        """Gaussian-filtered white noise with unit standard deviation."""
        f = max(1, int(sigma_mm / self.px / 3))  # wide kernels run on a coarser grid
        slices, rows, cols = self.shape
        white = self.rng.standard_normal((slices, -(-rows // f), -(-cols // f)), np.float32)
        sigma = (sigma_mm / self.dz, *[sigma_mm / self.px / f] * 2)
        out = ndimage.gaussian_filter(white, sigma)
        if f > 1:
            out = ndimage.zoom(out, (1, f, f), order=1)[:, :rows, :cols]
        return out / max(float(out.std()), 1e-6)

    def depth(self, mask: np.ndarray) -> np.ndarray:
        """In-plane distance (mm) from each voxel of ``mask`` to the nearest voxel outside."""
        edt = ndimage.distance_transform_edt
        return np.stack([edt(np.pad(m, 1), self.px)[1:-1, 1:-1] for m in mask]).astype(np.float32)

    def soft(self, signed_mm: np.ndarray) -> np.ndarray:
        """Partial-volume coverage of a region whose signed distance (mm, <0 inside) is given."""
        return np.clip(0.5 - signed_mm / self.px, 0.0, 1.0).astype(np.float32)

    def point(self, index: np.ndarray) -> np.ndarray:
        """Voxel index (slice, row, col) -> position (z, y, x) in mm."""
        return np.array([self.z[index[0], 0, 0], self.y[0, index[1], 0], self.x[0, 0, index[2]]])

    def paint(self, alpha: np.ndarray, tissue: str, enh: tuple = (), tex: Value = 1) -> None:
        """Blend a tissue over what is there, weighted by its coverage ``alpha``."""
        code, pre, t1, default = TISSUE_SIGNAL[tissue]
        enh = enh or default
        self.pre += alpha * (pre * tex - self.pre)
        self.t1 += alpha * (t1 * tex - self.t1)
        for k in range(3):
            self.enh[k] += alpha * (enh[k] - self.enh[k])
        self.tissue[alpha >= 0.5] = code

    def tubes(self, paths: list[np.ndarray], radii: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """Rasterise poly-lines (N x 3 points in mm, z/y/x) as tubes of the given radii.

        A slice shows every part of a path lying within its slab, so a tube along z is a dot
        and an oblique one a short streak. Returns (coverage, index of the nearest path).
        """
        label = np.zeros(self.shape, np.int32)
        origin = np.array([self.z[0, 0, 0], self.y[0, 0, 0], self.x[0, 0, 0]])
        step = np.array([self.dz, self.px, self.px])
        for i, path in enumerate(paths, start=1):
            idx = np.rint((path - origin) / step).astype(int)
            ok = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
            label[tuple(idx[ok].T)] = i
        alpha, which = np.zeros(self.shape, np.float32), np.zeros(self.shape, np.int32)
        radius = np.asarray([0.0, *radii], np.float32)
        for k in np.flatnonzero(label.any(axis=(1, 2))):
            dist, near = ndimage.distance_transform_edt(label[k] == 0, self.px, return_indices=True)
            which[k] = label[k][tuple(near)]
            alpha[k] = np.clip((radius[which[k]] + self.px / 2 - dist) / self.px, 0.0, 1.0)
        return alpha, which - 1


def _curve(v: _Volume, start: np.ndarray, direction: np.ndarray, length: float) -> np.ndarray:
    """Points (mm) along a gently curving path."""
    t = np.arange(0.0, length, 0.4 * min(v.px, v.dz))[:, None]
    side = np.cross(direction, v.rng.normal(size=3))
    side /= np.linalg.norm(side) + 1e-9
    period, phase = v.rng.uniform(40, 90), v.rng.uniform(0, 6.3)
    wiggle = v.rng.uniform(2, 8) * np.sin(2 * np.pi * t / period + phase)
    return start + t * direction + wiggle * side


def _body(v: _Volume) -> None:
    """Thorax (subcutaneous fat, muscle, mediastinum, lungs) and two breasts of fat."""
    rng = v.rng
    ax, ay, y_cw = rng.uniform(135, 160), rng.uniform(65, 80), rng.uniform(-30, -10)
    v.ax, v.ay, v.y_cw = ax, ay, y_cw
    wobble = 0.02 * v.noise(40.0)
    rho_t = np.hypot(v.x / (ax * (1 + 0.04 * v.z / 60)), (v.y - y_cw - ay) / ay) + wobble
    v.thorax = rho_t < 1
    v.breast_rho = np.full(v.shape, 9.0, np.float32)
    size, cz = rng.uniform(0.7, 1.25), rng.uniform(-40, 40)
    for side in (-1, 1):
        cx = side * rng.uniform(70, 90)
        cy = y_cw + ay - ay * np.sqrt(max(1 - (cx / ax) ** 2, 0.05)) + 8
        rx, ry, rz = size * rng.uniform(52, 68), size * rng.uniform(60, 95), rng.uniform(100, 150)
        rho = np.sqrt(((v.x - cx) / rx) ** 2 + ((v.y - cy) / ry) ** 2 + ((v.z - cz) / rz) ** 2)
        v.breast_rho = np.minimum(v.breast_rho, rho + wobble)
    v.breast = (v.breast_rho < 1) & ~v.thorax
    v.body = v.thorax | v.breast
    v.body_depth, v.breast_depth = v.depth(v.body), v.depth(v.breast)
    v.paint(v.body.astype(np.float32), "fat")
    v.thorax_depth = v.depth(v.thorax)
    sub, mus = rng.uniform(4, 10), rng.uniform(10, 18)
    v.paint(((v.thorax_depth > sub) & (v.thorax_depth < sub + mus)).astype(np.float32), "muscle")
    v.inner = (v.thorax_depth >= sub + mus).astype(np.float32)
    v.paint(v.inner, "thorax")
    for side in (-1, 1):
        lx, ly = (v.x - side * 0.5 * ax) / (0.33 * ax), (v.y - y_cw - 1.1 * ay) / (0.65 * ay)
        lung = np.hypot(lx, ly)
        v.paint((lung < 1) * v.inner, "lung")


def _heart(v: _Volume) -> None:
    """Heart and great vessels: strongly enhancing blood pools of varying extent."""
    rng, yc = v.rng, v.y_cw + v.ay
    peak = rng.uniform(1.6, 3.2)
    # the slab meets the heart at a different height in every patient
    hz, hr = rng.uniform(-80, 80), rng.uniform(50, 90)
    scale = np.sqrt(np.clip(1 - ((v.z - hz) / hr) ** 2, 0.0, 1.0)) * rng.uniform(0.8, 1.15)
    hx, hy = rng.uniform(-15, 15), yc - 0.2 * v.ay
    rho = np.hypot((v.x - hx) / (0.27 * v.ax), (v.y - hy) / (0.42 * v.ay)) / (scale + 1e-3)
    v.paint((rho < 1) * v.inner, "blood", scaled(0.35 * peak, BLOOD_CURVE), 0.9)
    chamber = v.soft((rho - 0.7) * 0.3 * v.ay) * v.inner * (1 + 0.15 * v.noise(6.0))
    v.paint(np.clip(chamber, 0, 1), "blood", scaled(peak, BLOOD_CURVE))
    paths, radii, gains = [], [], []
    for _ in range(int(rng.integers(2, 5))):
        z0, z1 = sorted(rng.uniform(-SLAB_MM, SLAB_MM, 2))
        zs = np.arange(z0, z1 + SLAB_MM / 2, 0.4 * min(v.px, v.dz))
        drift = rng.normal(0, 0.15, 2)
        x = rng.uniform(-0.2, 0.2) * v.ax + drift[0] * (zs - z0)
        y = yc + rng.uniform(-0.3, 0.4) * v.ay + drift[1] * (zs - z0)
        paths.append(np.stack([zs, y, x], 1))
        radii.append(rng.uniform(5, 14))
        gains.append(rng.uniform(0.8, 1.2))
    alpha, which = v.tubes(paths, radii)
    v.paint(alpha * v.inner, "blood", scaled(np.float32(peak) * np.take(gains, which), BLOOD_CURVE))


def _nodes(v: _Volume) -> None:
    """Benign enhancing lymph nodes (axillary and intramammary) with a fatty hilum."""
    rng = v.rng
    cand = np.argwhere(v.breast & (v.body_depth > 8))
    for _ in range(int(rng.poisson(1.5))):
        if rng.random() < 0.8 or not len(cand):  # mostly axillary
            x = rng.choice([-1, 1]) * rng.uniform(0.6, 0.85) * v.ax
            y = v.y_cw + v.ay - v.ay * np.sqrt(1 - (x / v.ax) ** 2) + rng.uniform(2, 10)
            z = rng.uniform(-SLAB_MM / 2, SLAB_MM / 2)
        else:
            z, y, x = v.point(cand[rng.integers(len(cand))])
        r = rng.uniform(3.5, 8.0) * np.array([1.0, 0.7, 0.7]) * rng.uniform(0.8, 1.2, 3)
        rho = np.sqrt(((v.z - z) / r[0]) ** 2 + ((v.y - y) / r[1]) ** 2 + ((v.x - x) / r[2]) ** 2)
        node = v.soft((rho - 1) * r[1:].mean()) * v.body
        e = rng.uniform(0.8, 1.8)
        v.paint(node, "node", (e, 0.85 * e, 0.7 * e))
        v.paint(v.soft((rho - 0.45) * r[1:].mean()) * node, "fat")


def _glands(v: _Volume) -> float:
    """Fibroglandular tissue with texture and patchy background parenchymal enhancement."""
    rng = v.rng
    grain = v.noise(5.0) + 1.6 * (1 - v.breast_rho) + 0.4 * v.noise(2.0)
    thr = np.quantile(grain[v.breast], 1 - rng.uniform(0.1, 0.6))  # breast density
    deep = np.clip((v.breast_depth - 3.0) / 4.0, 0, 1)
    v.fgt = (1 / (1 + np.exp(-(grain - thr) / 0.12))) * v.breast * deep
    bpe = float(rng.choice([0.1, 0.3, 0.6, 1.0], p=[0.25, 0.3, 0.25, 0.2]) * rng.uniform(0.7, 1.3))
    patch = np.clip(0.6 + 0.5 * v.noise(10.0), 0.0, 1.5)
    v.paint(v.fgt.astype(np.float32), "fgt", scaled(bpe * patch, BPE_RAMP), 1 + 0.12 * v.noise(1))
    n_foci, cand = int(rng.poisson(14 * bpe)), np.argwhere(v.fgt > 0.7)
    if n_foci and len(cand):
        pts = cand[rng.choice(len(cand), n_foci)]
        alpha, which = v.tubes([v.point(p)[None] for p in pts], list(rng.uniform(1.5, 3.5, n_foci)))
        gain = rng.uniform(0.8, 1.8, n_foci).astype(np.float32)[which]
        v.paint(alpha, "fgt", scaled(gain, BPE_RAMP))
    return bpe


def _vessels(v: _Volume) -> None:
    """Enhancing vessels: breast vessels crossing several slices and internal mammaries."""
    rng = v.rng
    cand = np.argwhere(v.breast & (v.body_depth > 4))
    paths, radii, strength = [], [], []
    for _ in range(int(rng.choice([rng.integers(2, 7), rng.integers(8, 16)], p=[0.6, 0.4]))):
        d = rng.normal(size=3) * np.array([1.0, 0.8, 0.8])
        d[0] = np.sign(d[0] or 1) * max(abs(d[0]), 0.8)
        start = v.point(cand[rng.integers(len(cand))])
        paths.append(_curve(v, start, d / np.linalg.norm(d), rng.uniform(40, 140)))
        radii.append(rng.uniform(0.8, 2.2))
        strength.append(rng.uniform(1.0, 3.2))
    zs = np.arange(-SLAB_MM, SLAB_MM, 0.4 * min(v.px, v.dz))
    for side in (-1, 1):
        paths.append(
            np.stack([zs, np.full_like(zs, v.y_cw + 10), np.full_like(zs, side * 28.0)], 1)
        )
        radii.append(rng.uniform(1.5, 2.5))
        strength.append(rng.uniform(1.5, 2.5))
    alpha, which = v.tubes(paths, radii)
    alpha *= v.body & (v.thorax_depth < 40)
    v.paint(alpha, "vessel", scaled(np.asarray(strength, np.float32)[which], BLOOD_CURVE))


def _lesion(v: _Volume) -> tuple[str, str]:
    """One enhancing 3-D mass inside the breast; returns (shape, kinetics)."""
    rng = v.rng
    shape, kinetics = str(rng.choice(SHAPES)), str(rng.choice(KINETICS))
    radius = rng.uniform(7.0, 16.0)
    cz = rng.uniform(-SLAB_MM / 2 + 0.5 * radius, SLAB_MM / 2 - 0.5 * radius)
    k = int(np.argmin(np.abs(v.z[:, 0, 0] - cz)))
    room = v.breast_depth[k]
    radius = min(radius, max(float(room.max()) - 3, 7.0))
    ok = np.argwhere(room >= radius + 3)
    if len(ok):
        w = v.fgt[k][tuple(ok.T)] + 0.3  # lesions arise mostly in glandular tissue
        r_, c_ = ok[rng.choice(len(ok), p=w / w.sum())]
    else:
        r_, c_ = np.unravel_index(np.argmax(room), room.shape)
    centre = v.point((k, r_, c_)).astype(np.float32)  # on a voxel: never lost in sampling
    axes = radius * rng.uniform(0.75, 1.25, 3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rel = [v.z - centre[0], v.y - centre[1], v.x - centre[2]]
    local = [sum(rot[i, j] * rel[j] for j in range(3)) / axes[i] for i in range(3)]
    rho = np.sqrt(sum(c * c for c in local)) + 1e-6
    modulation = np.ones_like(rho)
    if shape != "round":
        for _ in range(6):
            w_ = rng.normal(size=3)
            phase = rng.uniform(2, 4) * sum(w_[i] * local[i] for i in range(3)) / rho
            modulation += rng.uniform(0.05, 0.12) * np.cos(phase + rng.uniform(0, 6.3))
    mass = v.soft((rho / modulation - 1) * radius)
    if shape == "spiculated":
        spikes = []
        for _ in range(int(rng.integers(5, 12))):
            d = rng.normal(size=3)
            t = np.linspace(0.6 * radius, radius * rng.uniform(1.5, 2.3), 40)[:, None]
            spikes.append(centre + t * d / np.linalg.norm(d))
        spike, _ = v.tubes(spikes, list(rng.uniform(0.6, 1.1, len(spikes))))
        mass = np.maximum(mass, 0.8 * spike * (rho < 3))
    peak = rng.uniform(1.0, 2.0)
    if rng.random() < 0.35:  # rim enhancement
        profile = 0.35 + 0.65 * np.clip(rho / modulation, 0, 1) ** 2
    else:
        profile = np.clip(0.85 + 0.15 * v.noise(2.0), 0.5, 1.2)
    tex = rng.uniform(0.9, 1.1) + 0.08 * v.noise(1.5)
    v.paint(mass * v.breast, "lesion", scaled(peak * profile, KINETIC_CURVES[kinetics]), tex)
    return shape, kinetics


def _box(tissue: np.ndarray) -> LesionBox | None:
    zs, rs, cs = np.nonzero(tissue == TISSUES.index("lesion"))
    if not len(zs):
        return None
    lo, hi = [int(a.min()) + 1 for a in (rs, cs, zs)], [int(a.max()) + 1 for a in (rs, cs, zs)]
    return LesionBox(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def simulate_patient(
    index: int, slices: int, size: int, rng_seed: int, has_lesion: bool
) -> SimulatedPatient:
    """Simulate one patient's T1 and four DCE volumes; deterministic in all arguments.

    Post-contrast series of odd-indexed patients are stored with RescaleSlope 2.
    """
    v = _Volume(slices, size, np.random.default_rng([rng_seed, index, slices, size]))
    _body(v)
    _heart(v)
    _nodes(v)
    bpe = _glands(v)
    _vessels(v)
    shape, kinetics = _lesion(v) if has_lesion else (None, None)
    real = acquire(v)
    slope = {n: 2.0 if n.startswith("post") and index % 2 else 1.0 for n in SERIES}
    intercept = dict.fromkeys(SERIES, 0.0)
    stored = {
        n: np.clip(np.rint((real[n] - intercept[n]) / slope[n]), 0, MAX_STORED) for n in SERIES
    }
    series = {n: a.astype(np.uint16) for n, a in stored.items()}
    box = _box(v.tissue) if has_lesion else None
    if box is None:
        shape = kinetics = None
    return SimulatedPatient(
        index, series, slope, intercept, box, shape, kinetics, bpe, v.px, v.dz, v.tissue
    )


def lesion_flags(patients: int, lesion_fraction: float, seed: int) -> list[bool]:
    """Which patients get a lesion: round(patients * fraction) of them, chosen by seed."""
    n = int(round(patients * lesion_fraction))
    if 0 < lesion_fraction < 1 and patients > 1:
        n = min(max(n, 1), patients - 1)
    chosen = set(np.random.default_rng([seed, 0x1E5]).permutation(patients)[:n].tolist())
    return [i in chosen for i in range(patients)]
