"""The generative model behind the synthetic cohort: anatomy, latent biology, misregistration.

Kept apart from :mod:`deltarad.synth` (configuration, files, scanner effects) so the model can be
read on its own. Everything here is in the anatomy's frame: the baseline scanner's physical space
(mm, LPS, field of view centred on the origin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

if TYPE_CHECKING:
    from deltarad.synth import SynthConfig

RING_REACH_MM = 10.0  # how far the peritumoral effect reaches beyond the tumour surface
DEFORMATION_GRID_MM = 6.0  # control grid of the smooth deformation (linearly interpolated)

# Tissue intensities per contrast, before scanner effects. Besides the tissues: `texture_gain`
# scales the soft-tissue field; `unit_gain` is the contrast's units per CT Hounsfield unit (the
# peritumoral ring's amplitude, and the scanner's offset and noise of an extra channel); the
# tumour's texture and necrotic core (`core`: its depth per unit of z_tumor, negative when
# necrosis is bright) scale with `tumor_gain`; with response, the tumour's mean shifts by
# -20 * `response_gain` and its texture amplitude by the factor 1.1 - `texture_response`.
TISSUES = {
    "CT": {
        "air": -1000.0,
        "fat": -100.0,
        "soft": 40.0,
        "organ": 60.0,
        "bone": 600.0,
        "vessel": 170.0,
        "tumor": 10.0,  # hypoattenuating lesion (~50 HU below the organ), as on contrast CT
        "texture_gain": 1.0,
        "unit_gain": 1.0,
        "tumor_gain": 1.0,
        "core": 30.0,
        "response_gain": 1.0,
        "texture_response": 0.5,
    },
    "MR": {
        "air": 0.0,
        "fat": 700.0,
        "soft": 300.0,
        "organ": 250.0,
        "bone": 80.0,
        "vessel": 650.0,
        "tumor": 460.0,
        "texture_gain": 3.0,
        "unit_gain": 3.0,
        "tumor_gain": 3.0,
        "core": 30.0,
        "response_gain": 3.0,
        "texture_response": 0.5,
    },
    # Apparent diffusion coefficient, 1e-6 mm²/s: the cellular tumour restricts diffusion (dark),
    # flowing blood is bright, fat (suppressed) and air (masked by the scanner) are dark. With
    # response the tumour's diffusion rises towards the normal tissue's (~+500 at full response),
    # and its necrotic core is bright.
    "ADC": {
        "air": 0.0,
        "fat": 300.0,
        "soft": 1600.0,
        "organ": 1350.0,
        "bone": 500.0,
        "vessel": 2800.0,
        "tumor": 800.0,
        "texture_gain": 7.0,
        "unit_gain": 10.0,
        "tumor_gain": 7.0,
        "core": -30.0,
        "response_gain": -25.0,
        "texture_response": 0.5,
    },
    # FDG uptake, SUV-like: background ~0.4-1, blood pool and organ ~1.6-2, an avid heterogeneous
    # tumour (~9, a photopenic necrotic core) that fades to the background with response (its
    # mean drops by ~7.8 and its heterogeneity to a tenth at full response).
    "PET": {
        "air": 0.0,
        "fat": 0.4,
        "soft": 1.0,
        "organ": 2.0,
        "bone": 1.2,
        "vessel": 1.6,
        "tumor": 9.0,
        "texture_gain": 0.01,
        "unit_gain": 0.02,
        "tumor_gain": 0.08,
        "core": 30.0,
        "response_gain": 0.39,
        "texture_response": 1.0,
    },
}


def true_transform_from_parts(
    deformation: sitk.Image, matrix: np.ndarray, translation: np.ndarray, center: np.ndarray
) -> sitk.Transform:
    """Compose ``x -> M (x + d(x) - c) + c + t`` as an ITK transform (deformation first)."""
    field = sitk.DisplacementFieldTransform(sitk.Cast(deformation, sitk.sitkVectorFloat64))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(float(v) for v in np.asarray(matrix).ravel()))
    affine.SetTranslation(tuple(float(v) for v in translation))
    affine.SetCenter(tuple(float(v) for v in center))
    # A CompositeTransform applies the transform added last first.
    return sitk.CompositeTransform([affine, field])


# --- random fields ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomField:
    """A smooth random field on a regular grid, sampled by linear interpolation at mm points."""

    values: np.ndarray  # indexed [x, y, z]
    origin: np.ndarray
    spacing: float

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        lo: np.ndarray,
        hi: np.ndarray,
        spacing: float,
        sigma_mm: float,
        components: int = 1,
    ) -> RandomField:
        shape = np.ceil((hi - lo) / spacing).astype(int) + 1
        raw = rng.standard_normal((components, *shape))
        smooth = np.stack(
            [ndimage.gaussian_filter(c, sigma_mm / spacing, mode="wrap") for c in raw]
        )
        smooth /= smooth.std() + 1e-12
        return cls(smooth if components > 1 else smooth[0], np.asarray(lo, float), spacing)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        idx = ((pts - self.origin) / self.spacing).T
        if self.values.ndim == 4:
            return np.stack(
                [ndimage.map_coordinates(c, idx, order=1, mode="nearest") for c in self.values],
                axis=1,
            )
        return ndimage.map_coordinates(self.values, idx, order=1, mode="nearest")


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _open_unit(u: float) -> float:
    """A uniform draw kept off 0 and 1, where the logit and the normal quantile are infinite."""
    return min(max(u, 1e-12), 1.0 - 1e-12)


def _logit(u: float) -> float:
    u = _open_unit(u)
    return math.log(u) - math.log1p(-u)


def followup_response_probability(
    pretreatment_logit: float, radiological: float, imaging_noise: float
) -> float:
    """P(responder | pre-treatment latents, radiological response): the post-treatment oracle.

    The response depth is ``s = eta + L`` (``eta`` the pre-treatment logit, ``L`` standard
    logistic noise); the patient responds when ``s > 0``; imaging sees ``r = s + N(0, noise²)``.
    Bayes' rule over a fine grid of ``s``: prior logistic(s - eta) times the Gaussian likelihood
    of ``r``. No imaging model can beat this score on average.
    """
    if imaging_noise <= 0:
        return float(radiological > 0)
    # s = r + noise * z over z in [-10, 10] covers the likelihood's support; 0 is a node, so the
    # trapezoid rule splits exactly at the response threshold.
    s = radiological + imaging_noise * np.linspace(-10.0, 10.0, 4001)
    s = np.union1d(s, [0.0]) if s[0] < 0 < s[-1] else s
    d = s - pretreatment_logit
    z = (s - radiological) / imaging_noise
    log_w = -d - 2.0 * np.logaddexp(0.0, -d) - 0.5 * z**2  # log logistic pdf + log normal pdf
    w = np.exp(log_w - log_w.max())
    above = s >= 0
    return float(np.trapezoid(w[above], s[above]) / np.trapezoid(w, s))


# --- the patient model ------------------------------------------------------------------------


@dataclass
class Anatomy:
    """Everything about one patient that does not depend on the scanner."""

    contrast: str
    body_axes: np.ndarray  # semi-axes (x, y) of the elliptic body cylinder, mm
    organ_center: np.ndarray
    organ_axes: np.ndarray
    spine_center: np.ndarray  # (x, y)
    vessels: np.ndarray  # rows (x0, y0, amplitude_x, amplitude_y, period, phase, radius), mm
    tumor_center: np.ndarray
    tumor_axes_inv: np.ndarray  # 3x3: maps (x - c) to the unit ball
    tumor_radius: float  # mean radius, mm
    z_tumor: float
    z_peri: float
    response_degree: float  # 0 (progression-like) .. 1 (complete-response-like), seen on imaging
    shrinkage: float
    # The tumour has vanished at follow-up: its bed (the shrunk outline) holds scar-like tissue.
    complete: bool
    tissue_field: RandomField
    shape_field: RandomField
    texture_field: RandomField
    texture_field_followup: RandomField
    strand_field: RandomField

    def tumor_level(self, pts: np.ndarray, scale: float) -> np.ndarray:
        """Level set of the tumour shrunk by `scale` about its centre: inside where < 1."""
        local = self.tumor_center + (pts - self.tumor_center) / scale
        radial = np.linalg.norm((local - self.tumor_center) @ self.tumor_axes_inv.T, axis=1)
        # The boundary noise matters only near the tumour and its ring; skip the far field.
        near = radial < 1.0 + (RING_REACH_MM + 4.0) / (self.tumor_radius * 0.5)
        radial[near] += 0.12 * self.shape_field(local[near])
        return radial

    def evaluate(
        self, pts: np.ndarray, progress: float, contrast: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Intensity (tissue units, before the scanner) and tumour mask at anatomical points,
        `progress` of the way through treatment (0: baseline, 1: follow-up; a mid-treatment scan
        shows that share of the shrinkage and of the texture and ring change).

        `contrast` (a key of TISSUES; None: the reference's) only sets the tissue values: every
        contrast sees the same structures, so co-registered channels line up with the mask."""
        t = TISSUES[contrast or self.contrast]
        gain = t["texture_gain"]
        treated = progress > 0
        scale = _toward(self.shrinkage, progress)

        x, y = pts[:, 0], pts[:, 1]
        outer = (x / self.body_axes[0]) ** 2 + (y / self.body_axes[1]) ** 2
        inner = (x / (0.88 * self.body_axes[0])) ** 2 + (y / (0.88 * self.body_axes[1])) ** 2
        img = np.full(len(pts), t["air"])
        img[outer <= 1] = t["fat"]
        soft = inner <= 1
        img[soft] = t["soft"] + 14.0 * gain * self.tissue_field(pts[soft])
        # Meandering vessels along z: the landmarks a deformable registration locks onto.
        for x0, y0, ax, ay, period, phase, radius in self.vessels:
            angle = 2.0 * np.pi * pts[:, 2] / period + phase
            r = np.hypot(x - x0 - ax * np.sin(angle), y - y0 - ay * np.cos(angle))
            img[(r <= radius) & soft] = t["vessel"]
        organ = np.sum(((pts - self.organ_center) / self.organ_axes) ** 2, axis=1) <= 1
        img[organ & soft] += t["organ"] - t["soft"]
        spine_r = np.hypot(x - self.spine_center[0], y - self.spine_center[1])
        img[spine_r <= 6.0] = t["bone"]
        img[spine_r <= 4.0] = t["bone"] * 0.45  # cancellous core

        level = self.tumor_level(pts, scale)
        mask = level < 1.0
        if progress == 1 and self.complete:
            # Complete response: no tumour left; its bed looks like the surrounding soft tissue
            # (fibrosis), the peritumoral changes around the bed remain.
            bed = mask & soft
            img[bed] = t["soft"] + 14.0 * gain * self.tissue_field(pts[bed])
            mask = np.zeros_like(mask)
        # Peritumoral infiltration: decays with the distance to the surface, strand-like.
        dist = (level - 1.0) * self.tumor_radius * scale
        ring = (dist > 0) & (dist < RING_REACH_MM) & (outer <= 1)
        peri_amp = max(0.0, 22.0 * (1.0 + 0.8 * self.z_peri)) * t["unit_gain"]
        if treated:
            peri_amp *= _toward(1.1 - 0.7 * self.response_degree, progress)
        strands = 1.0 / (1.0 + np.exp(-3.0 * self.strand_field(pts[ring])))
        img[ring] += peri_amp * np.exp(-dist[ring] / 4.0) * (0.4 + strands)

        # Tumour texture: heterogeneity and grain follow z_tumor; a hypodense core when high.
        local = self.tumor_center + (pts[mask] - self.tumor_center) / scale
        amp = float(np.clip(18.0 * (1.0 + 0.5 * self.z_tumor), 5.0, 45.0)) * t["tumor_gain"]
        base = t["tumor"]
        tex = self.texture_field(local)
        if treated:
            tex = _toward(0.7, progress) * tex + 0.3 * progress * self.texture_field_followup(local)
            amp *= _toward(1.1 - t["texture_response"] * self.response_degree, progress)
            base -= 20.0 * self.response_degree * t["response_gain"] * progress
        radial = np.linalg.norm((local - self.tumor_center) @ self.tumor_axes_inv.T, axis=1)
        core = (
            np.clip(1.0 - radial / 0.5, 0.0, 1.0)
            * t["core"]
            * max(self.z_tumor, 0.0)
            * t["tumor_gain"]
        )
        img[mask] = base + amp * tex - core
        return img, mask


