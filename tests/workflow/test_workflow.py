"""The Snakefile end to end on the tiny cohort, in a temporary working directory."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS
from deltarad.qc import REGISTRATION_QC_COLUMNS
from tests.conftest import CONFIGS
from tests.workflow.conftest import RUN_CONFIGS, snakemake

pytestmark = pytest.mark.workflow


def test_tiny_workflow_writes_the_contract_outputs(finished_run, tiny_cohort_ro):
    results = finished_run / "results"
    samples = io.read_tsv(results / "tables/samples.validated.tsv")
    assert list(samples.columns) == SAMPLE_COLUMNS
    # Three timepoints and two channels (tests/workflow/longitudinal.yaml adds the mid-treatment
    # scan and a PET channel): the reference channel's row first, masks only on it.
    assert len(samples) == 36 and samples["patient_id"].nunique() == 6
    assert samples.groupby("patient_id")["timepoint"].agg(list).map(tuple).unique().tolist() == [
        ("baseline", "baseline", "mid", "mid", "followup", "followup")
    ]
    assert samples["channel"].tolist() == ["CT", "PET"] * 18
    assert samples.loc[samples["channel"] == "PET", "mask"].isna().all()
    assert samples["image"].str.startswith("results/cohort/images/").all()
    # The workflow's per-patient generation equals the serial CLI generation, byte for byte.
    for rel in ("images/C2-003/followup.nii.gz", "truth/latent.tsv", "clinical.tsv"):
        assert io.sha256(results / "cohort" / rel) == io.sha256(tiny_cohort_ro / rel), rel
    prov = json.loads((results / "provenance.json").read_text())
    assert prov["n_patients"] == 6
    assert "results/cohort/images/C1-001/baseline.nii.gz" in prov["inputs_sha256"]
    assert (results / "logs/validate_cohort.log").read_text().startswith("valid: 6 patients")


def test_registration_outputs_and_qc(finished_run):
    results = finished_run / "results"
    qc = io.read_tsv(results / "tables/registration_qc.tsv")
    assert list(qc.columns) == REGISTRATION_QC_COLUMNS
    assert REGISTRATION_QC_COLUMNS[:6] == [  # the output contract's columns come first
        "patient_id",
        "timepoint",
        "method",
        "tre_mm",
        "mask_dice",
        "seconds",
    ]
    # Every later scan (mid and followup) registered onto its baseline, scored against its truth.
    assert len(qc) == 12 and set(qc["timepoint"]) == {"mid", "followup"}
    tre = qc["tre_mm"].astype(float)
    assert tre.notna().all() and tre.median() < 3.0  # 1 voxel of the tiny cohort's 3 mm grid
    # Mask Dice where a non-empty later mask was drawn (C1-002, C1-003, and C2-003's mid); NA
    # where none was drawn (C1-001, C2-001, C2-002) or it is empty (C2-003's follow-up: complete
    # response).
    dice = qc.set_index(["patient_id", "timepoint"])["mask_dice"].astype(float)
    drawn = {(p, t) for p in ("C1-002", "C1-003", "C2-003") for t in ("mid", "followup")}
    scored = drawn - {("C2-003", "followup")}
    assert (dice[sorted(scored)] > 0.7).all() and dice.isna().sum() == 12 - len(scored)
    for pid, tp in qc[["patient_id", "timepoint"]].itertuples(index=False):
        base = io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz")
        reg = io.read_image(results / f"registered/{pid}/{tp}.nii.gz")
        assert io.Geometry.of(reg).mismatches(io.Geometry.of(base)) == []
        # The drawn later mask is propagated (QC); none is made up where none was drawn.
        assert (results / f"registered/{pid}/{tp}_mask.nii.gz").exists() == ((pid, tp) in drawn)
        assert (results / f"figures/qc/registration/{pid}_{tp}.png").is_file()


def test_features_table(finished_run):
    table = pd.read_parquet(finished_run / "results/features/features.parquet")
    assert len(table) == 6 and table.columns[0] == "patient_id"
    timepoints = {c.split("__")[0] for c in table.columns[1:]}
    assert timepoints == {
        "baseline", "mid", "followup",
        "delta", "reldelta",  # followup - baseline (the contract's names)
        "delta-mid", "reldelta-mid",  # mid - baseline
        "delta-followup-from-mid", "reldelta-followup-from-mid",  # features.delta_previous
    }  # fmt: skip
    assert "baseline__CT__tumor__pyrad__original_firstorder_Mean" in table.columns
    channels = {c.split("__")[1] for c in table.columns[1:]}
    assert channels == {"CT", "PET", "CT+PET"}  # CT+PET: the network's deep features


def test_every_scan_is_measured_with_its_mask_recorded(finished_run):
    """Real-study cases of the tiny cohort: a PET channel beside CT, follow-up masks missing
    (C1-001, C2-001, C2-002: predicted by the network), complete responses (C1-001, C2-002
    predicted; C2-003 an empty drawn mask). Every scan (patient, timepoint, channel) of the sheet
    has features, nothing else has, and the table says which mask each timepoint used."""
    results = finished_run / "results"
    samples = io.read_tsv(results / "tables/samples.validated.tsv")
    table = pd.read_parquet(results / "features/features.parquet").set_index("patient_id")
    scans = {
        (c.split("__")[0], c.split("__")[1])
        for c in table.columns
        if c.endswith("__pyrad__original_shape_VoxelVolume") and "delta" not in c
    }
    assert scans == set(zip(samples["timepoint"], samples["channel"], strict=True))
    masks = samples.groupby(["patient_id", "timepoint"])["mask"].first()
    for scan in samples.itertuples():
        source = table.loc[scan.patient_id, f"{scan.timepoint}__CT__tumor__qc__mask"]
        drawn = isinstance(masks[(scan.patient_id, scan.timepoint)], str)
        assert source == ("given" if drawn else "rpnet"), scan
        prefix = f"{scan.timepoint}__{scan.channel}"
        volume = table.loc[scan.patient_id, f"{prefix}__tumor__pyrad__original_shape_VoxelVolume"]
        assert volume >= 0, scan  # measured (0 for a vanished tumour), never NA
        ring = f"{prefix}__ring0to3mm__pyrad__original_firstorder_Mean"
        assert pd.notna(table.loc[scan.patient_id, ring]), scan
        assert not table.loc[scan.patient_id, f"{prefix}__ring0to3mm__qc__failed"], scan
    cr = table.loc["C2-003"]
    assert cr["followup__CT__tumor__qc__absent"] and not cr["followup__CT__tumor__qc__failed"]
    for channel in ("CT", "PET"):
        assert cr[f"followup__{channel}__tumor__pyrad__original_shape_VoxelVolume"] == 0
        assert cr[f"reldelta__{channel}__tumor__pyrad__original_shape_VoxelVolume"] == -1.0
    # The PET channel shows the response: uptake in the tumour falls from baseline to mid.
    pet = table["delta-mid__PET__tumor__pyrad__original_firstorder_Mean"].astype(float)
    assert (pet.dropna() < 0).mean() >= 0.5
    seg = io.read_tsv(results / "tables/segmentation_qc.tsv")
    given = seg["mask_given"] == "True"
    drawn = masks.notna()
    assert given.tolist() == [
        drawn[(p, t)] for p, t in zip(seg.patient_id, seg.timepoint, strict=True)
    ]
    assert seg.loc[~given, "dice"].isna().all()
    # Follow-ups without a drawn mask are scored against the synthetic truth.
    assert seg.loc[~given, "dice_true_geometry"].notna().all()


def test_models_metrics_table(finished_run):
    """The model stage ran on the tiny cohort: metrics.tsv has the contract columns."""
    metrics = io.read_tsv(finished_run / "results/tables/metrics.tsv")
    assert list(metrics.columns) == [
        "endpoint",
        "model",
        "feature_set",
        "evaluation",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
    ]
    assert set(metrics["evaluation"]) <= {"external:C2"}  # 3 training patients: external only
    assert "oracle" in set(metrics["feature_set"])


def test_segmentation_outputs(finished_run):
    """The default preset trains on the training centre and predicts every scan on its baseline
    grid; QC and network predictions follow the output contract."""
    results = finished_run / "results"
    model = results / "models/segmentation/rpnet"
    plan = json.loads((model / "plan.json").read_text())
    assert plan["preset"]["name"] == "rpnet" and plan["topology"]["patch_size"]
    split = json.loads((model / "splits.json").read_text())
    assert {p for p, s in split.items() if s == "test"} == {"C2-001", "C2-002", "C2-003"}
    assert set(plan["train_patients"]) | set(plan["validation_patients"]) == {
        "C1-001",
        "C1-002",
        "C1-003",
    }
    for pid in split:
        base = io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz")
        for tp in ("baseline", "mid", "followup"):  # every scan is predicted
            mask = io.read_image(results / f"segmentation/rpnet/{pid}/{tp}.nii.gz")
            assert io.Geometry.of(mask).mismatches(io.Geometry.of(base)) == []
    qc = io.read_tsv(results / "tables/segmentation_qc.tsv")
    assert list(qc.columns)[:5] == ["patient_id", "timepoint", "method", "dice", "hd95_mm"]
    given = qc["mask_given"] == "True"
    assert len(qc) == 18 and qc.loc[given, "dice"].astype(float).between(0, 1).all()
    assert qc.loc[~given, "dice"].isna().all()
    # True-geometry scores (synthetic truth through the true transform) for later scans only.
    later = qc["timepoint"] != "baseline"
    assert qc.loc[later, "dice_true_geometry"].astype(float).between(0, 1).all()
    assert qc.loc[~later, "dice_true_geometry"].isna().all()
    pred = io.read_tsv(results / "tables/network_predictions.tsv")
    assert list(pred.columns) == [
        "patient_id",
        "method",
        "response_probability",
        "risk_score",
        "split",
    ]
    assert len(pred) == 6 and pred["response_probability"].astype(float).between(0, 1).all()
    assert pred["risk_score"].astype(float).notna().all()


def planned_job_blocks(output: str) -> list[str]:
    """The job blocks of a (dry-)run's output: each starts with its timestamp line."""
    return re.split(r"\n(?=\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n)", output)


