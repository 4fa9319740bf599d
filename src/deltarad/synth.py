"""The synthetic multi-centre longitudinal cohort, with ground truth for every stage.

Each patient has a latent biology: ``z_tumor`` drives the tumour's texture (heterogeneity and
grain), ``z_peritumoral`` the infiltration of the tissue around it. Treatment response and
survival are drawn from these latents and from clinical covariates, so an imaging model can in
principle reach the oracle (the true latents) but never beat it. The follow-up shows the
response only through a noisy radiological response (shrinkage and texture change), so
post-treatment imaging predicts response better than the pre-treatment oracle but no better
than the post-treatment one (``response_probability_followup`` in ``truth/latent.tsv``).

Geometry: the anatomy lives in the baseline scanner's physical space (mm, LPS, field of view
centred on the origin). The follow-up scan sees the same anatomy through a known
misregistration ``G(x) = A(x + d(x))`` — a smooth deformation ``d`` followed by a rigid motion
``A`` — where ``G`` maps a baseline point to the follow-up point that shows the same tissue. ``G``
is exactly the transform a registration of the follow-up (moving) to the baseline (fixed) must
find; ``truth/transforms/`` holds ``A`` (JSON) and ``d`` (a displacement field on a 6 mm control
grid), and :func:`load_true_transform` composes them into an ITK transform.
The generative model itself is in :mod:`deltarad.phantom`.

Scanner effects per centre: intensity scale and offset, Gaussian noise, a reconstruction blur,
and a voxel spacing of its own (the physical field of view is the same for all centres).

Extra channels (``extra_channels``: a hybrid PET/CT, an ADC map beside a T2 MR) image each
timepoint on the reference scan's grid, through the same motion and anatomy, with their own
tissue contrast (:data:`deltarad.phantom.TISSUES`), their own noise and the centre's scanner
effects converted to their units.

Example:
    >>> from deltarad.synth import SynthConfig
    >>> cfg = SynthConfig.from_config({"patients_per_center": 1, "centers": [{"name": "A"}]})
    >>> [p.patient_id for p in cfg.patients()]
    ['A-001']
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS
from deltarad.layout import (
    BASELINE,
    FOLLOWUP,
    MID,
    SYNTHETIC_MODALITY,
    SYNTHETIC_TIMEPOINTS,
    image_relpath,
    mask_relpath,
    synthetic_channels,
    synthetic_patient_id,
    synthetic_patient_outputs,
    synthetic_timepoints,
    transform_relpath,
)
from deltarad.phantom import (
    TISSUES,
    draw_misregistration,
    draw_patient,
    true_transform_from_parts,
)

TIMEPOINTS = SYNTHETIC_TIMEPOINTS
# How far treatment has acted at each timepoint (0: none, 1: the follow-up's full response); the
# mid-treatment scan shows half the shrinkage and texture change.
PROGRESS = {BASELINE: 0.0, MID: 0.5, FOLLOWUP: 1.0}
# The patient's first random streams (anatomy, motion, days, noise; the mid-treatment scan's
# motion, days and noise); each extra channel then has one noise stream per timepoint slot.
PATIENT_STREAMS = 8
CHANNEL_STREAM_SLOTS = {BASELINE: 0, FOLLOWUP: 1, MID: 2}
# PET's coarse resolution, added (in quadrature) to the centre's blur of a PET channel.
PET_FWHM_MM = 4.0
# Contrasts whose scanner adds a smooth multiplicative bias field (coil sensitivity).
BIAS_FIELD_CONTRASTS = {"MR", "ADC"}
# Every file simulate_patient writes (the workflow declares them without importing this module).
patient_outputs = synthetic_patient_outputs
# Column order of the generated sheets (records round-trip through JSON with sorted keys).
CLINICAL_COLUMNS = ["patient_id", "response", "time", "event", "age", "sex", "stage"]
LATENT_COLUMNS = [
    "patient_id",
    "center",
    "z_tumor",
    "z_peritumoral",
    "latent_risk",
    "response_probability",
    "response_probability_followup",
    "response_depth",
    "radiological_response",
    "shrinkage",
    "complete_response",
    "event_time",
    "censor_time",
    "tumor_volume_baseline_mm3",
    "tumor_volume_followup_mm3",
]


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
    mid_treatment_days: tuple[int, int] | None = None
    rotation_deg: float = 5.0
    translation_mm: float = 6.0
    deformation_mm: float = 3.0
    tumor_radius_mm: tuple[float, float] = (9.0, 14.0)
    response_noise: float = 1.5
    shrinkage: tuple[float, float] = (0.45, 1.05)
    response_slope: float = 0.6
    complete_degree: float = 1.0
    unlabelled_followups: float = 0.0
    centers: tuple[CenterSpec, ...] = field(default_factory=lambda: (CenterSpec("C1"),))
    # (name, contrast) of each further channel of every timepoint, co-registered with the
    # reference channel (named after `contrast`).
    extra_channels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> SynthConfig:
        """Build from the config's ``synthetic`` block; missing keys take the defaults."""
        channels = synthetic_channels(block)
        names = [name for name, _ in channels]
        if len(set(names)) < len(names):
            raise ValueError(f"synthetic channel names must differ (reference first): {names}")
        unknown = sorted({contrast for _, contrast in channels} - set(TISSUES))
        if unknown:
            raise ValueError(f"synthetic contrast(s) {unknown} not among {sorted(TISSUES)}")
        mis = block.get("misregistration", {})
        response = block.get("response", {})
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
            mid_treatment_days=tuple(int(d) for d in block["mid_treatment_days"])
            if block.get("mid_treatment_days")
            else None,
            rotation_deg=float(mis.get("rotation_deg", default.rotation_deg)),
            translation_mm=float(mis.get("translation_mm", default.translation_mm)),
            deformation_mm=float(mis.get("deformation_mm", default.deformation_mm)),
            tumor_radius_mm=tuple(
                float(r) for r in block.get("tumor_radius_mm", default.tumor_radius_mm)
            ),
            response_noise=float(response.get("imaging_noise", default.response_noise)),
            shrinkage=tuple(float(s) for s in response.get("shrinkage", default.shrinkage)),
            response_slope=float(response.get("slope", default.response_slope)),
            complete_degree=float(response.get("complete_degree", default.complete_degree)),
            unlabelled_followups=float(
                block.get("unlabelled_followups", default.unlabelled_followups)
            ),
            centers=centers,
            extra_channels=tuple(channels[1:]),
        )

    @property
    def fov_mm(self) -> np.ndarray:
        return np.asarray(self.shape, float) * np.asarray(self.spacing, float)

    def patients(self) -> list[Patient]:
        """Patient IDs are ``{centre}-{NNN}``: known from the config alone, before generation."""
        return [
            Patient(synthetic_patient_id(c.name, i), c, ci, i)
            for ci, c in enumerate(self.centers)
            for i in range(self.patients_per_center)
        ]

    def is_unlabelled(self, patient_id: str) -> bool:
        """Whether a patient's follow-up mask is left out of samples.tsv: with probability
        `unlabelled_followups`, decided by a hash of seed and ID (independent of cohort size)."""
        return _unit_hash(self.seed, patient_id) < self.unlabelled_followups

    def unlabelled_patients(self) -> set[str]:
        """Patients whose follow-up mask is left out of samples.tsv: each patient independently
        with probability `unlabelled_followups`, decided by a hash of seed and ID, so a patient's
        files do not depend on the size of the cohort."""
        return {p.patient_id for p in self.patients() if self.is_unlabelled(p.patient_id)}

    def grid(self, center: CenterSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shape, spacing, origin) in x, y, z of a centre's scans; same field of view for all."""
        spacing = np.asarray(center.spacing or self.spacing, float)
        shape = np.maximum(np.rint(self.fov_mm / spacing).astype(int), 4)
        origin = -(shape - 1) * spacing / 2.0
        return shape, spacing, origin


