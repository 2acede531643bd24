"""Anatomy and signal model of the breast DCE-MRI phantom, in memory (no DICOM here).

One patient is a 3-D axial volume in millimetres (LPS: x to the patient's left, y to
posterior, z to superior) sampled on ``slices x size x size`` voxels over a fixed field of
view, so a smaller phantom is the same body sampled more coarsely. Tissues are painted in
layers with soft (partial-volume) masks; each carries a fat-saturated pre-contrast signal,
a non-fat-saturated T1 signal and a relative enhancement for the three post-contrast
phases. The signal then gets a smooth multiplicative bias field, a per-patient gain and
Rician noise, and is quantised to 12-bit stored values.

Confounders are deliberate: the heart and aorta enhance strongly in every slice,
background parenchymal enhancement (BPE) and tubular vessels vary widely between
patients, so that a lesion is told apart by its shape, size and focal enhancement rather
than by how bright a slice is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

FOV_MM = 340.0
SLAB_MM = 120.0
MAX_STORED = 4095
SERIES = ("t1", "pre", "post1", "post2", "post3")
KINETICS = ("persistent", "plateau", "washout")
SHAPES = ("round", "lobulated", "spiculated")
TISSUES = ("air", "skin", "fat", "fgt", "muscle", "thorax", "blood", "vessel", "lesion")

# post1, post2, post3 enhancement relative to post1
_CURVES = {"persistent": (1.0, 1.25, 1.45), "plateau": (1.0, 1.03, 1.0),
           "washout": (1.0, 0.8, 0.65)}
_BPE_RAMP = (0.45, 0.75, 1.0)
_BLOOD = (1.0, 0.8, 0.68)


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
    tissue: np.ndarray = field(repr=False)

    @property
    def has_lesion(self) -> bool:
        return self.box is not None

    def real(self, name: str) -> np.ndarray:
        """Real-world values of one series (stored * slope + intercept), float32."""
        return self.series[name].astype(np.float32) * self.slope[name] + self.intercept[name]


class _Volume:
    """Sampling grid plus the painted tissue properties of one patient."""

    def __init__(self, slices: int, size: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.px = FOV_MM / size
        self.dz = SLAB_MM / slices
        c = ((np.arange(size) - (size - 1) / 2) * self.px).astype(np.float32)
        zc = ((np.arange(slices) - (slices - 1) / 2) * self.dz).astype(np.float32)
        self.z, self.y, self.x = zc[:, None, None], c[None, :, None], c[None, None, :]
        self.shape = (slices, size, size)
        self.pre = np.zeros(self.shape, np.float32)
        self.t1 = np.zeros(self.shape, np.float32)
        self.enh = np.zeros((3, *self.shape), np.float32)
        self.tissue = np.zeros(self.shape, np.uint8)

    def noise(self, sigma_mm: float, in_plane: bool = False) -> np.ndarray:
        """Gaussian-filtered white noise with unit standard deviation."""
        sz = 0.0 if in_plane else sigma_mm / self.dz
        out = ndimage.gaussian_filter(self.rng.standard_normal(self.shape, np.float32),
                                      (sz, sigma_mm / self.px, sigma_mm / self.px))
        return out / max(float(out.std()), 1e-6)

    def depth(self, mask: np.ndarray) -> np.ndarray:
        """In-plane distance (mm) from each voxel of ``mask`` to the nearest voxel outside."""
        padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        dist = ndimage.distance_transform_edt(padded, sampling=(1e4, self.px, self.px))
        return dist[:, 1:-1, 1:-1].astype(np.float32)

    def soft(self, signed_mm: np.ndarray) -> np.ndarray:
        """Partial-volume coverage of a region whose signed distance (mm, <0 inside) is given."""
        return np.clip(0.5 - signed_mm / self.px, 0.0, 1.0).astype(np.float32)

    def paint(self, alpha: np.ndarray, code: int, pre: float | np.ndarray,
              t1: float | np.ndarray, enh: tuple) -> None:
        """Blend a tissue over what is there, weighted by its coverage ``alpha``."""
        self.pre += alpha * (pre - self.pre)
        self.t1 += alpha * (t1 - self.t1)
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
        if not label.any():
            return np.zeros(self.shape, np.float32), label
        dist, nearest = ndimage.distance_transform_edt(
            label == 0, sampling=(1e4, self.px, self.px), return_indices=True)
        which = label[tuple(nearest)]
        radius = np.asarray([0.0, *radii], np.float32)[which]
        alpha = np.clip((radius + self.px / 2 - dist) / self.px, 0.0, 1.0).astype(np.float32)
        return alpha, which - 1


def _curve(start: np.ndarray, direction: np.ndarray, length: float, wiggle: float,
           rng: np.random.Generator, step: float) -> np.ndarray:
    """Points (mm) along a gently curving path."""
    n = max(int(length / step), 2)
    t = np.linspace(0.0, length, n)[:, None]
    side = np.cross(direction, rng.normal(size=3))
    side /= np.linalg.norm(side) + 1e-9
    bend = wiggle * np.sin(2 * np.pi * t / rng.uniform(40, 90) + rng.uniform(0, 6.3))
    return start + t * direction + bend * side


def _body(v: _Volume) -> dict[str, np.ndarray]:
    """Thorax, two breasts, skin, subcutaneous fat, muscle, lungs, heart and aorta."""
    rng = v.rng
    ax, ay = rng.uniform(135, 160), rng.uniform(65, 80)
    y_cw = rng.uniform(-30, -10)
    yc = y_cw + ay
    wobble = 0.02 * v.noise(40.0)
    rho_t = np.sqrt((v.x / (ax * (1 + 0.04 * v.z / 60))) ** 2 + ((v.y - yc) / ay) ** 2) + wobble
    thorax = rho_t < 1
    breast_rho = np.full(v.shape, 9.0, np.float32)
    size = rng.uniform(0.7, 1.25)
    cz = rng.uniform(-40, 40)
    for side in (-1, 1):
        cx = side * rng.uniform(70, 90)
        cy = yc - ay * np.sqrt(max(1 - (cx / ax) ** 2, 0.05)) + 8
        rx, ry, rz = size * rng.uniform(52, 68), size * rng.uniform(60, 95), rng.uniform(100, 150)
        rho = np.sqrt(((v.x - cx) / rx) ** 2 + ((v.y - cy) / ry) ** 2 + ((v.z - cz) / rz) ** 2)
        breast_rho = np.minimum(breast_rho, rho + wobble)
    breast = (breast_rho < 1) & ~thorax
    body = thorax | breast
    depth = v.depth(body)
    v.paint(v.soft(-depth + v.px / 2) * body, 2, 60.0, 900.0, (0.05, 0.06, 0.07))
    tdepth = v.depth(thorax)
    sub, mus = rng.uniform(4, 10), rng.uniform(10, 18)
    v.paint(((tdepth > sub) & (tdepth < sub + mus)).astype(np.float32), 4, 230.0, 380.0,
            (0.25, 0.35, 0.4))
    inner = (tdepth >= sub + mus).astype(np.float32)
    v.paint(inner, 5, 180.0, 300.0, (0.3, 0.35, 0.35))
    for side in (-1, 1):
        lung = np.sqrt(((v.x - side * 0.5 * ax) / (0.33 * ax)) ** 2
                       + ((v.y - yc - 0.1 * ay) / (0.65 * ay)) ** 2) < 1
        v.paint(lung * inner, 5, 25.0, 40.0, (0.1, 0.1, 0.1))
    # the slab meets the heart at a different height in every patient
    hz, hr = rng.uniform(-80, 80), rng.uniform(50, 90)
    scale = np.sqrt(np.clip(1 - ((v.z - hz) / hr) ** 2, 0.0, 1.0)) * rng.uniform(0.8, 1.15)
    hx, hy = rng.uniform(-15, 15), yc - 0.2 * ay
    rho_h = np.sqrt(((v.x - hx) / (0.27 * ax)) ** 2 + ((v.y - hy) / (0.42 * ay)) ** 2) / (scale + 1e-3)
    peak = rng.uniform(1.4, 3.0)
    v.paint((rho_h < 1) * inner, 6, 200.0, 320.0, tuple(0.35 * peak * c for c in _BLOOD))
    chamber = v.soft((rho_h - 0.7) * 0.3 * ay) * inner * (1 + 0.15 * v.noise(6.0))
    v.paint(np.clip(chamber, 0, 1), 6, 220.0, 300.0, tuple(peak * c for c in _BLOOD))
    aorta = np.hypot(v.x + 0.12 * ax, v.y - yc - 0.35 * ay) - rng.uniform(9, 13)
    v.paint(v.soft(aorta) * inner, 6, 220.0, 300.0, tuple(peak * c for c in _BLOOD))
    return {"body": body, "breast": breast, "breast_rho": breast_rho, "depth": depth,
            "thorax": thorax, "y_cw": np.float32(y_cw), "tdepth": tdepth}


def _glands(v: _Volume, anat: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Fibroglandular tissue with texture and patchy background parenchymal enhancement."""
    rng = v.rng
    breast = anat["breast"]
    field = v.noise(5.0) + 1.6 * (1 - anat["breast_rho"]) + 0.4 * v.noise(2.0)
    density = rng.uniform(0.1, 0.6)
    thr = np.quantile(field[breast], 1 - density)
    deep = np.clip((v.depth(breast) - 3.0) / 4.0, 0, 1)
    fgt = (1 / (1 + np.exp(-(field - thr) / 0.12))) * breast * deep
    bpe = float(rng.choice([0.08, 0.25, 0.5, 0.85], p=[0.25, 0.3, 0.25, 0.2]) * rng.uniform(0.7, 1.3))
    patch = np.clip(0.6 + 0.6 * v.noise(10.0), 0.0, 2.0)
    tex = 1 + 0.12 * v.noise(1.0)
    v.paint(fgt.astype(np.float32), 3, 300.0 * tex, 330.0 * tex,
            tuple(bpe * patch * r for r in _BPE_RAMP))
    n_foci = int(rng.poisson(14 * bpe))
    cand = np.argwhere(fgt > 0.7)
    if n_foci and len(cand):
        pts = cand[rng.choice(len(cand), n_foci)]
        centres = [np.array([v.z[p[0], 0, 0], v.y[0, p[1], 0], v.x[0, 0, p[2]]])[None]
                   for p in pts]
        radii = list(rng.uniform(1.5, 3.5, n_foci))
        alpha, which = v.tubes(centres, radii)
        gain = rng.uniform(0.6, 1.3, n_foci).astype(np.float32)[which]
        v.paint(alpha, 3, 300.0, 330.0, tuple(gain * r * 1.4 for r in _BPE_RAMP))
    return fgt, bpe


