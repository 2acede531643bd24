"""The phantom's MR signal: what each tissue gives in each series, how lesions, parenchyma
and blood enhance over the three post-contrast phases, and the acquisition (breast-coil
bias field, gain, Rician noise) that turns painted tissue into magnitude images.
:mod:`cad.data.phantom_anatomy` paints the tissues with these values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cad.data.phantom_anatomy import _Volume

SERIES = ("t1", "pre", "post1", "post2", "post3")

# tissue: (code, fat-saturated pre-contrast signal, T1 signal, enhancement post1..post3)
TISSUE_SIGNAL = {
    "fat": (2, 60.0, 900.0, (0.05, 0.06, 0.07)),
    "skin": (1, 330.0, 480.0, (0.35, 0.5, 0.6)),
    "fgt": (3, 300.0, 330.0, (0.0, 0.0, 0.0)),
    "muscle": (4, 170.0, 380.0, (0.25, 0.35, 0.4)),
    "thorax": (5, 120.0, 300.0, (0.3, 0.35, 0.35)),
    "lung": (5, 25.0, 40.0, (0.1, 0.1, 0.1)),
    "blood": (6, 220.0, 300.0, (0.0, 0.0, 0.0)),
    "vessel": (7, 170.0, 250.0, (0.0, 0.0, 0.0)),
    "lesion": (8, 285.0, 340.0, (0.0, 0.0, 0.0)),
    "node": (9, 260.0, 330.0, (0.0, 0.0, 0.0)),
}
# enhancement at post1, post2, post3 relative to post1
KINETIC_CURVES = dict(
    persistent=(1.0, 1.25, 1.45), plateau=(1.0, 1.03, 1.0), washout=(1.0, 0.8, 0.65)
)
BPE_RAMP = (0.55, 0.8, 1.0)
BLOOD_CURVE = (1.0, 0.8, 0.68)
Value = float | np.ndarray


def scaled(level: Value, curve: tuple[float, ...]) -> tuple[Value, ...]:
    return tuple(level * c for c in curve)


def acquire(v: _Volume) -> dict[str, np.ndarray]:
    """Real-valued magnitude images: skin, coil bias field, gain, Rician noise."""
    rng = v.rng
    v.paint(v.soft(v.body_depth - 2.5) * v.body, "skin")
    xn, yn, zn = v.x / 170, v.y / 170, v.z / 60
    coeff = rng.normal(0, 0.12, 6)
    coeff[5] = abs(coeff[5])
    terms = (xn, yn, zn, xn * yn, xn**2, -(yn**2))
    smooth = sum(c * t for c, t in zip(coeff, terms, strict=True))
    bias = np.exp(smooth - rng.uniform(0.2, 0.5) * yn)  # brighter near the breast coil
    gain = rng.uniform(1.0, 2.4)
    sigma = rng.uniform(0.025, 0.05) * 300 * gain
    clean = {"t1": v.t1, "pre": v.pre}
    clean.update({f"post{k + 1}": v.pre * (1 + v.enh[k]) for k in range(3)})
    out = {}
    for name in SERIES:
        re = clean[name] * bias * gain + sigma * rng.standard_normal(v.shape, np.float32)
        im = sigma * rng.standard_normal(v.shape, np.float32)
        out[name] = np.sqrt(re * re + im * im)
    return out