def test_segmentation_jobs_request_a_gpu_only_for_cuda(finished_run, tmp_path):
    """device: cuda makes training and prediction jobs declare gpu=1 (SLURM turns it into a
    gres/gpu request, tests/cluster); on this GPU-less machine `auto` declares none."""
    cuda = tmp_path / "cuda.yaml"
    cuda.write_text(yaml.safe_dump({"segmentation": {"device": "cuda"}}))
    # The device is not a training parameter (moving to a GPU must not retrain): force the plan.
    force = ("-n", "--forcerun", "segment_train")
    unforced = snakemake(finished_run, "-n", configs=(*RUN_CONFIGS, cuda))
    assert unforced.returncode == 0 and "rule segment_train:" not in unforced.stdout
    plan = snakemake(finished_run, *force, configs=(*RUN_CONFIGS, cuda))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = planned_job_blocks(plan.stdout)
    train = [j for j in jobs if "rule segment_train:" in j]
    predict = [j for j in jobs if "rule segment_predict:" in j]
    assert train and predict
    assert all("gpu=1" in j for j in train + predict)
    merge = [j for j in jobs if "rule features_merge:" in j]
    assert merge and not any("gpu=1" in j for j in merge)
    auto = snakemake(finished_run, *force)
    assert "gpu=0" in auto.stdout and "gpu=1" not in auto.stdout


