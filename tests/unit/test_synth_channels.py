"""The synthetic cohort's extra channels: co-registered PET and ADC images of every timepoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS
from deltarad.layout import image_relpath
from deltarad.phantom import TISSUES, draw_patient
from deltarad.synth import SynthConfig, patient_outputs, simulate_cohort, simulate_patient

EXTRA = (("PET", "PET"), ("ADC", "ADC"))
# config/test.yaml: responders with a tumour left at follow-up (the others: complete response or
# none).
PARTIAL_RESPONDERS = {"C1-002", "C2-001"}


@pytest.fixture(scope="module")
def multi_synth(tiny_synth) -> SynthConfig:
    return dataclasses.replace(tiny_synth, extra_channels=EXTRA)


@pytest.fixture(scope="module")
def multi_cohort(tmp_path_factory, multi_synth):
    root = tmp_path_factory.mktemp("multi_cohort")
    simulate_cohort(multi_synth, root)
    return root


def _array(root, rel) -> np.ndarray:
    return sitk.GetArrayFromImage(io.read_image(root / rel))


def test_config_reads_extra_channels():
    block = {"contrast": "MR", "extra_channels": [{"name": "ADC1", "contrast": "ADC"}]}
    assert SynthConfig.from_config(block).extra_channels == (("ADC1", "ADC"),)
    assert SynthConfig.from_config({}).extra_channels == ()
    with pytest.raises(ValueError, match="must differ"):
        SynthConfig.from_config({"extra_channels": [{"name": "CT", "contrast": "PET"}]})


def test_extra_channels_share_the_reference_geometry(multi_synth, multi_cohort):
    assert all(
        (multi_cohort / rel).is_file()
        for rel in patient_outputs(
            "C1-001", {"extra_channels": [{"name": n, "contrast": c} for n, c in EXTRA]}
        )
    )
    background = {}
    for patient in multi_synth.patients():
        pid = patient.patient_id
        for tp in ("baseline", "followup"):
            reference = io.read_image(multi_cohort / image_relpath(pid, tp))
            for name, _ in EXTRA:
                image = io.read_image(multi_cohort / image_relpath(pid, tp, name))
                assert io.Geometry.of(image).mismatches(io.Geometry.of(reference)) == [], name
                assert image.GetPixelID() == sitk.sitkFloat32
                assert sitk.GetArrayFromImage(image).min() >= 0
        air = _array(multi_cohort, image_relpath(pid, "baseline")) < -900
        adc = _array(multi_cohort, image_relpath(pid, "baseline", "ADC"))
        background.setdefault(patient.center.name, []).append(float(np.mean(adc[air])))
    # C2's offset of 25 HU is ~250 ADC units (10 per HU): the centres' effects differ per channel.
    assert min(background["C2"]) > max(background["C1"]) + 150


def test_pet_tumour_is_bright_and_adc_tumour_dark(multi_synth, multi_cohort):
    for patient in multi_synth.patients():
        pid = patient.patient_id
        mask = _array(multi_cohort, f"truth/masks/{pid}/baseline.nii.gz").astype(bool)
        reference = _array(multi_cohort, image_relpath(pid, "baseline"))
        # Body tissue away from the tumour and its ring, found on the co-registered CT.
        body = (reference > -500) & ~ndimage.binary_dilation(mask, iterations=4)
        pet = _array(multi_cohort, image_relpath(pid, "baseline", "PET"))
        adc = _array(multi_cohort, image_relpath(pid, "baseline", "ADC"))
        assert pet[mask].mean() > 3.0 * np.median(pet[body]), pid
        assert pet[mask].mean() > 4.0, pid
        assert adc[mask].mean() < np.median(adc[body]) - 250, pid


def test_responders_pet_uptake_falls_and_adc_rises(multi_cohort):
    for pid in PARTIAL_RESPONDERS:
        means = {}
        for tp in ("baseline", "followup"):
            mask = _array(multi_cohort, f"truth/masks/{pid}/{tp}.nii.gz").astype(bool)
            assert mask.any()
            means[tp] = {
                name: _array(multi_cohort, image_relpath(pid, tp, name))[mask].mean()
                for name, _ in EXTRA
            }
        assert means["followup"]["PET"] < means["baseline"]["PET"] - 1.0, pid
        assert means["followup"]["ADC"] > means["baseline"]["ADC"], pid


def test_phantom_contrasts_line_up_and_complete_response_leaves_no_uptake(tiny_synth):
    """Noise-free: every contrast sees the same tumour; the organ lies between the tumour and
    the soft tissue on ADC and below the tumour on PET; a complete responder's bed on PET is
    background."""
    cfg = dataclasses.replace(tiny_synth, complete_degree=0.0)  # every patient responds fully
    anatomy, _ = draw_patient(cfg, np.random.default_rng(11))
    assert anatomy.complete
    pts = np.random.default_rng(12).uniform(-45.0, 45.0, (40000, 3))
    pts[:4000] = anatomy.tumor_center + np.random.default_rng(13).normal(0.0, 5.0, (4000, 3))
    values, masks = {}, []
    for contrast in ("CT", "PET", "ADC"):
        values[contrast], mask = anatomy.evaluate(pts, 0.0, contrast)
        masks.append(mask)
    assert masks[0].sum() > 100
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    organ = (
        np.sum(((pts - anatomy.organ_center) / anatomy.organ_axes) ** 2, axis=1) <= 1
    ) & ~masks[0]
    organ &= np.linalg.norm(pts - anatomy.tumor_center, axis=1) > 3 * anatomy.tumor_radius
    pet, adc = values["PET"], values["ADC"]
    assert pet[masks[0]].mean() > 6.0 > 2.5 > np.median(pet[organ]) > 1.4
    assert adc[masks[0]].mean() < 1000 < np.median(adc[organ]) < TISSUES["ADC"]["soft"]
    after, gone = anatomy.evaluate(pts, 1.0, "PET")
    assert not gone.any()
    bed = anatomy.tumor_level(pts, anatomy.shrinkage) < 1.0
    assert bed.sum() > 20
    assert abs(after[bed].mean() - TISSUES["PET"]["soft"]) < 0.2


def test_sheet_has_a_row_per_channel(multi_synth, multi_cohort):
    samples = io.read_tsv(multi_cohort / "samples.tsv")
    assert list(samples.columns) == SAMPLE_COLUMNS
    assert len(samples) == len(multi_synth.patients()) * 2 * 3
    reference = samples[samples["channel"] == "CT"].set_index(["patient_id", "timepoint"])
    assert len(reference) == len(multi_synth.patients()) * 2
    assert (reference["modality"] == "CT").all()
    for name, modality in (("PET", "PET"), ("ADC", "MR")):
        rows = samples[samples["channel"] == name]
        assert len(rows) == len(reference)
        assert (rows["modality"] == modality).all()
        assert rows["mask"].isna().all()
        for row in rows.itertuples():
            assert row.image == image_relpath(row.patient_id, row.timepoint, name)
            ref = reference.loc[(row.patient_id, row.timepoint)]
            assert (row.center, row.days) == (ref["center"], ref["days"])


def test_extra_channels_change_no_reference_file_and_are_deterministic(
    multi_synth, multi_cohort, tmp_path
):
    """Adding channels draws new random streams only: the reference images, masks and truth stay
    byte-identical; the same seed gives the same extra images."""
    patient = next(p for p in multi_synth.patients() if p.patient_id == "C2-001")
    single = dataclasses.replace(multi_synth, extra_channels=())
    simulate_patient(single, patient, tmp_path / "single")
    for rel in patient_outputs(patient.patient_id):
        if not rel.startswith("truth/patients"):
            assert io.sha256(tmp_path / "single" / rel) == io.sha256(multi_cohort / rel), rel
    rel = image_relpath(patient.patient_id, "followup")
    assert np.array_equal(_array(tmp_path / "single", rel), _array(multi_cohort, rel))
    simulate_patient(multi_synth, patient, tmp_path / "again")
    for tp in ("baseline", "followup"):
        for name, _ in EXTRA:
            rel = image_relpath(patient.patient_id, tp, name)
            assert np.array_equal(_array(tmp_path / "again", rel), _array(multi_cohort, rel)), rel