def _vessels(v: _Volume, anat: dict[str, np.ndarray]) -> None:
    """Enhancing vessels: breast vessels crossing several slices and internal mammaries."""
    rng = v.rng
    breast = anat["breast"] & (anat["depth"] > 4)
    cand = np.argwhere(breast)
    n = int(rng.choice([rng.integers(2, 7), rng.integers(8, 16)], p=[0.6, 0.4]))
    paths, radii, strength = [], [], []
    step = 0.4 * min(v.px, v.dz)
    for _ in range(n):
        p = cand[rng.integers(len(cand))]
        start = np.array([v.z[p[0], 0, 0], v.y[0, p[1], 0], v.x[0, 0, p[2]]])
        d = rng.normal(size=3) * np.array([1.0, 0.8, 0.8])
        d[0] = np.sign(d[0] or 1) * max(abs(d[0]), 0.8)
        d /= np.linalg.norm(d)
        paths.append(_curve(start, d, rng.uniform(40, 140), rng.uniform(2, 8), rng, step))
        radii.append(rng.uniform(0.8, 2.2))
        strength.append(rng.uniform(0.8, 2.6))
    ys = float(anat["y_cw"]) + 10
    for side in (-1, 1):
        zs = np.arange(-SLAB_MM, SLAB_MM, step)
        paths.append(np.stack([zs, np.full_like(zs, ys), np.full_like(zs, side * 28.0)], 1))
        radii.append(rng.uniform(1.5, 2.5))
        strength.append(rng.uniform(1.5, 2.5))
    alpha, which = v.tubes(paths, radii)
    alpha *= anat["body"] & (anat["tdepth"] < 40)
    s = np.asarray(strength, np.float32)[which]
    v.paint(alpha, 7, 170.0, 250.0, tuple(s * c for c in _BLOOD))


