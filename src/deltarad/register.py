"""Longitudinal registration: each follow-up onto its patient's baseline, with QC and a gate.

Rigid -> affine -> B-spline, multi-resolution, Mattes mutual information (SimpleITK). The result
maps a baseline (fixed) point to the follow-up (moving) point of the same tissue, which is what
resampling the follow-up into baseline space needs. The B-spline stage sees both images clipped
to an intensity window of their body voxels (percentiles), so that soft-tissue contrast, not
the air/bone extremes, fills the mutual-information histogram. QC measures what can be measured
without truth (metric before/after, Jacobian determinant range, largest displacement) and, on
the synthetic cohort, the target registration error against the true transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from deltarad.body import DEFAULT_THRESHOLDS, Threshold, body_mask
from deltarad.preprocess import normalize, resample_label
from deltarad.qc import dice
from deltarad.runlog import UserError

STAGES = ("rigid", "affine", "bspline")


class RegistrationError(UserError):
    """A registration input is unusable (empty or constant image)."""


@dataclass(frozen=True)
class StageSettings:
    shrink: tuple[int, ...]
    smoothing_mm: tuple[float, ...]
    iterations: int
    sampling: float | None = None  # fraction of voxels sampled; None: the registration's


@dataclass(frozen=True)
class RegistrationSettings:
    """The ``registration:`` block of the config."""

    stages: tuple[str, ...] = STAGES
    histogram_bins: int = 50
    sampling: float = 0.1
    seed: int = 20261125
    rigid: StageSettings = StageSettings((4, 2, 1), (2.0, 1.0, 0.0), 200)
    affine: StageSettings = StageSettings((2, 1), (1.0, 0.0), 100)
    bspline: StageSettings = StageSettings((2, 1), (1.0, 0.0), 100)
    bspline_grid_mm: float = 30.0
    # Body-voxel intensity percentiles the B-spline stage clips both images to (None: no clip).
    bspline_window_pct: tuple[float, float] | None = (1.0, 99.0)
    max_displacement_mm: float = 40.0
    min_jacobian: float = 0.0
    # preprocess.body_threshold (deltarad.body): the body of QC, intensity window and TRE.
    body_threshold: dict[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> RegistrationSettings:
        d = cls()

        def stage(name: str) -> StageSettings:
            s = block.get(name, {})
            base = getattr(d, name)
            sampling = s.get("sampling", base.sampling)
            return StageSettings(
                tuple(int(v) for v in s.get("shrink", base.shrink)),
                tuple(float(v) for v in s.get("smoothing_mm", base.smoothing_mm)),
                int(s.get("iterations", base.iterations)),
                None if sampling is None else float(sampling),
            )

        gate = block.get("gate", {})
        bspline = block.get("bspline", {})
        window = bspline.get("window_percentiles", d.bspline_window_pct)
        return cls(
            stages=tuple(block.get("stages", d.stages)),
            histogram_bins=int(block.get("histogram_bins", d.histogram_bins)),
            sampling=float(block.get("sampling", d.sampling)),
            seed=int(block.get("seed", d.seed)),
            rigid=stage("rigid"),
            affine=stage("affine"),
            bspline=stage("bspline"),
            bspline_grid_mm=float(bspline.get("grid_mm", d.bspline_grid_mm)),
            bspline_window_pct=None if window is None else (float(window[0]), float(window[1])),
            max_displacement_mm=float(gate.get("max_displacement_mm", d.max_displacement_mm)),
            min_jacobian=float(gate.get("min_jacobian", d.min_jacobian)),
            body_threshold=dict(block.get("body_threshold") or DEFAULT_THRESHOLDS),
        )


@dataclass
class RegistrationResult:
    transform: sitk.Transform
    metric_before: float
    metric_after: float
    seconds: float
    stage_seconds: dict[str, float]


def _check_input(image: sitk.Image, role: str) -> None:
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size == 0 or min(image.GetSize()) < 4:
        raise RegistrationError(f"{role} image is empty or too small: size {image.GetSize()}")
    if float(arr.max()) == float(arr.min()):
        raise RegistrationError(f"{role} image is constant ({float(arr.min())}): nothing to align")


def _method(
    settings: RegistrationSettings, stage: StageSettings, gradient_images: bool = False
) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(
        settings.sampling if stage.sampling is None else stage.sampling, settings.seed
    )
    # Linear stages: image gradients by central differences at the sample points, not from a
    # precomputed recursive-Gaussian gradient image: on scans whose field of view cuts through
    # the body, that image's edge artefacts pulled the affine stage into 10-15 % scaling as the
    # metric got worse (synthetic centre C3); without it the affine stage lands within 1 mm.
    # The B-spline stage (on windowed images) keeps the gradient images: its local gradients
    # are smoother with them (demo subset: body TRE 0.59 vs 0.79 mm, and faster).
    r.SetMetricUseFixedImageGradientFilter(gradient_images)
    r.SetMetricUseMovingImageGradientFilter(gradient_images)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(list(stage.shrink))
    r.SetSmoothingSigmasPerLevel(list(stage.smoothing_mm))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def metric_value(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, settings: RegistrationSettings
) -> float:
    """Mattes MI (lower is better) of a transform, on all voxels (no sampling noise)."""
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetInitialTransform(transform)
    return float(r.MetricEvaluate(fixed, moving))


def intensity_window(
    image: sitk.Image,
    modality: str | None,
    percentiles: tuple[float, float],
    thresholds: dict[str, Threshold] | None = None,
) -> sitk.Image:
    """`image` clipped to the given percentiles of its body voxels (float32)."""
    body = sitk.GetArrayFromImage(body_mask(image, modality, thresholds)) > 0
    values = sitk.GetArrayViewFromImage(image)
    values = values[body] if body.any() else values.ravel()
    lo, hi = np.percentile(values, percentiles)
    return sitk.Clamp(image, sitk.sitkFloat32, float(lo), float(max(hi, lo)))


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: RegistrationSettings,
    modality: str | None = None,
) -> RegistrationResult:
    """Align `moving` (follow-up) onto `fixed` (baseline) with the configured stages.

    `modality` (CT, MR, PET) picks the body threshold of the B-spline stage's intensity window;
    None uses Otsu's threshold.
    """
    _check_input(fixed, "fixed (baseline)")
    _check_input(moving, "moving (follow-up)")
    unknown = set(settings.stages) - set(STAGES)
    if unknown or not settings.stages:
        raise RegistrationError(f"unknown registration stage(s) {sorted(unknown)}; use {STAGES}")
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    current: sitk.Transform = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    linear = sitk.AffineTransform(3)
    linear.SetCenter(sitk.Euler3DTransform(current).GetCenter())
    linear.SetTranslation(sitk.Euler3DTransform(current).GetTranslation())
    for name in ("rigid", "affine"):
        if name not in settings.stages:
            continue
        t0 = time.perf_counter()
        stage = getattr(settings, name)
        r = _method(settings, stage)
        r.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0 if name == "rigid" else 1.0,
            minStep=1e-3,
            numberOfIterations=stage.iterations,
            relaxationFactor=0.5,
        )
        r.SetOptimizerScalesFromPhysicalShift()
        if name == "rigid":
            init = sitk.Euler3DTransform()
            init.SetCenter(linear.GetCenter())
            init.SetMatrix(linear.GetMatrix())
            init.SetTranslation(linear.GetTranslation())
        else:
            init = sitk.AffineTransform(linear)
        r.SetInitialTransform(init, inPlace=True)
        r.Execute(fixed, moving)
        linear = sitk.AffineTransform(3)
        linear.SetCenter(init.GetCenter())
        linear.SetMatrix(init.GetMatrix())
        linear.SetTranslation(init.GetTranslation())
        timings[name] = round(time.perf_counter() - t0, 3)
    transform: sitk.Transform = linear
    if "bspline" in settings.stages:
        t0 = time.perf_counter()
        mesh = [
            max(1, int(round(n * s / settings.bspline_grid_mm)))
            for n, s in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)
        ]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        r = _method(settings, settings.bspline, gradient_images=True)
        r.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=settings.bspline.iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=2 * settings.bspline.iterations,
            costFunctionConvergenceFactor=1e7,
        )
        r.SetMovingInitialTransform(linear)
        r.SetInitialTransform(bspline, inPlace=True)
        if settings.bspline_window_pct is None:
            r.Execute(fixed, moving)
        else:
            r.Execute(
                intensity_window(
                    fixed, modality, settings.bspline_window_pct, settings.body_threshold
                ),
                intensity_window(
                    moving, modality, settings.bspline_window_pct, settings.body_threshold
                ),
            )
        # The composite applies the B-spline first, then the linear part: x -> A(x + d(x)).
        transform = sitk.CompositeTransform([linear, bspline])
        timings["bspline"] = round(time.perf_counter() - t0, 3)
    seconds = time.perf_counter() - start
    return RegistrationResult(
        transform=transform,
        metric_before=metric_value(fixed, moving, sitk.Transform(3, sitk.sitkIdentity), settings),
        metric_after=metric_value(fixed, moving, transform, settings),
        seconds=round(seconds, 3),
        stage_seconds=timings,
    )


def displacement_field(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """The transform sampled on `reference`'s grid as a displacement field (mm)."""
    convert = sitk.TransformToDisplacementFieldFilter()
    convert.SetReferenceImage(reference)
    convert.SetOutputPixelType(sitk.sitkVectorFloat64)
    return convert.Execute(transform)


