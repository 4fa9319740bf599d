"""The synthetic multi-centre longitudinal cohort, with ground truth for every stage.

Each patient has a latent biology: ``z_tumor`` drives the tumour's texture (heterogeneity and
grain), ``z_peritumoral`` the infiltration of the tissue around it. Treatment response and
survival are drawn from these latents and from clinical covariates, so an imaging model can in
principle reach the oracle (the true latents) but never beat it.

Geometry: the anatomy lives in the baseline scanner's physical space (mm, LPS, field of view
centred on the origin). The follow-up scan sees the same anatomy through a known
misregistration ``G(x) = A(x + d(x))`` — a smooth deformation ``d`` followed by a rigid motion
``A`` — where ``G`` maps a baseline point to the follow-up point that shows the same tissue. ``G``
is exactly the transform a registration of the follow-up (moving) to the baseline (fixed) must
find; it is written as a displacement field on the baseline grid (``x -> x + D(x)``).

Scanner effects per centre: intensity scale and offset, Gaussian noise, a reconstruction blur,
and a voxel spacing of its own (the physical field of view is the same for all centres).

Example:
    >>> from deltarad.synth import SynthConfig
    >>> cfg = SynthConfig.from_config({"patients_per_center": 1, "centers": [{"name": "A"}]})
    >>> [p.patient_id for p in cfg.patients()]
    ['A-001']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from deltarad import io

TIMEPOINTS = ("baseline", "followup")
RING_REACH_MM = 10.0  # how far the peritumoral effect reaches beyond the tumour surface
DEFORMATION_GRID_MM = 6.0  # control grid of the smooth deformation (linearly interpolated)

# Column order of the generated sheets (records round-trip through JSON with sorted keys).
SAMPLE_COLUMNS = ["patient_id", "center", "timepoint", "days", "modality", "image", "mask"]
CLINICAL_COLUMNS = ["patient_id", "response", "time", "event", "age", "sex", "stage"]
LATENT_COLUMNS = [
    "patient_id",
    "center",
    "z_tumor",
    "z_peritumoral",
    "latent_risk",
    "response_probability",
    "shrinkage",
    "event_time",
    "censor_time",
    "tumor_volume_baseline_mm3",
    "tumor_volume_followup_mm3",
]

# Tissue intensities per contrast, before scanner effects.
TISSUES = {
    "CT": {
        "air": -1000.0,
        "fat": -100.0,
        "soft": 40.0,
        "organ": 60.0,
        "bone": 600.0,
        "tumor": 75.0,
        "texture_gain": 1.0,
        "unit_gain": 1.0,
    },
    "MR": {
        "air": 0.0,
        "fat": 700.0,
        "soft": 300.0,
        "organ": 250.0,
        "bone": 80.0,
        "tumor": 460.0,
        "texture_gain": 3.0,
        "unit_gain": 3.0,
    },
}


@dataclass(frozen=True)
class CenterSpec:
    """One centre's scanner: intensity = scale * image + offset + noise, after a blur."""

    name: str
    scale: float = 1.0
    offset: float = 0.0
    noise: float = 10.0
    blur_mm: float = 0.8
    spacing: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Patient:
    patient_id: str
    center: CenterSpec
    center_index: int
    patient_index: int


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic cohort (the ``synthetic:`` block of the config)."""

    seed: int = 20261125
    contrast: str = "CT"
    patients_per_center: int = 15
    shape: tuple[int, int, int] = (64, 64, 48)
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    followup_days: tuple[int, int] = (60, 120)
    rotation_deg: float = 5.0
    translation_mm: float = 6.0
    deformation_mm: float = 3.0
    tumor_radius_mm: tuple[float, float] = (9.0, 14.0)
    shrink_responder: tuple[float, float] = (0.45, 0.75)
    shrink_non_responder: tuple[float, float] = (0.85, 1.05)
    centers: tuple[CenterSpec, ...] = field(default_factory=lambda: (CenterSpec("C1"),))

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> SynthConfig:
        """Build from the config's ``synthetic`` block; missing keys take the defaults."""
        mis = block.get("misregistration", {})
        shrink = block.get("shrinkage", {})
        default = cls()
        centers = tuple(
            CenterSpec(
                name=str(c["name"]),
                scale=float(c.get("scale", 1.0)),
                offset=float(c.get("offset", 0.0)),
                noise=float(c.get("noise", 10.0)),
                blur_mm=float(c.get("blur_mm", 0.8)),
                spacing=tuple(float(s) for s in c["spacing"]) if c.get("spacing") else None,
            )
            for c in block.get("centers", [{"name": "C1"}])
        )
        return cls(
            seed=int(block.get("seed", default.seed)),
            contrast=str(block.get("contrast", default.contrast)),
            patients_per_center=int(block.get("patients_per_center", default.patients_per_center)),
            shape=tuple(int(s) for s in block.get("shape", default.shape)),
            spacing=tuple(float(s) for s in block.get("spacing", default.spacing)),
            followup_days=tuple(int(d) for d in block.get("followup_days", default.followup_days)),
            rotation_deg=float(mis.get("rotation_deg", default.rotation_deg)),
            translation_mm=float(mis.get("translation_mm", default.translation_mm)),
            deformation_mm=float(mis.get("deformation_mm", default.deformation_mm)),
            tumor_radius_mm=tuple(
                float(r) for r in block.get("tumor_radius_mm", default.tumor_radius_mm)
            ),
            shrink_responder=tuple(
                float(s) for s in shrink.get("responder", default.shrink_responder)
            ),
            shrink_non_responder=tuple(
                float(s) for s in shrink.get("non_responder", default.shrink_non_responder)
            ),
            centers=centers,
        )

    @property
    def fov_mm(self) -> np.ndarray:
        return np.asarray(self.shape, float) * np.asarray(self.spacing, float)

    def patients(self) -> list[Patient]:
        """Patient IDs are ``{centre}-{NNN}``: known from the config alone, before generation."""
        return [
            Patient(f"{c.name}-{i + 1:03d}", c, ci, i)
            for ci, c in enumerate(self.centers)
            for i in range(self.patients_per_center)
        ]

    def grid(self, center: CenterSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shape, spacing, origin) in x, y, z of a centre's scans; same field of view for all."""
        spacing = np.asarray(center.spacing or self.spacing, float)
        shape = np.maximum(np.rint(self.fov_mm / spacing).astype(int), 4)
        origin = -(shape - 1) * spacing / 2.0
        return shape, spacing, origin