def _draw_vessels(rng: np.random.Generator, inner: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Eight vessels of 1.5-3 mm radius meandering along z inside the soft tissue."""
    n = 8
    angle = rng.uniform(0, 2 * np.pi, n)
    frac = np.sqrt(rng.uniform(0.05, 0.6, n))
    return np.column_stack(
        [
            frac * inner[0] * np.cos(angle),
            frac * inner[1] * np.sin(angle),
            rng.uniform(2.0, 8.0, n),
            rng.uniform(2.0, 8.0, n),
            rng.uniform(0.6, 1.5, n) * fov[2],
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(1.5, 3.0, n),
        ]
    )


def _toward(full: float, progress: float) -> float:
    """A factor `progress` of the way from 1 to `full` (exactly `full` at 1)."""
    return full if progress == 1 else 1.0 + progress * (full - 1.0)


def draw_patient(cfg: SynthConfig, rng: np.random.Generator) -> tuple[Anatomy, dict]:
    """Draw latents, clinical covariates, outcomes and anatomy, in a fixed order."""
    fov = cfg.fov_mm
    z_t, z_p = rng.standard_normal(2)
    age = int(np.clip(np.rint(rng.normal(63.0, 9.0)), 30, 90))
    sex = "F" if rng.random() < 0.45 else "M"
    stage_latent = 0.5 * z_t + 0.3 * z_p + rng.normal(0.0, 0.8)
    stage = 2 if stage_latent < -0.5 else (3 if stage_latent < 0.7 else 4)

    # Response: a latent depth s = eta + logistic noise (responder when s > 0, so P = sigmoid(eta)),
    # seen on the follow-up only through a noisy radiological response r = s + N(0, noise²) that
    # sets the shrinkage and the texture change. Pre- and post-treatment oracles: P(s > 0 | eta)
    # and P(s > 0 | eta, r). Each draw takes one uniform, so the later draws (survival, anatomy)
    # do not depend on these settings.
    eta = 0.3 - 1.6 * z_t - 1.0 * z_p
    p_response = sigmoid(eta)
    u = rng.random()
    responder = bool(u < p_response)
    depth = eta - _logit(u)
    radiological = depth + cfg.response_noise * NormalDist().inv_cdf(_open_unit(rng.random()))
    degree = sigmoid(cfg.response_slope * radiological)
    lo, hi = cfg.shrinkage
    shrinkage = float(hi - (hi - lo) * degree)

    # Cox-type (Weibull proportional hazards) survival, in months.
    risk = 0.8 * z_t + 0.6 * z_p + 0.35 * (stage - 3) + 0.02 * (age - 63)
    k = 1.3
    lam = math.log(2.0) / 30.0**k  # baseline median survival 30 months
    event_time = (-math.log(1.0 - rng.random()) / (lam * math.exp(risk))) ** (1.0 / k)
    censor_time = min(rng.uniform(24.0, 72.0), rng.exponential(120.0))
    time = max(round(min(event_time, censor_time), 2), 0.1)
    event = int(event_time <= censor_time)

    # Anatomy (baseline space, mm).
    body = np.array([0.42 * fov[0], 0.34 * fov[1]]) * rng.uniform(0.93, 1.05, 2)
    inner = 0.88 * body
    spine = np.array([0.0, 0.75 * body[1]])
    organ_c = np.array([-0.35 * body[0], -0.2 * body[1], 0.0]) * rng.uniform(0.8, 1.2, 3)
    organ_ax = np.array([0.35 * body[0], 0.35 * body[1], 0.6 * fov[2]]) * rng.uniform(0.85, 1.1, 3)
    r = float(rng.uniform(*cfg.tumor_radius_mm))
    radii = r * np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.65, 0.9)])
    orient = rotation_matrix(rng.uniform(-math.pi, math.pi, 3))
    axes_inv = np.diag(1.0 / radii) @ orient.T
    margin = r + 3.0
    cx_max = max(inner[0] - margin, 0.0)
    cy_lo, cy_hi = -(inner[1] - margin), min(0.0, spine[1] - 6.0 - margin)
    center = np.array(
        [
            rng.uniform(-cx_max, cx_max),
            rng.uniform(min(cy_lo, cy_hi), cy_hi),
            rng.uniform(-0.1, 0.1) * fov[2],
        ]
    )
    r_eq = float(np.prod(radii) ** (1 / 3))

    # Random fields: body-wide ones on a coarse grid with a margin for the misregistration,
    # tumour ones on a fine local grid.
    pad = cfg.translation_mm + cfg.deformation_mm + 0.1 * float(fov.max()) + RING_REACH_MM
    lo_b, hi_b = -fov / 2 - pad, fov / 2 + pad
    lo_t, hi_t = center - r - RING_REACH_MM - 4.0, center + r + RING_REACH_MM + 4.0
    grain = float(np.clip(1.5 * (1.0 + 0.35 * z_t), 0.7, 3.0))
    anatomy = Anatomy(
        contrast=cfg.contrast,
        body_axes=body,
        organ_center=organ_c,
        organ_axes=organ_ax,
        spine_center=spine,
        tumor_center=center,
        tumor_axes_inv=axes_inv,
        tumor_radius=r_eq,
        z_tumor=float(z_t),
        z_peri=float(z_p),
        response_degree=degree,
        shrinkage=shrinkage,
        complete=bool(degree >= cfg.complete_degree),
        tissue_field=RandomField.make(rng, lo_b, hi_b, 2.0, 4.0),
        shape_field=RandomField.make(rng, lo_t, hi_t, 1.0, 4.0),
        texture_field=RandomField.make(rng, lo_t, hi_t, 0.5, grain),
        texture_field_followup=RandomField.make(rng, lo_t, hi_t, 0.5, grain),
        strand_field=RandomField.make(rng, lo_t, hi_t, 0.5, 1.0),
        vessels=_draw_vessels(rng, inner, fov),
    )
    clinical = {
        "response": int(responder),
        "time": time,
        "event": event,
        "age": age,
        "sex": sex,
        "stage": stage,
    }
    latent = {
        "z_tumor": float(z_t),
        "z_peritumoral": float(z_p),
        "latent_risk": float(risk),
        "response_probability": float(p_response),
        "response_probability_followup": followup_response_probability(
            eta, radiological, cfg.response_noise
        ),
        "response_depth": float(depth),
        "radiological_response": float(radiological),
        "shrinkage": shrinkage,
        "complete_response": int(degree >= cfg.complete_degree),
        "event_time": float(event_time),
        "censor_time": float(censor_time),
    }
    return anatomy, {"clinical": clinical, "latent": latent}


@dataclass(frozen=True)
class Misregistration:
    """``G(x) = R (x + d(x) - c) + c + t``: baseline point -> follow-up point of the same tissue."""

    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    deformation: RandomField  # 3-component displacement field, mm
    center: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(np.deg2rad(self.rotation_deg))

    def forward(self, pts: np.ndarray) -> np.ndarray:
        moved = pts + self.deformation(pts)
        return (moved - self.center) @ self.rotation.T + self.center + self.translation_mm

    def inverse(self, pts: np.ndarray, tol_mm: float = 1e-5) -> np.ndarray:
        """Follow-up points -> baseline points.

        Fixed-point iteration ``x <- z - d(x)``: a contraction because the deformation's gradient
        is well below 1 (peak a few mm over a correlation length of ~18 mm).
        """
        z = (pts - self.center - self.translation_mm) @ self.rotation + self.center
        x = z - self.deformation(z)
        for _ in range(50):
            nxt = z - self.deformation(x)
            step = float(np.max(np.abs(nxt - x))) if len(x) else 0.0
            x = nxt
            if step < tol_mm:
                break
        return x

    def to_sitk(self) -> sitk.Transform:
        """The same map as an ITK transform (for resampling the follow-up into baseline space)."""
        return true_transform_from_parts(
            self.deformation_image(), self.rotation, self.translation_mm, self.center
        )

    def deformation_image(self) -> sitk.Image:
        values = np.moveaxis(self.deformation.values, 0, -1)  # [x, y, z, 3]
        image = sitk.GetImageFromArray(np.transpose(values, (2, 1, 0, 3)), isVector=True)
        image.SetSpacing((self.deformation.spacing,) * 3)
        image.SetOrigin(tuple(float(o) for o in self.deformation.origin))
        return image


def draw_misregistration(cfg: SynthConfig, rng: np.random.Generator) -> Misregistration:
    fov = cfg.fov_mm
    pad = cfg.translation_mm + cfg.deformation_mm + 0.1 * float(fov.max()) + 10.0
    lo, hi = -fov / 2 - pad, fov / 2 + pad
    deform = RandomField.make(rng, lo, hi, DEFORMATION_GRID_MM, 18.0, components=3)
    peak = float(np.max(np.linalg.norm(deform.values, axis=0)))
    amplitude = cfg.deformation_mm * float(rng.uniform(0.6, 1.0))
    # float32 so that the field used to generate the images is exactly the one written to truth/.
    values = (deform.values * (amplitude / peak if peak > 0 else 0.0)).astype(np.float32)
    scaled = RandomField(values.astype(np.float64), deform.origin, DEFORMATION_GRID_MM)
    return Misregistration(
        rotation_deg=rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3),
        translation_mm=rng.uniform(-cfg.translation_mm, cfg.translation_mm, 3),
        deformation=scaled,
        center=np.zeros(3),
    )
