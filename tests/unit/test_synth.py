"""The synthetic cohort: determinism, truth consistency, and the latent model's effects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS
from deltarad.phantom import draw_misregistration, draw_patient, followup_response_probability
from deltarad.synth import (
    SynthConfig,
    load_true_transform,
    patient_outputs,
    simulate_cohort,
    simulate_patient,
)


def _hashes(root):
    return {str(p.relative_to(root)): io.sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tiny_synth, tiny_cohort_ro, tmp_path):
    simulate_cohort(tiny_synth, tmp_path)
    first, second = _hashes(tiny_cohort_ro), _hashes(tmp_path)
    assert len(first) == 6 * len(patient_outputs("x")) + 3
    assert first == second


def test_other_seed_changes_images(tiny_synth, tiny_cohort_ro, tmp_path):
    other = dataclasses.replace(tiny_synth, seed=tiny_synth.seed + 1)
    patient = other.patients()[0]
    simulate_patient(other, patient, tmp_path)
    rel = "images/C1-001/baseline.nii.gz"
    assert io.sha256(tmp_path / rel) != io.sha256(tiny_cohort_ro / rel)


def test_patient_does_not_depend_on_cohort_size(tiny_synth, tiny_cohort_ro, tmp_path):
    smaller = dataclasses.replace(tiny_synth, patients_per_center=1)
    simulate_patient(smaller, smaller.patients()[0], tmp_path)
    for rel in patient_outputs("C1-001"):
        assert io.sha256(tmp_path / rel) == io.sha256(tiny_cohort_ro / rel), rel


def test_sheets_list_every_file_with_centre_geometry(tiny_synth, tiny_cohort_ro):
    samples = io.read_tsv(tiny_cohort_ro / "samples.tsv")
    assert list(samples.columns) == SAMPLE_COLUMNS
    assert len(samples) == 12
    assert set(samples["channel"]) == {"CT"}  # one channel, named after the contrast
    for row in samples.itertuples():
        image = io.read_image(tiny_cohort_ro / row.image)
        center = next(c for c in tiny_synth.centers if c.name == row.center)
        _, spacing, _ = tiny_synth.grid(center)
        assert image.GetSpacing() == pytest.approx(tuple(spacing))
        # Unlabelled follow-ups have no mask in the sheet; the drawn mask file still exists.
        mask = row.mask if isinstance(row.mask, str) else f"masks/{row.patient_id}/followup.nii.gz"
        assert isinstance(row.mask, str) == (
            row.patient_id not in UNLABELLED or row.timepoint == "baseline"
        )
        geo_mask, _, _ = io.read_header(tiny_cohort_ro / mask)
        assert io.Geometry.of(image).mismatches(geo_mask) == []
        assert (int(row.days) == 0) == (row.timepoint == "baseline")
    clinical = io.read_tsv(tiny_cohort_ro / "clinical.tsv")
    assert set(clinical.columns) >= {"patient_id", "response", "time", "event", "age", "stage"}
    assert (clinical["time"].astype(float) > 0).all()
    assert set(clinical["event"]) <= {"0", "1"}


UNLABELLED = {"C1-001", "C2-001", "C2-002"}
COMPLETE = {"C1-001", "C2-002", "C2-003"}


def _within_one_voxel(a: np.ndarray, b: np.ndarray) -> bool:
    """Every voxel on which two masks disagree touches the other mask (26-neighbourhood)."""
    cube = np.ones((3, 3, 3), bool)
    only_a = a & ~b
    only_b = b & ~a
    return bool(
        np.all(ndimage.binary_dilation(b, cube)[only_a])
        and np.all(ndimage.binary_dilation(a, cube)[only_b])
    )


def test_true_transform_maps_followup_truth_onto_baseline_space(tiny_synth, tiny_cohort_ro):
    for patient in tiny_synth.patients():
        pid = patient.patient_id
        if pid in COMPLETE:
            continue  # no tumour left at follow-up (test_complete_responders)
        truth = tiny_cohort_ro / "truth/masks" / pid
        moving = io.read_image(truth / "followup.nii.gz")
        reference = io.read_image(truth / "followup_in_baseline.nii.gz")
        warped = sitk.Resample(
            moving,
            reference,
            load_true_transform(tiny_cohort_ro, pid),
            sitk.sitkNearestNeighbor,
            0,
        )
        a = sitk.GetArrayFromImage(warped).astype(bool)
        b = sitk.GetArrayFromImage(reference).astype(bool)
        assert a.sum() > 0 and b.sum() > 0
        assert _within_one_voxel(a, b), pid
        # Nearest-neighbour resampling moves the boundary by at most a voxel; the volumes agree.
        assert 0.7 < a.sum() / b.sum() < 1.4, pid


def test_identity_would_not_pass_the_truth_check(tiny_synth, tiny_cohort_ro):
    """The misregistration is real: without the true transform the masks disagree."""
    far = 0
    for patient in tiny_synth.patients():
        if patient.patient_id in COMPLETE:
            continue
        truth = tiny_cohort_ro / "truth/masks" / patient.patient_id
        moving = io.read_image(truth / "followup.nii.gz")
        reference = io.read_image(truth / "followup_in_baseline.nii.gz")
        same_grid = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        a = sitk.GetArrayFromImage(same_grid).astype(bool)
        b = sitk.GetArrayFromImage(reference).astype(bool)
        far += not _within_one_voxel(a, b)
    assert far >= 2


def test_unlabelled_followups_and_complete_responders(tiny_synth, tiny_cohort_ro):
    """config/test.yaml: follow-up masks left out of the sheet for C1-001, C2-001 and C2-002;
    complete response (empty follow-up, truth included) for C1-001, C2-002 and C2-003."""
    assert tiny_synth.unlabelled_patients() == UNLABELLED
    latent = io.read_tsv(tiny_cohort_ro / "truth/latent.tsv").set_index("patient_id")
    assert set(latent.index[latent["complete_response"] == "1"]) == COMPLETE
    clinical = io.read_tsv(tiny_cohort_ro / "clinical.tsv").set_index("patient_id")
    for pid in latent.index:
        follow = sitk.GetArrayFromImage(
            io.read_image(tiny_cohort_ro / f"masks/{pid}/followup.nii.gz")
        )
        truth = tiny_cohort_ro / f"truth/masks/{pid}/followup_in_baseline.nii.gz"
        assert follow.any() == (pid not in COMPLETE), pid
        assert sitk.GetArrayFromImage(io.read_image(truth)).any() == (pid not in COMPLETE)
        if pid in COMPLETE:
            assert clinical.loc[pid, "response"] == "1"
            assert float(latent.loc[pid, "tumor_volume_followup_mm3"]) == 0.0
    # A patient's choice does not depend on the size of the cohort.
    smaller = dataclasses.replace(tiny_synth, patients_per_center=1)
    assert smaller.unlabelled_patients() == UNLABELLED & {"C1-001", "C2-001"}


def test_itk_transform_equals_generating_map(tiny_synth):
    motion = draw_misregistration(tiny_synth, np.random.default_rng(3))
    pts = np.random.default_rng(4).uniform(-40, 40, (300, 3))
    itk = motion.to_sitk()
    mapped = np.array([itk.TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(mapped, motion.forward(pts), atol=1e-9)
    np.testing.assert_allclose(motion.inverse(motion.forward(pts)), pts, atol=1e-4)
    assert np.max(np.linalg.norm(motion.forward(pts) - pts, axis=1)) > 1.0


def test_latents_drive_outcomes():
    cfg = SynthConfig.from_config(
        {
            "patients_per_center": 40,
            "shape": [16, 16, 16],
            "spacing": [6.0, 6.0, 6.0],
            "centers": [{"name": "A"}],
        }
    )
    rows = []
    for p in cfg.patients():
        rng = np.random.default_rng([cfg.seed, 0, p.patient_index])
        _, rec = draw_patient(cfg, rng)
        rows.append({**rec["clinical"], **rec["latent"]})
    df = pd.DataFrame(rows)
    # Responders have a higher oracle probability and shrink more.
    assert (
        df.loc[df.response == 1, "response_probability"].mean()
        > df.loc[df.response == 0, "response_probability"].mean() + 0.2
    )
    lo, hi = cfg.shrinkage
    assert df["shrinkage"].between(lo, hi).all()
    assert (
        df.loc[df.response == 1, "shrinkage"].mean()
        < df.loc[df.response == 0, "shrinkage"].mean() - 0.1
    )
    # The response is the sign of the latent depth; the follow-up's shrinkage only reflects a
    # noisy radiological response, so the groups' shrinkage ranges overlap.
    assert (df.response == (df.response_depth > 0).astype(int)).all()
    assert df.loc[df.response == 1, "shrinkage"].max() > df.loc[df.response == 0, "shrinkage"].min()
    assert np.allclose(
        df["shrinkage"],
        hi - (hi - lo) / (1 + np.exp(-cfg.response_slope * df.radiological_response)),
    )
    # Higher latent risk -> earlier events (Spearman correlation of risk and event time < 0).
    assert df["latent_risk"].corr(df["event_time"], method="spearman") < -0.3
    assert ((df.time <= df.event_time + 0.006) & (df.time > 0)).all()
    assert (df.event == (df.event_time <= df.censor_time).astype(int)).all()


def test_mr_contrast_and_centre_effects(tmp_path):
    cfg = SynthConfig.from_config(
        {
            "contrast": "MR",
            "patients_per_center": 1,
            "shape": [24, 24, 16],
            "spacing": [4.0, 4.0, 6.0],
            "tumor_radius_mm": [14.0, 18.0],
            "centers": [
                {"name": "A", "noise": 5.0},
                {
                    "name": "B",
                    "scale": 2.0,
                    "offset": 100.0,
                    "noise": 5.0,
                    "spacing": [3.0, 3.0, 6.0],
                },
            ],
        }
    )
    rows = {p.center.name: simulate_patient(cfg, p, tmp_path) for p in cfg.patients()}
    assert {r["samples"][0]["modality"] for r in rows.values()} == {"MR"}
    arrays = {}
    for name, rec in rows.items():
        image = io.read_image(tmp_path / rec["samples"][0]["image"])
        assert image.GetPixelID() == sitk.sitkFloat32
        arrays[name] = sitk.GetArrayFromImage(image)
        assert arrays[name].min() >= 0
    assert arrays["B"].shape == (16, 32, 32)  # same field of view at B's own spacing
    # B's scanner doubles the intensities and adds 100: its median body signal is far higher.
    assert np.median(arrays["B"][arrays["B"] > 150]) > 1.5 * np.median(
        arrays["A"][arrays["A"] > 150]
    )


def test_post_treatment_oracle_is_bayes_and_beats_the_pre_treatment_one():
    """The post-treatment oracle equals a direct numerical integral of the posterior, is
    calibrated on simulated patients, and ranks responders better than the pre-treatment one."""
    from scipy import integrate, stats

    for eta, r, noise in [(0.3, 1.2, 1.5), (-2.0, 0.5, 1.5), (1.0, -3.0, 0.7), (0.0, 0.0, 2.0)]:

        def density(s, eta=eta, r=r, noise=noise):
            return stats.logistic.pdf(s - eta) * stats.norm.pdf(r, s, noise)

        above = integrate.quad(density, 0, np.inf)[0]
        total = above + integrate.quad(density, -np.inf, 0)[0]
        assert followup_response_probability(eta, r, noise) == pytest.approx(
            above / total, abs=1e-6
        )
    assert followup_response_probability(0.0, 0.3, 0.0) == 1.0

    rng = np.random.default_rng(7)
    n = 3000
    eta = rng.normal(0.3, 1.9, n)
    depth = eta + rng.logistic(size=n)
    r = depth + rng.normal(0.0, 1.5, n)
    post = np.array([followup_response_probability(e, x, 1.5) for e, x in zip(eta, r, strict=True)])
    y = depth > 0
    for lo in np.arange(0.0, 1.0, 0.2):
        sel = (post >= lo) & (post < lo + 0.2)
        assert abs(y[sel].mean() - post[sel].mean()) < 0.05
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, post) > roc_auc_score(y, eta) + 0.04


def test_mid_treatment_scan_adds_a_timepoint_and_changes_nothing_else(
    tiny_synth, tiny_cohort_ro, tmp_path
):
    """`mid_treatment_days` adds timepoint `mid` (half the response, its own misregistration,
    its truth) from new random streams: the baseline and follow-up files stay byte-identical."""
    from deltarad.layout import synthetic_timepoints

    cfg = dataclasses.replace(tiny_synth, mid_treatment_days=(20, 45))
    patient = next(p for p in cfg.patients() if p.patient_id == "C1-002")
    record = simulate_patient(cfg, patient, tmp_path)
    block = {"mid_treatment_days": [20, 45]}
    assert synthetic_timepoints(block) == ("baseline", "mid", "followup")
    files = patient_outputs("C1-002", block)
    assert all((tmp_path / rel).is_file() for rel in files)
    for rel in patient_outputs("C1-002"):
        if not rel.startswith("truth/patients"):
            assert io.sha256(tmp_path / rel) == io.sha256(tiny_cohort_ro / rel), rel
    days = {s["timepoint"]: s["days"] for s in record["samples"]}
    assert 20 <= days["mid"] <= 45 < days["followup"]

    def volume(tp: str) -> int:
        return int(
            sitk.GetArrayFromImage(io.read_image(tmp_path / f"masks/C1-002/{tp}.nii.gz")).sum()
        )

    assert volume("followup") < volume("mid") < volume("baseline")  # C1-002 responds
    truth = tmp_path / "truth/masks/C1-002"
    warped = sitk.Resample(
        io.read_image(truth / "mid.nii.gz"),
        io.read_image(truth / "mid_in_baseline.nii.gz"),
        load_true_transform(tmp_path, "C1-002", "mid"),
        sitk.sitkNearestNeighbor,
    )
    a = sitk.GetArrayFromImage(warped).astype(bool)
    b = sitk.GetArrayFromImage(io.read_image(truth / "mid_in_baseline.nii.gz")).astype(bool)
    assert a.sum() > 0 and _within_one_voxel(a, b)