def deformation_qc(
    transform: sitk.Transform, reference: sitk.Image, region: sitk.Image
) -> dict[str, float]:
    """Jacobian determinant range and largest displacement inside `region` (e.g. the body)."""
    field_img = displacement_field(transform, reference)
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_img))
    disp = np.linalg.norm(sitk.GetArrayFromImage(field_img), axis=-1)
    inside = sitk.GetArrayViewFromImage(region) > 0
    if not inside.any():
        inside = np.ones_like(inside, bool)
    return {
        "jacobian_min": float(jac[inside].min()),
        "jacobian_max": float(jac[inside].max()),
        "max_displacement_mm": float(disp[inside].max()),
    }


def gate(qc: dict[str, Any], s: RegistrationSettings) -> list[str]:
    """Reasons to drop a registration as diverged (empty when it passes).

    Works on the QC record alone, so the gate can be re-tuned without re-registering.
    """
    reasons = []
    if not qc["metric_after"] < qc["metric_before"]:
        reasons.append(
            f"similarity got worse: Mattes MI {qc['metric_before']:.4f} -> {qc['metric_after']:.4f}"
        )
    if qc["jacobian_min"] <= s.min_jacobian:
        reasons.append(
            f"folding: Jacobian determinant down to {qc['jacobian_min']:.3f} in the body "
            f"(must stay > {s.min_jacobian})"
        )
    if qc["max_displacement_mm"] > s.max_displacement_mm:
        reasons.append(
            f"displacement {qc['max_displacement_mm']:.1f} mm exceeds "
            f"registration.gate.max_displacement_mm = {s.max_displacement_mm}"
        )
    return reasons