# --- file layout of a generated cohort (relative to its root) -------------------------------


def image_relpath(patient_id: str, timepoint: str) -> str:
    return f"images/{patient_id}/{timepoint}.nii.gz"


def mask_relpath(patient_id: str, timepoint: str) -> str:
    return f"masks/{patient_id}/{timepoint}.nii.gz"


def transform_relpath(patient_id: str) -> tuple[str, str]:
    """(parameters JSON, deformation field) of the true follow-up -> baseline transform."""
    return (
        f"truth/transforms/{patient_id}/followup.json",
        f"truth/transforms/{patient_id}/followup_deformation.nii.gz",
    )


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


def load_true_transform(root: str | Path, patient_id: str) -> sitk.Transform:
    """The true transform resampling a patient's follow-up into its baseline space."""
    import json

    params_path, field_path = (Path(root) / p for p in transform_relpath(patient_id))
    params = json.loads(params_path.read_text())
    return true_transform_from_parts(
        io.read_image(field_path),
        np.asarray(params["matrix"]),
        np.asarray(params["translation_mm"]),
        np.asarray(params["center_mm"]),
    )


def patient_outputs(patient_id: str) -> list[str]:
    """Every file :func:`simulate_patient` writes, relative to the cohort root."""
    files = []
    for tp in TIMEPOINTS:
        files += [image_relpath(patient_id, tp), mask_relpath(patient_id, tp)]
        files.append(f"truth/masks/{patient_id}/{tp}.nii.gz")
    files += [
        f"truth/masks/{patient_id}/followup_in_baseline.nii.gz",
        *transform_relpath(patient_id),
        f"truth/patients/{patient_id}.json",
    ]
    return files


# --- random fields ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
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
    ) -> _Field:
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


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- the patient model ------------------------------------------------------------------------