def _unit_hash(seed: int, patient_id: str) -> float:
    """A number in [0, 1) fixed by seed and patient ID (an independent draw per patient)."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- the true transform (file layout of a generated cohort: deltarad.layout) ---------------


def load_true_transform(
    root: str | Path, patient_id: str, timepoint: str = FOLLOWUP
) -> sitk.Transform:
    """The true transform resampling a patient's later scan into its baseline space."""
    params_path, field_path = (Path(root) / p for p in transform_relpath(patient_id, timepoint))
    params = json.loads(params_path.read_text())
    return true_transform_from_parts(
        io.read_image(field_path),
        np.asarray(params["matrix"]),
        np.asarray(params["translation_mm"]),
        np.asarray(params["center_mm"]),
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
    center: CenterSpec,
    contrast: str,
    reference: str,
    img: np.ndarray,
    shape: np.ndarray,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply a centre's blur, intensity transfer, bias field (MR-like) and noise to a channel of
    `contrast`. The centre's offset and noise are in the `reference` contrast's units: another
    contrast gets them times the ratio of the two contrasts' units (TISSUES' ``unit_gain``); PET
    adds its own coarse resolution to the blur."""
    vol = img.reshape(tuple(shape[::-1]))
    blur = center.blur_mm
    if contrast == "PET":
        blur = float(np.hypot(blur, PET_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))))
    if blur > 0:
        vol = ndimage.gaussian_filter(vol, blur / spacing[::-1], mode="nearest")
    units = TISSUES[contrast]["unit_gain"] / TISSUES[reference]["unit_gain"]
    vol = center.scale * vol + center.offset * units
    if contrast in BIAS_FIELD_CONTRASTS:
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[::-1]), indexing="ij")
        ramp = sum(d * g for d, g in zip(direction[::-1], grids, strict=True))
        vol = vol * (1.0 + 0.15 * ramp)
    vol = vol + rng.normal(0.0, center.noise * units, vol.shape)
    if contrast == "CT":
        return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    return np.maximum(vol, 0.0).astype(np.float32)


def _write_truth_in_baseline(
    root: Path, pid: str, tp: str, anatomy: Any, motion: Any, grid: tuple[np.ndarray, ...]
) -> None:
    """A later scan's truth in baseline space: its tumour on the baseline grid, and its
    misregistration G as parameters (JSON) and a displacement field."""
    shape, spacing, origin = grid
    _, mask_in_baseline = anatomy.evaluate(_grid_points(shape, spacing, origin), PROGRESS[tp])
    io.write_image(
        _to_image(mask_in_baseline.astype(np.uint8), shape, spacing, origin),
        root / f"truth/masks/{pid}/{tp}_in_baseline.nii.gz",
    )
    params_rel, field_rel = transform_relpath(pid, tp)
    io.write_image(motion.deformation_image(), root / field_rel)
    io.write_json(
        {
            "maps": "baseline physical point x -> later-scan physical point (LPS, mm)",
            "model": "G(x) = M (x + d(x) - c) + c + t; d: linear interpolation of the field",
            "matrix": [round(float(v), 12) for v in motion.rotation.ravel()],
            "rotation_deg_xyz": [round(float(a), 9) for a in motion.rotation_deg],
            "translation_mm": [round(float(t), 9) for t in motion.translation_mm],
            "center_mm": [float(c) for c in motion.center],
            "deformation_peak_mm": round(
                float(np.max(np.linalg.norm(motion.deformation.values, axis=0))), 6
            ),
            "deformation_field": Path(field_rel).name,
        },
        root / params_rel,
    )


def simulate_patient(cfg: SynthConfig, patient: Patient, root: str | Path) -> dict[str, Any]:
    """Generate one patient's scans, masks and truth under `root`; return its sheet rows.

    A patient of :meth:`SynthConfig.unlabelled_patients` has no follow-up mask in its sheet row
    (as if never drawn; the file under masks/ and truth/ is still written). A complete
    responder's follow-up mask is empty. Each extra channel adds an image (and a sheet row, without
    a mask) per timepoint.

    The patient's random stream depends only on (seed, centre index, patient index), so patients
    can be generated in parallel and adding patients does not change existing ones.
    """
    root = Path(root)
    pid = patient.patient_id
    seq = np.random.SeedSequence([cfg.seed, patient.center_index, patient.patient_index])
    # Streams 5-7 (mid-treatment scan) and the extra channels' were added later: spawning more
    # children leaves the first ones, and so every earlier file, unchanged.
    slots = len(CHANNEL_STREAM_SLOTS)
    n_streams = PATIENT_STREAMS + slots * len(cfg.extra_channels)
    rngs = [np.random.default_rng(s) for s in seq.spawn(n_streams)]
    rng_anatomy, rng_motion, rng_days, rng_noise_b, rng_noise_f = rngs[:5]
    anatomy, record = draw_patient(cfg, rng_anatomy)
    motions = {FOLLOWUP: draw_misregistration(cfg, rng_motion)}
    days = {BASELINE: 0}
    days[FOLLOWUP] = int(rng_days.integers(cfg.followup_days[0], cfg.followup_days[1] + 1))
    noise = {BASELINE: rng_noise_b, FOLLOWUP: rng_noise_f}
    if cfg.mid_treatment_days:
        lo, hi = cfg.mid_treatment_days
        motions[MID] = draw_misregistration(cfg, rngs[5])
        days[MID] = int(rngs[6].integers(lo, hi + 1))
        noise[MID] = rngs[7]
    timepoints = synthetic_timepoints({"mid_treatment_days": cfg.mid_treatment_days})

    shape, spacing, origin = cfg.grid(patient.center)
    pts = _grid_points(shape, spacing, origin)
    volumes = {}
    for tp in timepoints:
        anat_pts = pts if tp == BASELINE else motions[tp].inverse(pts)
        img, mask = anatomy.evaluate(anat_pts, PROGRESS[tp])
        if not mask.any() and not (tp == FOLLOWUP and anatomy.complete):
            raise RuntimeError(f"{pid} {tp}: synthetic tumour is empty; raise tumor_radius_mm")
        scanned = _scanner(
            patient.center, cfg.contrast, cfg.contrast, img, shape, spacing, noise[tp]
        )
        mask_img = _to_image(mask.astype(np.uint8), shape, spacing, origin)
        io.write_image(_to_image(scanned, shape, spacing, origin), root / image_relpath(pid, tp))
        io.write_image(mask_img, root / mask_relpath(pid, tp))
        io.write_image(mask_img, root / f"truth/masks/{pid}/{tp}.nii.gz")
        volumes[tp] = float(mask.sum() * np.prod(spacing))
        # Extra channels: the same points (anatomy and motion), their own contrast and noise.
        for k, (name, contrast) in enumerate(cfg.extra_channels):
            rng = rngs[PATIENT_STREAMS + slots * k + CHANNEL_STREAM_SLOTS[tp]]
            values, _ = anatomy.evaluate(anat_pts, PROGRESS[tp], contrast)
            scanned = _scanner(patient.center, contrast, cfg.contrast, values, shape, spacing, rng)
            io.write_image(
                _to_image(scanned, shape, spacing, origin), root / image_relpath(pid, tp, name)
            )

    for tp in timepoints[1:]:
        _write_truth_in_baseline(root, pid, tp, anatomy, motions[tp], (shape, spacing, origin))
    unlabelled = cfg.is_unlabelled(pid)
    samples = []
    for tp in timepoints:
        scan = {"patient_id": pid, "center": patient.center.name, "timepoint": tp, "days": days[tp]}
        samples.append(
            {
                **scan,
                "modality": SYNTHETIC_MODALITY[cfg.contrast],
                "image": image_relpath(pid, tp),
                "mask": None if unlabelled and tp != BASELINE else mask_relpath(pid, tp),
                "channel": cfg.contrast,
            }
        )
        # Masks are drawn on the reference channel only.
        samples += [
            {
                **scan,
                "modality": SYNTHETIC_MODALITY[contrast],
                "image": image_relpath(pid, tp, name),
                "mask": None,
                "channel": name,
            }
            for name, contrast in cfg.extra_channels
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
    write_sheets([json.loads(Path(p).read_text()) for p in paths], root)


def simulate_cohort(cfg: SynthConfig, root: str | Path) -> pd.DataFrame:
    """Generate the whole cohort under `root` (serially) and return the sample sheet."""
    records = [simulate_patient(cfg, p, root) for p in cfg.patients()]
    write_sheets(records, root)
    return pd.DataFrame([s for r in records for s in r["samples"]])