def test_predicted_masks_feed_the_features_when_asked(finished_run, tmp_path):
    predicted = tmp_path / "predicted.yaml"
    predicted.write_text(yaml.safe_dump({"segmentation": {"masks": "predicted"}}))
    plan = snakemake(finished_run, "-n", configs=(*RUN_CONFIGS, predicted))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = [j for j in planned_job_blocks(plan.stdout) if "rule features_patient:" in j]
    assert len(jobs) == 6
    assert all("segmentation/rpnet/" in j and "_mask.nii.gz" not in j for j in jobs)
    assert "rule segment_train:" not in plan.stdout  # the masks exist: nothing retrains


def test_nnunet_backend_jobs_and_pretrained_model(finished_run, tmp_path):
    """`nnunet` adds export -> plan -> train -> predict (all scans) and its masks to the QC; a
    pretrained model folder skips export, planning and training. (The backend itself runs end
    to end in tests/unit/segment/test_nnunet.py.)"""
    nnunet = tmp_path / "nnunet.yaml"
    nnunet.write_text(yaml.safe_dump({"segmentation": {"methods": ["rpnet", "nnunet"]}}))
    plan = snakemake(finished_run, "-n", configs=(*RUN_CONFIGS, nnunet))
    assert plan.returncode == 0, plan.stderr[-3000:]
    for rule in ("nnunet_export", "nnunet_plan", "nnunet_train", "nnunet_predict"):
        assert f"rule {rule}:" in plan.stdout, rule
    assert "segmentation/nnunet/C2-003/followup.nii.gz" in plan.stdout
    assert "rule segment_train:" not in plan.stdout  # rpnet is untouched
    pretrained = tmp_path / "pretrained.yaml"
    pretrained.write_text(
        yaml.safe_dump(
            {"segmentation": {"methods": ["rpnet", "nnunet"], "nnunet": {"pretrained": "m"}}}
        )
    )
    target = "results/tables/segmentation_qc.tsv"
    plan = snakemake(finished_run, "-n", target, configs=(*RUN_CONFIGS, pretrained))
    assert plan.returncode != 0  # the model folder "m" does not exist
    assert "rule nnunet_train:" not in plan.stdout and "rule nnunet_export:" not in plan.stdout
    text = plan.stdout + plan.stderr
    assert "MissingInputException in rule nnunet_predict" in text
    assert "m/fold_0/checkpoint_final.pth" in text