def target_registration_error(
    transform: sitk.Transform,
    truth: sitk.Transform,
    reference: sitk.Image,
    region: sitk.Image,
    step_mm: float = 4.0,
) -> np.ndarray:
    """Distances (mm) between points mapped by `transform` and by the true transform.

    Points: the voxel centres of `region` (the body outside the tumour's neighbourhood) on a
    lattice of about `step_mm`, so every part of the body weighs the same whatever the spacing.
    """
    return field_distances(
        displacement_field(transform, reference),
        displacement_field(truth, reference),
        region,
        step_mm,
    )


def field_distances(
    ours: sitk.Image, truth: sitk.Image, region: sitk.Image, step_mm: float = 4.0
) -> np.ndarray:
    """Distances between two displacement fields on `region`'s grid, on a ~`step_mm` lattice."""
    step = np.maximum(np.round(step_mm / np.asarray(region.GetSpacing())), 1).astype(int)
    inside = sitk.GetArrayViewFromImage(region)[:: step[2], :: step[1], :: step[0]] > 0
    zyx = np.argwhere(inside) * step[::-1]
    a = sitk.GetArrayViewFromImage(ours)[zyx[:, 0], zyx[:, 1], zyx[:, 2]]
    b = sitk.GetArrayViewFromImage(truth)[zyx[:, 0], zyx[:, 1], zyx[:, 2]]
    return np.linalg.norm(a - b, axis=1)