@dataclass
class _Anatomy:
    """Everything about one patient that does not depend on the scanner."""

    contrast: str
    body_axes: np.ndarray  # semi-axes (x, y) of the elliptic body cylinder, mm
    organ_center: np.ndarray
    organ_axes: np.ndarray
    spine_center: np.ndarray  # (x, y)
    tumor_center: np.ndarray
    tumor_axes_inv: np.ndarray  # 3x3: maps (x - c) to the unit ball
    tumor_radius: float  # mean radius, mm
    z_tumor: float
    z_peri: float
    responder: bool
    shrinkage: float
    tissue_field: _Field
    shape_field: _Field
    texture_field: _Field
    texture_field_followup: _Field
    strand_field: _Field

    def tumor_level(self, pts: np.ndarray, scale: float) -> np.ndarray:
        """Level set of the tumour shrunk by `scale` about its centre: inside where < 1."""
        local = self.tumor_center + (pts - self.tumor_center) / scale
        radial = np.linalg.norm((local - self.tumor_center) @ self.tumor_axes_inv.T, axis=1)
        # The boundary noise matters only near the tumour and its ring; skip the far field.
        near = radial < 1.0 + (RING_REACH_MM + 4.0) / (self.tumor_radius * 0.5)
        radial[near] += 0.12 * self.shape_field(local[near])
        return radial

    def evaluate(self, pts: np.ndarray, timepoint: str) -> tuple[np.ndarray, np.ndarray]:
        """Intensity (tissue units, before the scanner) and tumour mask at anatomical points."""
        t = TISSUES[self.contrast]
        gain = t["texture_gain"]
        followup = timepoint == "followup"
        scale = self.shrinkage if followup else 1.0

        x, y = pts[:, 0], pts[:, 1]
        outer = (x / self.body_axes[0]) ** 2 + (y / self.body_axes[1]) ** 2
        inner = (x / (0.88 * self.body_axes[0])) ** 2 + (y / (0.88 * self.body_axes[1])) ** 2
        img = np.full(len(pts), t["air"])
        img[outer <= 1] = t["fat"]
        soft = inner <= 1
        img[soft] = t["soft"] + 8.0 * gain * self.tissue_field(pts[soft])
        organ = np.sum(((pts - self.organ_center) / self.organ_axes) ** 2, axis=1) <= 1
        img[organ & soft] += t["organ"] - t["soft"]
        spine_r = np.hypot(x - self.spine_center[0], y - self.spine_center[1])
        img[spine_r <= 6.0] = t["bone"]
        img[spine_r <= 4.0] = t["bone"] * 0.45  # cancellous core

        level = self.tumor_level(pts, scale)
        mask = level < 1.0
        # Peritumoral infiltration: decays with the distance to the surface, strand-like.
        dist = (level - 1.0) * self.tumor_radius * scale
        ring = (dist > 0) & (dist < RING_REACH_MM) & (outer <= 1)
        peri_amp = max(0.0, 22.0 * (1.0 + 0.8 * self.z_peri)) * t["unit_gain"]
        if followup:
            peri_amp *= 0.4 if self.responder else 1.1
        strands = 1.0 / (1.0 + np.exp(-3.0 * self.strand_field(pts[ring])))
        img[ring] += peri_amp * np.exp(-dist[ring] / 4.0) * (0.4 + strands)

        # Tumour texture: heterogeneity and grain follow z_tumor; a hypodense core when high.
        local = self.tumor_center + (pts[mask] - self.tumor_center) / scale
        amp = float(np.clip(18.0 * (1.0 + 0.5 * self.z_tumor), 5.0, 45.0)) * gain
        base = t["tumor"]
        tex = self.texture_field(local)
        if followup:
            tex = 0.7 * tex + 0.3 * self.texture_field_followup(local)
            if self.responder:
                amp *= 0.6
                base -= 20.0 * t["unit_gain"]
            else:
                amp *= 1.1
        radial = np.linalg.norm((local - self.tumor_center) @ self.tumor_axes_inv.T, axis=1)
        core = np.clip(1.0 - radial / 0.5, 0.0, 1.0) * 30.0 * max(self.z_tumor, 0.0) * gain
        img[mask] = base + amp * tex - core
        return img, mask


def _draw_patient(cfg: SynthConfig, rng: np.random.Generator) -> tuple[_Anatomy, dict]:
    """Draw latents, clinical covariates, outcomes and anatomy, in a fixed order."""
    fov = cfg.fov_mm
    z_t, z_p = rng.standard_normal(2)
    age = int(np.clip(np.rint(rng.normal(63.0, 9.0)), 30, 90))
    sex = "F" if rng.random() < 0.45 else "M"
    stage_latent = 0.5 * z_t + 0.3 * z_p + rng.normal(0.0, 0.8)
    stage = 2 if stage_latent < -0.5 else (3 if stage_latent < 0.7 else 4)

    p_response = _sigmoid(0.3 - 1.6 * z_t - 1.0 * z_p)
    responder = bool(rng.random() < p_response)
    lo, hi = cfg.shrink_responder if responder else cfg.shrink_non_responder
    shrinkage = float(rng.uniform(lo, hi))

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
    orient = _rotation(rng.uniform(-math.pi, math.pi, 3))
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
    anatomy = _Anatomy(
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
        responder=responder,
        shrinkage=shrinkage,
        tissue_field=_Field.make(rng, lo_b, hi_b, 2.0, 6.0),
        shape_field=_Field.make(rng, lo_t, hi_t, 1.0, 4.0),
        texture_field=_Field.make(rng, lo_t, hi_t, 0.5, grain),
        texture_field_followup=_Field.make(rng, lo_t, hi_t, 0.5, grain),
        strand_field=_Field.make(rng, lo_t, hi_t, 0.5, 1.0),
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
        "shrinkage": shrinkage,
        "event_time": float(event_time),
        "censor_time": float(censor_time),
    }
    return anatomy, {"clinical": clinical, "latent": latent}


