"""Per-patient partial files, the merged table, deltas and soft failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.features import delta
from deltarad.features.table import FeatureSettings, merge_features, write_patient

PARAMS = {
    "setting": {"binWidth": 25, "label": 1},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": ["Mean", "Skewness"], "shape": ["VoxelVolume"]},
}


@pytest.fixture()
def settings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    block = {
        "rings_mm": [[0, 3], [3, 6]],
        "body_threshold": {"CT": -500},
        "min_tumor_voxels": 10,
        "min_ring_voxels": 10,
    }
    return FeatureSettings.from_config(block, params=path)


def _scans(root, pid):
    return {
        tp: (root / f"images/{pid}/{tp}.nii.gz", root / f"masks/{pid}/{tp}.nii.gz")
        for tp in ("baseline", "followup")
    }


def test_partials_merge_into_one_row_per_patient_with_deltas(tiny_cohort_ro, settings, tmp_path):
    pids = ["C1-001", "C1-002", "C2-001"]
    for pid in pids:
        write_patient(
            pid,
            _scans(tiny_cohort_ro, pid),
            settings,
            tmp_path / f"{pid}.parquet",
            tmp_path / f"{pid}.tsv",
            channels={"CT": "CT"},
        )
    excluded = tmp_path / "failures_registration.tsv"
    io.write_table(
        pd.DataFrame({"patient_id": ["C2-001"], "stage": ["register"], "error": ["diverged"]}),
        excluded,
    )
    table = merge_features(
        [tmp_path / f"{p}.parquet" for p in pids],
        [tmp_path / f"{p}.tsv" for p in pids],
        tmp_path / "features.parquet",
        tmp_path / "failures.tsv",
        excluded,
    )
    back = pd.read_parquet(tmp_path / "features.parquet")
    assert list(back["patient_id"]) == ["C1-001", "C1-002"]
    assert back.columns[0] == "patient_id"
    col = "baseline__CT__tumor__pyrad__original_firstorder_Mean"
    fcol = col.replace("baseline", "followup", 1)
    assert {col, fcol, "baseline__CT__ring0to3mm__pyrad__original_shape_VoxelVolume"} <= set(back)
    np.testing.assert_allclose(back[col.replace("baseline", "delta", 1)], back[fcol] - back[col])
    prefixes = [c.split("__")[0] for c in back.columns[1:]]
    firsts = list(dict.fromkeys(prefixes))
    assert firsts == ["baseline", "followup", "delta", "reldelta"]
    assert not back["baseline__CT__tumor__qc__failed"].any()
    assert table.shape == back.shape


def test_small_tumour_gives_na_flag_and_failure_row(tiny_cohort_ro, settings, tmp_path):
    strict = FeatureSettings(**{**settings.__dict__, "min_tumor_voxels": 10**6})
    pid = "C1-003"
    write_patient(
        pid,
        _scans(tiny_cohort_ro, pid),
        strict,
        tmp_path / "a.parquet",
        tmp_path / "a.tsv",
        channels={"CT": "CT"},
    )
    write_patient(
        "C1-002",
        _scans(tiny_cohort_ro, "C1-002"),
        settings,
        tmp_path / "b.parquet",
        tmp_path / "b.tsv",
        channels={"CT": "CT"},
    )
    table = merge_features(
        [tmp_path / "a.parquet", tmp_path / "b.parquet"],
        [tmp_path / "a.tsv", tmp_path / "b.tsv"],
        tmp_path / "f.parquet",
        tmp_path / "fail.tsv",
    )
    row = table.set_index("patient_id").loc[pid]
    assert row["baseline__CT__tumor__qc__failed"] and row["followup__CT__tumor__qc__failed"]
    assert np.isnan(row["baseline__CT__tumor__pyrad__original_firstorder_Mean"])
    assert np.isnan(row["delta__CT__tumor__pyrad__original_firstorder_Mean"])
    assert not np.isnan(row["baseline__CT__ring0to3mm__pyrad__original_firstorder_Mean"])
    failures = io.read_tsv(tmp_path / "fail.tsv")
    assert list(failures.columns) == ["patient_id", "stage", "error"]
    assert set(failures["patient_id"]) == {pid} and (failures["stage"] == "features").all()
    assert failures["error"].str.contains("tumor has").all() and len(failures) == 2


def test_relative_change_is_na_near_a_zero_baseline():
    b = pd.Series([100.0, -50.0, 0.3, 0.0, np.nan])
    f = pd.Series([110.0, -25.0, 5.0, 1.0, 2.0])
    # median(|b|) = 25.15, so the floor is 0.05 * 25.15 = 1.26: 0.3 counts as near zero.
    out = delta.relative_change(b, f, rel_floor=0.05)
    np.testing.assert_allclose(out[:2], [0.1, 0.5])
    assert out[2:].isna().all()
    table = pd.DataFrame(
        {
            "baseline__CT__tumor__pyrad__x": b,
            "followup__CT__tumor__pyrad__x": f,
            "baseline__CT__tumor__qc__failed": False,
            "followup__CT__tumor__qc__failed": False,
        }
    )
    out = delta.add_deltas(table)
    assert "delta__CT__tumor__qc__failed" not in out
    np.testing.assert_allclose(out["delta__CT__tumor__pyrad__x"][:4], [10, 25, 4.7, 1])


def test_three_timepoints_give_changes_against_baseline_and_previous(tmp_path):
    """Every later timepoint against the baseline; with `previous` also against the timepoint
    before it, in time order from the validated sheet (median days), not name order."""
    table = pd.DataFrame(
        {
            "patient_id": ["A", "B"],
            "baseline__CT__tumor__pyrad__x": [10.0, 20.0],
            "week6__CT__tumor__pyrad__x": [8.0, 10.0],
            "end__CT__tumor__pyrad__x": [4.0, 5.0],
        }
    )
    samples = pd.DataFrame(
        {"timepoint": ["baseline", "week6", "end"] * 2, "days": [0, 42, 120, 0, 40, 130]}
    )
    io.write_table(samples, tmp_path / "s.tsv")
    order = delta.add_deltas(table, ["baseline", "week6", "end"], previous=True)
    assert list(order.columns[4:]) == [
        "delta-week6__CT__tumor__pyrad__x",
        "delta-end__CT__tumor__pyrad__x",
        "delta-end-from-week6__CT__tumor__pyrad__x",
        "reldelta-week6__CT__tumor__pyrad__x",
        "reldelta-end__CT__tumor__pyrad__x",
        "reldelta-end-from-week6__CT__tumor__pyrad__x",
    ]
    np.testing.assert_allclose(order["delta-end-from-week6__CT__tumor__pyrad__x"], [-4.0, -5.0])
    np.testing.assert_allclose(order["reldelta-end__CT__tumor__pyrad__x"], [-0.6, -0.75])
    from deltarad.features.table import chronological

    assert chronological(["end", "baseline", "week6"], tmp_path / "s.tsv") == [
        "baseline",
        "week6",
        "end",
    ]
    assert delta.delta_names("followup") == ("delta", "reldelta")


def test_complete_response_has_defined_shape_and_rings_around_the_bed(
    tiny_cohort_ro, settings, tmp_path
):
    """C2-003's follow-up mask is empty (the tumour vanished): size features 0, their relative
    change exactly -100 %, intensity/texture NA, rings around the baseline tumour's bed, flagged
    absent, and no failure row. On the tiny cohort the follow-up is not registered, so the bed
    is the baseline tumour on the follow-up's own grid; the centre shares one grid."""
    pid = "C2-003"
    scans = _scans(tiny_cohort_ro, pid)
    params = {**PARAMS, "featureClass": {"firstorder": ["Mean"], "shape": []}}  # all shape
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(params))
    settings = FeatureSettings(**{**settings.__dict__, "params": str(tmp_path / "all.yaml")})
    assert not sitk.GetArrayFromImage(io.read_image(scans["followup"][1])).any()
    sources = {"baseline": "given", "followup": "given"}
    write_patient(
        pid, scans, settings, tmp_path / "a.parquet", tmp_path / "a.tsv", {"CT": "CT"}, sources
    )
    table = merge_features(
        [tmp_path / "a.parquet"], [tmp_path / "a.tsv"], tmp_path / "f.parquet", tmp_path / "x.tsv"
    )
    row = table.iloc[0]
    for name in ("VoxelVolume", "MeshVolume", "Maximum3DDiameter", "SurfaceArea"):
        assert row[f"followup__CT__tumor__pyrad__original_shape_{name}"] == 0.0
        assert row[f"reldelta__CT__tumor__pyrad__original_shape_{name}"] == -1.0
        base = row[f"baseline__CT__tumor__pyrad__original_shape_{name}"]
        assert row[f"delta__CT__tumor__pyrad__original_shape_{name}"] == -base
    assert np.isnan(row["followup__CT__tumor__pyrad__original_shape_Sphericity"])
    assert "followup__CT__tumor__pyrad__original_firstorder_Mean" not in table.columns
    assert row["followup__CT__tumor__qc__absent"] and not row["baseline__CT__tumor__qc__absent"]
    assert not row["followup__CT__tumor__qc__failed"]
    assert row["followup__CT__tumor__qc__mask"] == "given"
    # The rings of the bed are the baseline tumour's rings (same grid, same tumour outline).
    ring = "CT__ring0to3mm__pyrad__original_shape_VoxelVolume"
    assert row[f"followup__{ring}"] == row[f"baseline__{ring}"] > 0
    assert not np.isnan(row["followup__CT__ring0to3mm__pyrad__original_firstorder_Mean"])
    assert io.read_tsv(tmp_path / "x.tsv").empty


def test_every_channel_is_measured_in_the_reference_regions(tiny_cohort_ro, settings, tmp_path):
    """A second channel of a timepoint (here the same image standing in for a co-registered PET)
    is measured in the regions drawn from the mask and the reference image: same image, same
    values, under its own channel name."""
    pid = "C1-002"
    scans = _scans(tiny_cohort_ro, pid)
    extra = {tp: {"PET": image} for tp, (image, _) in scans.items()}
    write_patient(
        pid,
        scans,
        settings,
        tmp_path / "a.parquet",
        tmp_path / "a.tsv",
        {"CT": "CT", "PET": "PET"},
        extra_images=extra,
    )
    row = pd.read_parquet(tmp_path / "a.parquet").iloc[0]
    ct = [c for c in row.index if "__CT__" in c and "__qc__" not in c]
    assert ct
    for col in ct:
        assert row[col.replace("__CT__", "__PET__", 1)] == row[col], col
    assert "followup__PET__tumor__qc__failed" in row.index
    assert "followup__PET__tumor__qc__mask" not in row.index  # the mask is the timepoint's