def tre_region(
    baseline: sitk.Image,
    modality: str,
    tumor: sitk.Image | None,
    thresholds: dict[str, Threshold] | None = None,
) -> sitk.Image:
    """The body minus a 10 mm neighbourhood of the tumour (whose change is anatomy, not motion)."""
    body = sitk.GetArrayFromImage(body_mask(baseline, modality, thresholds)) > 0
    if tumor is not None:
        dist = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(
                sitk.Cast(tumor > 0, sitk.sitkUInt8),
                insideIsPositive=False,
                squaredDistance=False,
                useImageSpacing=True,
            )
        )
        body &= dist > 10.0
    out = sitk.GetImageFromArray(body.astype(np.uint8))
    out.CopyInformation(baseline)
    return out


def propagate_mask(
    mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform
) -> sitk.Image:
    """A follow-up mask in baseline space: per-label linear interpolation, threshold 0.5."""
    return resample_label(mask, reference, transform)


def resample_moving(
    moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform
) -> sitk.Image:
    """The follow-up image in baseline space (B-spline interpolation; outside = its minimum)."""
    background = float(sitk.GetArrayViewFromImage(moving).min())
    return sitk.Resample(
        sitk.Cast(moving, sitk.sitkFloat32),
        reference,
        transform,
        sitk.sitkBSpline,
        background,
        sitk.sitkFloat32,
    )


def resample_once(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform,
    original: tuple[str, dict[str, Any]] | None,
) -> sitk.Image:
    """The registered later scan: from its original image when that is given and its
    normalisation repeatable (one interpolation, as the baseline had), else from the
    preprocessed `moving` (a second interpolation)."""
    from deltarad import io
    from deltarad.preprocess import apply_normalization

    if original is not None:
        path, record = original
        warped = resample_moving(io.read_image(path), reference, transform)
        normalised = apply_normalization(warped, record.get("normalization", {}))
        if normalised is not None:
            return normalised
    return resample_moving(moving, reference, transform)


def carry_channel(
    original_path: str | Path,
    modality: str,
    settings: Any,
    fixed_path: str | Path,
    transform_path: str | Path | None,
    out_image: str | Path,
    out_record: str | Path,
) -> dict[str, Any]:
    """Another channel of a timepoint (PET beside CT, ADC beside T2) onto the baseline grid:
    from its original image, in one interpolation, through the reference channel's registration
    of that timepoint (`transform_path`; None at baseline: the channels of a timepoint are
    co-registered, so the identity), then normalised for its own modality on that grid
    (:func:`deltarad.preprocess.normalize`, `settings` its PreprocessSettings).

    Why the reference's transform rather than a registration of its own: the channels of one
    timepoint share the patient's position (a hybrid scanner, one MR session), and a
    registration on a functional channel (PET uptake, ADC) chases the treatment effect the
    study measures."""
    from deltarad import io

    fixed = io.read_image(fixed_path)
    transform = (
        sitk.ReadTransform(str(transform_path))
        if transform_path is not None
        else sitk.Transform(3, sitk.sitkIdentity)
    )
    original = io.read_image(original_path)
    warped = resample_moving(original, fixed, transform)
    image, normalization = normalize(warped, modality, settings)
    image = sitk.Cast(image, sitk.sitkFloat32)
    io.write_image(image, out_image)
    record = {
        "input_spacing": list(original.GetSpacing()),
        "input_size": list(original.GetSize()),
        "output_spacing": list(image.GetSpacing()),
        "output_size": list(image.GetSize()),
        "transform": "identity (baseline)" if transform_path is None else str(transform_path),
        "interpolation": {"image": "bspline, once: original -> baseline grid"},
        "normalization": normalization,
    }
    io.write_json(record, out_record)
    return record


def propagate_mask_file(
    mask_path: str | Path, fixed_path: str | Path, transform_path: str | Path, out: str | Path
) -> int:
    """A later scan's drawn mask through its registration onto the baseline grid; returns the
    tumour voxel count (0 for a complete response)."""
    from deltarad import io

    fixed = io.read_image(fixed_path)
    transform = sitk.ReadTransform(str(transform_path))
    mask = propagate_mask(io.read_image(mask_path), fixed, transform)
    io.write_image(mask, out)
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def invert_to_moving_space(
    transform: sitk.Transform, fixed: sitk.Image, moving: sitk.Image
) -> sitk.Transform:
    """The inverse map (follow-up point -> baseline point), for baseline masks in follow-up
    space: the forward transform as a displacement field on the baseline grid, inverted
    iteratively onto the follow-up grid."""
    forward = displacement_field(transform, fixed)
    inverse = sitk.InvertDisplacementField(
        forward,
        maximumNumberOfIterations=50,
        maxErrorToleranceThreshold=0.05,
        meanErrorToleranceThreshold=0.001,
        enforceBoundaryCondition=False,
    )
    inverse_tx = sitk.DisplacementFieldTransform(sitk.Cast(inverse, sitk.sitkVectorFloat64))
    # Resample the inverse field onto the follow-up grid so it covers the moving image.
    field_moving = displacement_field(inverse_tx, moving)
    return sitk.DisplacementFieldTransform(field_moving)