def _lesion(v: _Volume, anat: dict[str, np.ndarray], fgt: np.ndarray) -> tuple[str, str]:
    """One enhancing 3-D mass inside the breast; returns (shape, kinetics)."""
    rng = v.rng
    shape, kinetics = str(rng.choice(SHAPES)), str(rng.choice(KINETICS))
    radius = rng.uniform(6.0, 15.0)
    bdepth = v.depth(anat["breast"])
    for _ in range(8):
        cz = rng.uniform(-SLAB_MM / 2 + 0.5 * radius, SLAB_MM / 2 - 0.5 * radius)
        k = int(np.argmin(np.abs(v.z[:, 0, 0] - cz)))
        ok = np.argwhere(bdepth[k] > radius + 3)
        if len(ok):
            break
        radius *= 0.85
    if len(ok):
        w = fgt[k][tuple(ok.T)] + 0.3
        r_, c_ = ok[rng.choice(len(ok), p=w / w.sum())]
    else:
        r_, c_ = np.unravel_index(np.argmax(bdepth[k]), bdepth[k].shape)
    centre = np.array([cz, v.y[0, r_, 0], v.x[0, 0, c_]], np.float32)
    axes = radius * rng.uniform(0.75, 1.25, 3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rel = [v.z - centre[0], v.y - centre[1], v.x - centre[2]]
    local = [sum(rot[i, j] * rel[j] for j in range(3)) / axes[i] for i in range(3)]
    rho = np.sqrt(sum(c * c for c in local)) + 1e-6
    unit = [c / rho for c in local]
    modulation = np.ones_like(rho)
    if shape != "round":
        for _ in range(6):
            w_ = rng.normal(size=3)
            modulation += rng.uniform(0.05, 0.12) * np.cos(
                rng.uniform(2, 4) * sum(w_[i] * unit[i] for i in range(3)) + rng.uniform(0, 6.3))
    core = v.soft((rho / modulation - 1) * radius)
    mass = core
    if shape == "spiculated":
        spikes = []
        for _ in range(int(rng.integers(5, 12))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            t = np.linspace(0.6 * radius, radius * rng.uniform(1.5, 2.3), 40)[:, None]
            spikes.append(centre + t * d)
        spike, _ = v.tubes(spikes, list(rng.uniform(0.6, 1.1, len(spikes))))
        mass = np.maximum(core, 0.8 * spike * (rho < 3))
    peak = rng.uniform(0.9, 2.0)
    if rng.random() < 0.35:
        profile = 0.35 + 0.65 * np.clip(rho / modulation, 0, 1) ** 2
    else:
        profile = np.clip(0.85 + 0.15 * v.noise(2.0), 0.5, 1.2)
    tex = 1 + 0.08 * v.noise(1.5)
    v.paint(mass * anat["breast"], 8, rng.uniform(250, 320) * tex, 340.0 * tex,
            tuple(peak * profile * c for c in _CURVES[kinetics]))
    return shape, kinetics


def _box(tissue: np.ndarray) -> LesionBox:
    zs, rs, cs = np.nonzero(tissue == TISSUES.index("lesion"))
    return LesionBox(int(rs.min()) + 1, int(rs.max()) + 1, int(cs.min()) + 1,
                     int(cs.max()) + 1, int(zs.min()) + 1, int(zs.max()) + 1)


def _acquire(v: _Volume, anat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Real-valued magnitude images: bias field, gain, skin, Rician noise."""
    rng = v.rng
    v.paint(v.soft(anat["depth"] - 2.5) * anat["body"], 1, 330.0, 480.0, (0.35, 0.5, 0.6))
    xn, yn, zn = v.x / 170, v.y / 170, v.z / 60
    coeff = rng.normal(0, 0.12, 6)
    bias = np.exp(coeff[0] * xn + coeff[1] * yn + coeff[2] * zn + coeff[3] * xn * yn
                  + coeff[4] * xn**2 - np.abs(coeff[5]) * yn**2 - 0.15 * yn).astype(np.float32)
    gain = rng.uniform(1.0, 2.4)
    sigma = rng.uniform(0.03, 0.06) * 300 * gain
    clean = {"t1": v.t1, "pre": v.pre}
    clean.update({f"post{k + 1}": v.pre * (1 + v.enh[k]) for k in range(3)})
    out = {}
    for name in SERIES:
        signal = clean[name] * bias * gain
        re = signal + sigma * rng.standard_normal(v.shape, np.float32)
        im = sigma * rng.standard_normal(v.shape, np.float32)
        out[name] = np.sqrt(re * re + im * im)
    return out


def simulate_patient(index: int, slices: int, size: int, rng_seed: int,
                     has_lesion: bool) -> SimulatedPatient:
    """Simulate one patient's T1 and four DCE volumes; deterministic in all arguments."""
    rng = np.random.default_rng([rng_seed, index, slices, size])
    v = _Volume(slices, size, rng)
    anat = _body(v)
    fgt, bpe = _glands(v, anat)
    _vessels(v, anat)
    shape = kinetics = None
    if has_lesion:
        shape, kinetics = _lesion(v, anat, fgt)
    real = _acquire(v, anat)
    post_slope = float(rng.choice([1.0, 2.0]))
    slope = {"t1": 1.0, "pre": 1.0, "post1": post_slope, "post2": post_slope,
             "post3": post_slope}
    intercept = dict.fromkeys(SERIES, 0.0)
    stored = {name: np.clip(np.rint((real[name] - intercept[name]) / slope[name]), 0,
                            MAX_STORED).astype(np.uint16) for name in SERIES}
    box = _box(v.tissue) if has_lesion and (v.tissue == TISSUES.index("lesion")).any() else None
    return SimulatedPatient(index=index, series=stored, slope=slope, intercept=intercept,
                            box=box, lesion_shape=shape if box else None,
                            kinetics=kinetics if box else None, bpe=bpe,
                            pixel_spacing=v.px, slice_spacing=v.dz, tissue=v.tissue)


def lesion_flags(patients: int, lesion_fraction: float, seed: int) -> list[bool]:
    """Which patients get a lesion: round(patients * fraction) of them, chosen by seed."""
    n = int(round(patients * lesion_fraction))
    n = min(max(n, 1), patients - 1) if patients > 1 else n
    chosen = set(np.random.default_rng([seed, 0x1E5]).permutation(patients)[:n].tolist())
    return [i in chosen for i in range(patients)]