@dataclass(frozen=True)
class Misregistration:
    """``G(x) = R (x + d(x) - c) + c + t``: baseline point -> follow-up point of the same tissue."""

    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    deformation: _Field  # 3-component displacement field, mm
    center: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        return _rotation(np.deg2rad(self.rotation_deg))

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


def _draw_misregistration(cfg: SynthConfig, rng: np.random.Generator) -> Misregistration:
    fov = cfg.fov_mm
    pad = cfg.translation_mm + cfg.deformation_mm + 0.1 * float(fov.max()) + 10.0
    lo, hi = -fov / 2 - pad, fov / 2 + pad
    deform = _Field.make(rng, lo, hi, DEFORMATION_GRID_MM, 18.0, components=3)
    peak = float(np.max(np.linalg.norm(deform.values, axis=0)))
    amplitude = cfg.deformation_mm * float(rng.uniform(0.6, 1.0))
    # float32 so that the field used to generate the images is exactly the one written to truth/.
    values = (deform.values * (amplitude / peak if peak > 0 else 0.0)).astype(np.float32)
    scaled = _Field(values.astype(np.float64), deform.origin, DEFORMATION_GRID_MM)
    return Misregistration(
        rotation_deg=rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3),
        translation_mm=rng.uniform(-cfg.translation_mm, cfg.translation_mm, 3),
        deformation=scaled,
        center=np.zeros(3),
    )


def _grid_points(shape: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Physical points of every voxel, in numpy (z, y, x) order of the flattened array."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape[::-1]), indexing="ij")
    return np.stack(
        [
            origin[0] + xx.ravel() * spacing[0],
            origin[1] + yy.ravel() * spacing[1],
            origin[2] + zz.ravel() * spacing[2],
        ],
        axis=1,
    )


def _to_image(
    values: np.ndarray, shape: np.ndarray, spacing: np.ndarray, origin: np.ndarray
) -> sitk.Image:
    image = sitk.GetImageFromArray(values.reshape(tuple(shape[::-1])))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def _scanner(
    cfg: SynthConfig,
    center: CenterSpec,
    img: np.ndarray,
    shape: np.ndarray,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply a centre's blur, intensity transfer, bias field (MR) and noise."""
    vol = img.reshape(tuple(shape[::-1]))
    if center.blur_mm > 0:
        vol = ndimage.gaussian_filter(vol, center.blur_mm / spacing[::-1], mode="nearest")
    vol = center.scale * vol + center.offset
    if cfg.contrast == "MR":
        # Smooth multiplicative bias field along a random direction (coil sensitivity).
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[::-1]), indexing="ij")
        ramp = sum(d * g for d, g in zip(direction[::-1], grids, strict=True))
        vol = vol * (1.0 + 0.15 * ramp)
    vol = vol + rng.normal(0.0, center.noise, vol.shape)
    if cfg.contrast == "CT":
        return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    return np.maximum(vol, 0.0).astype(np.float32)


