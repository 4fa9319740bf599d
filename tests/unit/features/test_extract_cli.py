"""`deltarad extract`: one scan outside Snakemake."""

from __future__ import annotations

import pandas as pd

from deltarad.cli import main


def test_extract_writes_one_row_per_region(tiny_cohort_ro, tmp_path, capsys):
    out = tmp_path / "scan.csv"
    image = tiny_cohort_ro / "images/C1-001/baseline.nii.gz"
    mask = tiny_cohort_ro / "masks/C1-001/baseline.nii.gz"
    rc = main(
        [
            "extract",
            "--image",
            str(image),
            "--mask",
            str(mask),
            "--params",
            "config/radiomics/ibsi.yaml",
            "--rings",
            "0-3,3-6,200-300",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table["region"]) == ["tumor", "ring0to3mm", "ring3to6mm", "ring200to300mm"]
    assert table["error"].isna().tolist() == [True, True, True, False]
    assert table.loc[0, "original_shape_VoxelVolume"] > 0
    assert pd.isna(table.loc[3, "original_glcm_Contrast"])
    assert "ring200to300mm has 0 voxels" in capsys.readouterr().err


def test_extract_reports_bad_rings_without_a_traceback(tiny_cohort_ro, tmp_path, capsys):
    image = tiny_cohort_ro / "images/C1-001/baseline.nii.gz"
    rc = main(
        [
            "extract",
            "--image",
            str(image),
            "--mask",
            str(image),
            "--rings",
            "6-3",
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    assert rc == 1 and "inner < outer" in capsys.readouterr().err