def test_gate_drops_patients_and_the_rest_finish(finished_run, tmp_path):
    """Tightening the gate re-runs the QC aggregation and what depends on who passed (network
    training, predictions, features merge, models), never registration; drops the patients
    beyond it from the feature table and from training."""
    qc = io.read_tsv(finished_run / "results/tables/registration_qc.tsv")
    displacement = qc["max_displacement_mm"].astype(float)
    worst = displacement.groupby(qc["patient_id"]).max().sort_values()
    # Drop the training centre's (C1) worst patient and any external patient worse than the
    # second worst of C1: the network still has 2 patients to train on (no validation share).
    c1 = worst[worst.index.str.startswith("C1")]
    threshold = float((c1.iloc[-2] + c1.iloc[-1]) / 2)
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        yaml.safe_dump(
            {
                "registration": {"gate": {"max_displacement_mm": threshold}},
                "segmentation": {"validation_fraction": 0.0},
            }
        )
    )
    configs = (*RUN_CONFIGS, strict)
    plan = snakemake(finished_run, "-n", configs=configs)
    assert plan.returncode == 0
    assert "register " not in plan.stdout and "registration_qc" in plan.stdout
    result = snakemake(finished_run, configs=configs)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = io.read_tsv(finished_run / "results/tables/failures.tsv")
    # (The network retrained on 2 patients may also leave feature-stage rows: rings of its
    # oversized masks with too few voxels.)
    failures = failures[failures["stage"] == "registration"]
    expected = sorted(worst.index[worst > threshold])
    # Listed once per patient, whichever of its later scans failed.
    assert sorted(failures["patient_id"]) == expected and c1.index[-1] in expected
    assert failures["error"].str.contains("exceeds registration.gate.max_displacement_mm").all()
    split = json.loads((finished_run / "results/models/segmentation/rpnet/splits.json").read_text())
    training = [p for p in expected if not p.startswith("C2")]  # C2 is external
    assert all(split[p] == "excluded" for p in training)
    table = io.read_tsv(finished_run / "results/tables/registration_qc.tsv")
    assert sorted(set(table.loc[table["passed"] == "False", "patient_id"])) == expected
    # Back to the default gate for the tests that follow.
    assert snakemake(finished_run).returncode == 0


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_bad_user_sheets_stop_before_compute_listing_every_problem(tiny_cohort, tmp_path):
    samples = io.read_tsv(tiny_cohort / "samples.tsv")
    samples.loc[0, "image"] = "images/C1-001/missing.nii.gz"
    mask = io.read_image(tiny_cohort / samples.loc[2, "mask"])
    mask.SetOrigin((0.0, 0.0, 0.0))
    io.write_image(mask, tiny_cohort / samples.loc[2, "mask"])
    samples = pd.concat([samples, samples.iloc[[4]]], ignore_index=True)
    io.write_table(samples, tiny_cohort / "samples.tsv")
    user = tmp_path / "study.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "cohort": {
                    "source": "sheets",
                    "samples": str(tiny_cohort / "samples.tsv"),
                    "clinical": str(tiny_cohort / "clinical.tsv"),
                },
                "study": {"centers": ["C1", "C2"], "external_centers": ["C2"]},
            }
        )
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(workdir, configs=(CONFIGS[0], user))
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "3 problem(s)" in out
    assert "patient C1-001, timepoint baseline, channel CT, column 'image': file not found" in out
    assert (
        "patient C1-002, timepoint baseline, channel CT, column 'mask': mask grid differs from "
        "the image in origin" in out
    )
    assert "patient C1-003, timepoint baseline, channel CT, column 'channel': duplicate" in out
    assert not (workdir / "results/provenance.json").exists()
    assert not (workdir / "results/tables/samples.validated.tsv").exists()


def test_invalid_config_fails_at_parse_time(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic: {contrast: US}\n")
    result = snakemake(tmp_path, "-n", configs=(CONFIGS[0], bad))
    assert result.returncode != 0
    assert "contrast" in result.stdout + result.stderr