def simulate_patient(cfg: SynthConfig, patient: Patient, root: str | Path) -> dict[str, Any]:
    """Generate one patient's scans, masks and truth under `root`; return its sheet rows.

    The patient's random stream depends only on (seed, centre index, patient index), so patients
    can be generated in parallel and adding patients does not change existing ones.
    """
    root = Path(root)
    pid = patient.patient_id
    seq = np.random.SeedSequence([cfg.seed, patient.center_index, patient.patient_index])
    rng_anatomy, rng_motion, rng_days, rng_noise_b, rng_noise_f = (
        np.random.default_rng(s) for s in seq.spawn(5)
    )
    anatomy, record = _draw_patient(cfg, rng_anatomy)
    motion = _draw_misregistration(cfg, rng_motion)
    days = int(rng_days.integers(cfg.followup_days[0], cfg.followup_days[1] + 1))

    shape, spacing, origin = cfg.grid(patient.center)
    pts = _grid_points(shape, spacing, origin)
    volumes = {}
    for tp, rng_noise in (("baseline", rng_noise_b), ("followup", rng_noise_f)):
        anat_pts = pts if tp == "baseline" else motion.inverse(pts)
        img, mask = anatomy.evaluate(anat_pts, tp)
        if not mask.any():
            raise RuntimeError(f"{pid} {tp}: synthetic tumour is empty; raise tumor_radius_mm")
        image = _to_image(
            _scanner(cfg, patient.center, img, shape, spacing, rng_noise), shape, spacing, origin
        )
        mask_img = _to_image(mask.astype(np.uint8), shape, spacing, origin)
        io.write_image(image, root / image_relpath(pid, tp))
        io.write_image(mask_img, root / mask_relpath(pid, tp))
        io.write_image(mask_img, root / f"truth/masks/{pid}/{tp}.nii.gz")
        volumes[tp] = float(mask.sum() * np.prod(spacing))

    # Truth in baseline space: the follow-up tumour, and G as a displacement field.
    _, mask_fb = anatomy.evaluate(pts, "followup")
    io.write_image(
        _to_image(mask_fb.astype(np.uint8), shape, spacing, origin),
        root / f"truth/masks/{pid}/followup_in_baseline.nii.gz",
    )
    io.write_image(motion.deformation_image(), root / transform_relpath(pid)[1])
    io.write_json(
        {
            "maps": "baseline physical point x -> follow-up physical point (LPS, mm)",
            "model": "G(x) = M (x + d(x) - c) + c + t; d: linear interpolation of the field",
            "matrix": [round(float(v), 12) for v in motion.rotation.ravel()],
            "rotation_deg_xyz": [round(float(a), 9) for a in motion.rotation_deg],
            "translation_mm": [round(float(t), 9) for t in motion.translation_mm],
            "center_mm": [float(c) for c in motion.center],
            "deformation_peak_mm": round(
                float(np.max(np.linalg.norm(motion.deformation.values, axis=0))), 6
            ),
            "deformation_field": Path(transform_relpath(pid)[1]).name,
        },
        root / transform_relpath(pid)[0],
    )

    modality = cfg.contrast
    samples = [
        {
            "patient_id": pid,
            "center": patient.center.name,
            "timepoint": tp,
            "days": 0 if tp == "baseline" else days,
            "modality": modality,
            "image": image_relpath(pid, tp),
            "mask": mask_relpath(pid, tp),
        }
        for tp in TIMEPOINTS
    ]
    clinical = {"patient_id": pid, **record["clinical"]}
    latent = {
        "patient_id": pid,
        "center": patient.center.name,
        **record["latent"],
        "tumor_volume_baseline_mm3": round(volumes["baseline"], 3),
        "tumor_volume_followup_mm3": round(volumes["followup"], 3),
    }
    result = {"samples": samples, "clinical": clinical, "latent": latent}
    io.write_json(result, root / f"truth/patients/{pid}.json")
    return result


def write_sheets(records: list[dict[str, Any]], root: str | Path) -> None:
    """Write samples.tsv, clinical.tsv and truth/latent.tsv from per-patient records."""
    root = Path(root)
    records = sorted(records, key=lambda r: r["clinical"]["patient_id"])
    samples = pd.DataFrame([s for r in records for s in r["samples"]], columns=SAMPLE_COLUMNS)
    io.write_table(samples, root / "samples.tsv")
    clinical = pd.DataFrame([r["clinical"] for r in records], columns=CLINICAL_COLUMNS)
    io.write_table(clinical, root / "clinical.tsv")
    latent = pd.DataFrame([r["latent"] for r in records], columns=LATENT_COLUMNS)
    io.write_table(latent.round(6), root / "truth/latent.tsv")


def merge_patient_records(paths: list[str | Path], root: str | Path) -> None:
    """Gather per-patient truth JSONs (written by :func:`simulate_patient`) into the sheets."""
    import json

    write_sheets([json.loads(Path(p).read_text()) for p in paths], root)


def simulate_cohort(cfg: SynthConfig, root: str | Path) -> pd.DataFrame:
    """Generate the whole cohort under `root` (serially) and return the sample sheet."""
    records = [simulate_patient(cfg, p, root) for p in cfg.patients()]
    write_sheets(records, root)
    return pd.DataFrame([s for r in records for s in r["samples"]])