def register_scan(
    patient_id: str,
    timepoint: str,
    modality: str,
    fixed_path: str,
    moving_path: str,
    moving_mask_path: str | None,
    settings: RegistrationSettings,
    out_image: str,
    out_mask: str | None,
    out_transform: str,
    out_qc: str,
    fixed_mask_path: str | None = None,
    truth: dict[str, str] | None = None,
    out_figure: str | None = None,
    threads: int = 1,
    original: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The workflow's registration job: register, resample, measure, gate, write.

    `moving_mask_path`: the later scan's drawn mask (any grid), or None: it is only propagated
    (to `out_mask`, when given) and scored, never needed. `original`: (the later scan's original
    image, its preprocessing record): the registered image is then resampled once, from the
    original through the transform, and normalised as the preprocessed scan was
    (:func:`deltarad.preprocess.apply_normalization`). `truth` (synthetic cohort) holds
    ``cohort`` (its root) and ``mask`` (the true follow-up tumour on the raw baseline grid).
    The QC record holds measurements only: the gate (:func:`gate`) is applied when the records
    are gathered, so it can be re-tuned cheaply.
    """
    from deltarad import io

    where = f"patient {patient_id}, {timepoint}"
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
    try:
        fixed = io.read_image(fixed_path)
        moving = io.read_image(moving_path)
        result = register_images(fixed, moving, settings, modality)
    except (RegistrationError, io.ImageReadError) as err:
        raise RegistrationError(f"{where} ({moving_path}): {err}") from None
    region = body_mask(fixed, modality, settings.body_threshold)
    qc = deformation_qc(result.transform, fixed, region)
    tumor = io.read_image(fixed_mask_path) if fixed_mask_path else None
    registered = resample_once(moving, fixed, result.transform, original)
    io.write_image(registered, out_image)
    if out_figure:
        from deltarad.figures.registration import registration_figure

        before = resample_moving(moving, fixed, sitk.Transform(3, sitk.sitkIdentity))
        registration_figure(fixed, before, registered, tumor, where, out_figure)
    if moving_mask_path and out_mask:
        io.write_image(
            propagate_mask(io.read_image(moving_mask_path), fixed, result.transform), out_mask
        )
    with io.atomic_path(out_transform) as tmp:
        sitk.WriteTransform(result.transform, str(tmp))
    record: dict[str, Any] = {
        "patient_id": patient_id,
        "timepoint": timepoint,
        "method": "sitk:" + "+".join(settings.stages),
        "tre_mm": None,
        "mask_dice": None,
        "seconds": result.seconds,
        "stage_seconds": result.stage_seconds,
        "metric_before": round(result.metric_before, 6),
        "metric_after": round(result.metric_after, 6),
        **{k: round(v, 4) for k, v in qc.items()},
    }
    if truth:
        from deltarad.synth import load_true_transform

        true_tx = load_true_transform(truth["cohort"], patient_id, timepoint)
        errors = target_registration_error(
            result.transform,
            true_tx,
            fixed,
            tre_region(fixed, modality, tumor, settings.body_threshold),
        )
        record.update(
            tre_mm=round(float(errors.mean()), 4),
            tre_p95_mm=round(float(np.percentile(errors, 95)), 4),
            tre_points=int(errors.size),
        )
        if moving_mask_path:
            true_mask = io.read_image(truth["mask"])
            mask = io.read_image(moving_mask_path)
            record["mask_dice"] = round(
                dice(propagate_mask(mask, true_mask, result.transform), true_mask), 4
            )
            # The same propagation through the true transform: the best any registration
            # can reach on this grid (partial-volume loss of small follow-up tumours).
            record["mask_dice_true_transform"] = round(
                dice(propagate_mask(mask, true_mask, true_tx), true_mask), 4
            )
    io.write_json(record, out_qc)
    return record
