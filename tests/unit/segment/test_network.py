"""DeltaRad's multi-task network: losses against references, Siamese weight sharing, training,
resume, inference outputs, and clear errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.layout import scan_paths
from deltarad.runlog import UserError
from deltarad.segment.data import PairCase
from deltarad.segment.infer import predict_mask, resolve_device
from deltarad.segment.losses import cox_loss, partial_log_likelihood
from deltarad.segment.network import LongitudinalNet
from deltarad.segment.plan import Preset, plan_topology
from deltarad.segment.stage import hd95, split_patients
from deltarad.segment.train import train_network

SETTINGS = {
    "training": {
        "epochs": 4,
        "iterations_per_epoch": 4,
        "batch_size": 2,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "momentum": 0.9,
        "weight_decay": 3e-5,
        "mixed_precision": False,
        "deterministic": False,
        "foreground_oversampling": 0.5,
    },
    "network": {
        "max_patch": [16, 16, 16],
        "base_features": 4,
        "max_features": 16,
        "min_feature_map": 4,
        "deep_supervision": 2,
    },
    "augmentation": {
        "affine_prob": 0.0,
        "rotate_deg": 0,
        "scale": 0,
        "flip_prob": 0.5,
        "noise_prob": 0.1,
        "noise_std": 0.05,
        "intensity_prob": 0.1,
        "intensity_scale": 0.1,
        "gamma_prob": 0.0,
        "blur_prob": 0.2,
        "blur_sigma": [0.5, 1.0],
        "lowres_prob": 0.2,
        "lowres_zoom": [0.5, 1.0],
    },
}
SEG_OUTCOME = Preset("multi", ("segmentation", "response", "survival"), "both", 2, {})


# ---- losses -----------------------------------------------------------------------------------


def test_cox_loss_equals_lifelines_partial_likelihood_with_ties_and_censoring():
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    time = np.round(rng.exponential(np.exp(-0.8 * x)) * 4) + 1  # rounded: many tied times
    event = (rng.random(40) < 0.7).astype(float)
    assert pd.Series(time[event > 0]).duplicated().any()  # the example has tied event times
    df = pd.DataFrame({"x": x, "time": time, "event": event})
    cph = lifelines.CoxPHFitter().fit(df, "time", "event")  # Efron ties, unpenalised
    beta = float(cph.params_["x"])
    ours = partial_log_likelihood(beta * x, time, event)
    assert ours == pytest.approx(cph.log_likelihood_, rel=1e-7)
    # Shifting all risks leaves a partial likelihood unchanged.
    assert partial_log_likelihood(beta * x + 5.0, time, event) == pytest.approx(ours, rel=1e-9)


def test_cox_loss_ignores_patients_without_survival_data():
    risk = torch.tensor([0.3, -0.2, 1.0, 0.5], dtype=torch.float64)
    time = torch.tensor([2.0, 3.0, float("nan"), 5.0])
    event = torch.tensor([1.0, 0.0, 1.0, 1.0])
    full = cox_loss(risk, time, event)
    assert torch.isfinite(full)
    assert float(full) == pytest.approx(
        float(cox_loss(risk[[0, 1, 3]], time[[0, 1, 3]], event[[0, 1, 3]]))
    )


def test_sliding_window_covers_a_volume_that_is_no_multiple_of_the_patch():
    from deltarad.segment.infer import sliding_window

    vol = np.random.default_rng(0).normal(size=(2, 13, 18, 21)).astype("f4")
    out = sliding_window(lambda x: x, vol, np.array([8, 8, 8]), torch.device("cpu"))
    np.testing.assert_allclose(out, vol, atol=1e-5)
    small = sliding_window(
        lambda x: x * 2, vol[:, :5, :6, :7], np.array([8, 8, 8]), torch.device("cpu")
    )
    np.testing.assert_allclose(small, 2 * vol[:, :5, :6, :7], atol=1e-5)  # padded, cropped back


def test_cox_loss_without_events_is_zero_and_differentiable():
    risk = torch.zeros(3, requires_grad=True)
    loss = cox_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    loss.backward()
    assert float(loss.detach()) == 0.0


# ---- network ----------------------------------------------------------------------------------


def small_plan():
    return plan_topology(
        [(16, 16, 16)], (2.0, 2.0, 2.0), {"MR": "MR"}, [np.empty(0)], (16, 16, 16), 4, 16
    )


def test_plan_follows_nnunet_rules_on_anisotropic_spacing():
    plan = plan_topology(
        [(20, 64, 64), (24, 60, 60)], (5.0, 1.0, 1.0), {"CT": "CT"}, [np.arange(100.0)],
        (32, 64, 64), 8, 64,
    )  # fmt: skip
    assert plan.strides[1] == [1, 2, 2]  # the 5 mm axis is not pooled until in-plane catches up
    assert plan.kernels[0] == [1, 3, 3]
    assert all(p % d == 0 for p, d in zip(plan.patch_size, plan.divisor, strict=False))
    assert plan.features == sorted(plan.features) and max(plan.features) <= 64
    assert plan.normalizations[0]["scheme"] == "ct" and plan.channels == ["CT"]


def test_siamese_encoder_shares_weights():
    torch.manual_seed(0)
    net = LongitudinalNet(small_plan(), SEG_OUTCOME).eval()
    names = [n for n, _ in net.named_parameters()]
    assert not any("follow" in n or "base" in n for n in names)  # one encoder, not two
    a, b = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ab, ba = net(a, b), net(b, a)
    # Swapping the timepoints swaps the per-timepoint segmentations exactly.
    assert torch.allclose(ab.seg[0][0], ba.seg[1][0], atol=1e-5)
    assert torch.allclose(ab.seg[1][0], ba.seg[0][0], atol=1e-5)
    # Both timepoints' losses reach the same encoder weights.
    out = net.train()(a, b)
    out.seg[1][0].sum().backward()
    assert net.encoder.stages[0][0].weight.grad.abs().sum() > 0


# ---- training and inference on small synthetic pairs --------------------------------------------


def blob_pair(root, pid, rng, radius):
    """A bright sphere on noise at baseline, a smaller one at follow-up (same grid)."""
    grid = np.indices((16, 16, 16)).astype(float)
    centre = rng.uniform(6, 10, size=3)
    paths = {}
    for tp, r in (("baseline", radius), ("followup", radius * 0.7)):
        dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        mask = (dist <= r).astype(np.uint8)
        image = 100.0 * mask + rng.normal(0, 15, mask.shape)
        for kind, arr in (("image", image.astype(np.float32)), ("mask", mask)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((2.0, 2.0, 2.0))
            paths[(tp, kind)] = io.write_image(img, root / pid / f"{tp}_{kind}.nii.gz")
    return paths


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(7)
    cases = []
    for i in range(5):
        p = blob_pair(root, f"P{i}", rng, radius=rng.uniform(3.5, 5))
        cases.append(
            PairCase(
                f"P{i}",
                "followup",
                p[("baseline", "image")],
                p[("followup", "image")],
                p[("baseline", "mask")],
                p[("followup", "mask")],
                response=float(i % 2),
                time=float(10 + i),
                event=float(i % 3 != 0),
            )  # fmt: skip
        )
    return cases


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    train_network(pairs[:4], pairs[4:], SEG_OUTCOME, "MR", SETTINGS, out, "cpu", seed=1)
    return out


def test_training_reduces_the_loss_and_writes_model_files(trained):
    history = pd.read_csv(trained / "training_log.tsv", sep="\t")
    assert len(history) == SETTINGS["training"]["epochs"]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert history["val_dice"].notna().all()
    for name in ("plan.json", "checkpoint_final.pt", "checkpoint_latest.pt"):
        assert (trained / name).exists()


def test_predicted_mask_is_binary_on_the_input_grid(trained, pairs, tmp_path):
    case = pairs[4]
    out = predict_mask(trained, case, False, tmp_path / "f.nii.gz", "cpu")
    mask, image = io.read_image(out), io.read_image(case.follow_image)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert mask.GetOrigin() == image.GetOrigin() and mask.GetDirection() == image.GetDirection()


def test_killed_training_resumes_where_it_stopped(pairs, tmp_path, monkeypatch):
    import deltarad.segment.train as train_mod

    settings = {**SETTINGS, "training": {**SETTINGS["training"], "epochs": 3}}
    calls = {"n": 0}
    real = train_mod.validation_dice

    def die_after_two_epochs(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for SIGKILL during epoch 3
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "validation_dice", die_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_network(
            pairs[:4], pairs[4:], SEG_OUTCOME, "MR", settings, tmp_path / "k", "cpu", seed=3
        )
    assert not (tmp_path / "k/checkpoint_final.pt").exists()  # nothing looks complete
    monkeypatch.setattr(train_mod, "validation_dice", real)
    train_network(pairs[:4], pairs[4:], SEG_OUTCOME, "MR", settings, tmp_path / "k", "cpu", seed=3)
    train_network(pairs[:4], pairs[4:], SEG_OUTCOME, "MR", settings, tmp_path / "u", "cpu", seed=3)
    resumed = pd.read_csv(tmp_path / "k/training_log.tsv", sep="\t")
    # Changed data under the same IDs: the latest checkpoint is not reused (training restarts).
    changed = [replace(pairs[0], response=1.0 - pairs[0].response), *pairs[1:4]]
    train_network(changed, pairs[4:], SEG_OUTCOME, "MR", settings, tmp_path / "k", "cpu", seed=3)
    restarted = pd.read_csv(tmp_path / "k/training_log.tsv", sep="\t")
    assert list(restarted["epoch"]) == [1, 2, 3] and not restarted["loss"].equals(resumed["loss"])
    straight = pd.read_csv(tmp_path / "u/training_log.tsv", sep="\t")
    assert list(resumed["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), straight.drop(columns="seconds"))


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="'cuda' but torch sees no GPU"):
        resolve_device("cuda")


def test_too_few_training_patients_is_a_clear_error(pairs, tmp_path):
    with pytest.raises(UserError, match="need at least 2"):
        train_network(pairs[:1], [], SEG_OUTCOME, "MR", SETTINGS, tmp_path, "cpu")
    samples = pd.DataFrame({"patient_id": ["A", "B", "C"], "center": ["C1", "C1", "C2"]})
    with pytest.raises(UserError, match="1 training patient"):
        split_patients(samples, ["C2"], 0.5, 0)


def test_split_keeps_patients_whole_and_external_centres_out():
    samples = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(12) for _ in (0, 1)],
         "center": [f"C{i % 3}" for i in range(12) for _ in (0, 1)]}
    )  # fmt: skip
    split = split_patients(samples, ["C2"], 0.25, 0)
    assert {p for p, s in split.items() if s == "test"} == {f"P{i}" for i in range(2, 12, 3)}
    assert sum(s == "val" for s in split.values()) == 2  # one per training centre
    assert split == split_patients(samples, ["C2"], 0.25, 0)  # seeded


def test_hd95_matches_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:12, 5:12, 5:12] = True
    b[6:14, 5:12, 4:12] = True
    spacing = (2.0, 1.0, 1.0)
    ref = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None],
        percentile=95, spacing=spacing,
    )  # fmt: skip
    assert hd95(a, b, spacing) == pytest.approx(float(ref), rel=1e-6)
    assert math.isnan(hd95(a, np.zeros_like(a), spacing))


# ---- outcome window ---------------------------------------------------------------------------


def test_crop_at_centres_the_window_and_stays_inside_the_image():
    from deltarad.segment.data import crop_at

    image = np.arange(20 * 20 * 20, dtype=np.float32).reshape(1, 20, 20, 20)
    window = crop_at({"base": image}, np.array([8, 8, 8]), np.array([10, 10, 10]))["base"][0]
    assert window.shape == (8, 8, 8) and window[4, 4, 4] == image[0, 10, 10, 10]
    corner = crop_at({"base": image}, np.array([8, 8, 8]), np.array([0, 19, 1]))["base"][0]
    np.testing.assert_array_equal(corner, image[0, 0:8, 12:20, 0:8])
    # Smaller than the patch: padded with the image minimum, the centre still maps through.
    small = crop_at({"base": image[:, :4, :4, :4]}, np.array([8, 8, 8]), np.array([1, 1, 1]))
    assert small["base"].shape == (1, 8, 8, 8) and small["base"].min() == 0
    # Channels: the same window of each, every channel padded with its own minimum.
    two = np.stack([image[0, :4, :4, :4], 1000.0 + image[0, :4, :4, :4]])
    both = crop_at({"base": two}, np.array([8, 8, 8]), np.array([1, 1, 1]))["base"]
    assert both.shape == (2, 8, 8, 8) and both[1].min() == 1000.0
    np.testing.assert_array_equal(both[1] - 1000.0, both[0])


def test_outcome_window_follows_the_predicted_tumour():
    from deltarad.segment.data import LoadedPair
    from deltarad.segment.infer import roi_centre

    shape = (30, 30, 30)
    prob = np.zeros(shape, np.float32)
    prob[4:8, 20:24, 10:14] = 0.9  # predicted baseline tumour, centroid (5.5, 21.5, 11.5)
    pair = LoadedPair(None, np.zeros((1, *shape)), np.zeros((1, *shape)), None, None, None)
    assert roi_centre(pair, (prob, np.zeros(shape))).tolist() == [6, 22, 12]
    # Nothing above 0.5 at baseline: the follow-up's tumour; nowhere: the most likely voxel.
    assert roi_centre(pair, (np.zeros(shape), prob)).tolist() == [6, 22, 12]
    faint = np.zeros(shape, np.float32)
    faint[3, 4, 5] = 0.2
    assert roi_centre(pair, (faint, faint)).tolist() == [3, 4, 5]
    # A network without segmentation head: the given baseline mask, else the image centre.
    given = replace(pair, base_mask=(prob > 0).astype(np.float32))
    assert roi_centre(given, None).tolist() == [6, 22, 12]
    assert roi_centre(pair, None).tolist() == [15, 15, 15]


def test_one_scan_prediction_equals_the_pair_prediction(trained, pairs):
    from deltarad.segment.data import load_pair
    from deltarad.segment.infer import load_model, predict_pair, segment_image

    net, plan, _ = load_model(trained, torch.device("cpu"))
    pair = load_pair(pairs[4], plan, need_masks=False)
    both = predict_pair(net, plan, pair, torch.device("cpu"), outcome=False)
    alone = segment_image(net, plan, pair.follow, torch.device("cpu"))
    np.testing.assert_allclose(alone, both.follow_prob, atol=1e-5)


def test_masks_read_only_the_tumour_label(pairs, tmp_path):
    """A mask holding the tumour (label 2) and an organ (label 5): only label 2 is tumour."""
    from deltarad.segment.data import load_pair

    case = pairs[0]
    paths = {}
    for key in ("base_mask", "follow_mask"):
        tumour = sitk.GetArrayFromImage(io.read_image(getattr(case, key)))
        labels = np.where(tumour > 0, 2, 0).astype(np.uint8)
        labels[:3] = 5  # an organ slab away from the tumour
        img = sitk.GetImageFromArray(labels)
        img.CopyInformation(io.read_image(getattr(case, key)))
        paths[key] = io.write_image(img, tmp_path / f"{key}.nii.gz")
    pair = load_pair(replace(case, label=2, **paths), None, need_masks=True)
    truth = sitk.GetArrayFromImage(io.read_image(case.base_mask)) > 0
    np.testing.assert_array_equal(pair.base_mask > 0, truth & (np.arange(16) >= 3)[:, None, None])
    assert pair.base_mask[:3].sum() == 0 and set(np.unique(pair.follow_mask)) <= {0.0, 1.0}


def test_outcome_window_centre_matches_the_pair_prediction(trained, pairs):
    from deltarad.segment.data import load_pair
    from deltarad.segment.infer import load_model, outcome_centre, predict_pair, roi_centre

    net, plan, _ = load_model(trained, torch.device("cpu"))
    pair = load_pair(replace(pairs[4], base_mask=None, follow_mask=None), plan, need_masks=False)
    both = predict_pair(net, plan, pair, torch.device("cpu"))
    expected = roi_centre(pair, (both.base_prob, both.follow_prob))
    assert outcome_centre(net, plan, pair, torch.device("cpu")).tolist() == expected.tolist()


def test_segmentation_qc_scores_the_label_and_the_true_geometry(pairs, tmp_path):
    from deltarad.segment.stage import qc_records, segmentation_qc

    case = pairs[1]
    truth = io.read_image(case.follow_mask)
    arr = sitk.GetArrayFromImage(truth)
    labelled = sitk.GetImageFromArray(np.where(arr > 0, 3, 0).astype(np.uint8))
    labelled.CopyInformation(truth)
    organ = arr.copy()
    organ[:2] = 7  # another label in the reference: not tumour
    ref = sitk.GetImageFromArray(np.where(arr > 0, 3, organ).astype(np.uint8))
    ref.CopyInformation(truth)
    shifted = sitk.GetImageFromArray(np.roll(arr, 2, axis=2))  # a registration error of 2 voxels
    shifted.CopyInformation(truth)
    named = {
        "pred__rpnet__P1__followup": io.write_image(truth, tmp_path / "pred.nii.gz"),
        "ref__P1__followup": io.write_image(ref, tmp_path / "ref.nii.gz"),
        "true__P1__followup": io.write_image(shifted, tmp_path / "true.nii.gz"),
        "pred__rpnet__P1__baseline": io.write_image(truth, tmp_path / "pred_b.nii.gz"),
        "ref__P1__baseline": io.write_image(labelled, tmp_path / "ref_b.nii.gz"),
    }
    qc = segmentation_qc(qc_records(named), label=3).set_index("timepoint")
    assert qc.loc["baseline", "dice"] == 1.0 and math.isnan(
        qc.loc["baseline", "dice_true_geometry"]
    )
    assert qc.loc["followup", "dice"] == 1.0  # label 7 (organ) is not counted
    assert 0 < qc.loc["followup", "dice_true_geometry"] < 1
    assert qc["mask_given"].all()
    # A scan without a drawn mask: no reference, only the true geometry (synthetic truth).
    del named["ref__P1__followup"]
    qc = segmentation_qc(qc_records(named), label=3).set_index("timepoint")
    assert math.isnan(qc.loc["followup", "dice"]) and not qc.loc["followup", "mask_given"]
    assert 0 < qc.loc["followup", "dice_true_geometry"] < 1


def test_unlabelled_timepoints_add_no_segmentation_loss():
    """Rows of a batch whose timepoint has no drawn mask are left out of that timepoint's loss
    (nnU-Net's ignore handling); a timepoint with no labelled row adds nothing."""
    from deltarad.segment.losses import deep_supervision_loss
    from deltarad.segment.train import labelled_loss

    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn(3, 1, 8, 8, 8, generator=gen), torch.randn(3, 1, 4, 4, 4, generator=gen)]
    target = (torch.rand(3, 1, 8, 8, 8, generator=gen) > 0.7).float()
    some = torch.tensor([1.0, 0.0, 1.0])
    expected = deep_supervision_loss([o[[0, 2]] for o in outputs], target[[0, 2]])
    assert torch.allclose(labelled_loss(outputs, target, some), expected)
    assert torch.allclose(
        labelled_loss(outputs, target, torch.ones(3)), deep_supervision_loss(outputs, target)
    )
    assert labelled_loss(outputs, target, torch.zeros(3)) is None


def test_training_with_unlabelled_followups(pairs, tmp_path):
    """Follow-ups without a drawn mask train the network through their baselines only; Dice is
    followed on labelled timepoints only."""
    cases = [replace(c, follow_mask=None) if i % 2 else c for i, c in enumerate(pairs)]
    meta = train_network(cases[:4], cases[4:], SEG_OUTCOME, "MR", SETTINGS, tmp_path, "cpu", seed=1)
    history = pd.read_csv(tmp_path / "training_log.tsv", sep="\t")
    assert np.isfinite(history["segmentation"]).all() and history["val_dice"].notna().all()
    assert meta["validation_scan_dice"] is not None
    # A segmenting preset needs patients with masks; outcome-only presets do not.
    bare = [replace(c, base_mask=None, follow_mask=None) for c in pairs]
    with pytest.raises(UserError, match="need at least 2"):
        train_network(bare[:4], [], SEG_OUTCOME, "MR", SETTINGS, tmp_path / "b", "cpu")


def test_split_leaves_registration_failures_out():
    samples = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(8)], "center": ["C1"] * 6 + ["C2"] * 2}
    )
    split = split_patients(samples, ["C2"], 0.2, 0, excluded={"P1", "P6"})
    assert split["P1"] == "excluded" and split["P6"] == "test"  # external: never trained on
    assert sum(s in ("train", "val") for s in split.values()) == 5


# ---- several channels per timepoint (CT + PET) -------------------------------------------------

STUDY_CHANNELS = {"CT": "CT", "PET": "PET"}  # channel -> modality, the registration reference first


def write_two_channel_study(root, n_patients: int = 4):
    """A CT + PET study's results tree: each patient's baseline (preprocessed) and follow-up
    (registered) images of both channels and their masks where scan_paths puts them; the
    validated samples table (one row per scan x channel; a scan's mask on one of its rows) and
    the clinical sheet."""
    results = root / "results"
    rng = np.random.default_rng(11)
    grid = np.indices((16, 16, 16)).astype(float)
    rows, clinical = [], []
    for i in range(n_patients):
        pid = f"P{i}"
        centre = rng.uniform(6, 10, size=3)
        for tp, days, radius in (("baseline", 0, 4.5), ("followup", 90, 3.5)):
            inside = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) <= radius
            arrays = {
                "CT": 100.0 * inside + rng.normal(0, 15, inside.shape),
                "PET": 8.0 * inside + rng.gamma(2.0, 0.5, inside.shape),  # another scale
            }
            mask_path = scan_paths(results, pid, tp)[1]
            for channel, array in arrays.items():
                img = sitk.GetImageFromArray(array.astype(np.float32))
                img.SetSpacing((2.0, 2.0, 2.0))
                path = scan_paths(results, pid, tp, None if channel == "CT" else channel)[0]
                io.write_image(img, path)
                # The follow-up masks were drawn on PET, the baseline ones on CT.
                drawn = (channel == "CT") == (tp == "baseline")
                rows.append([pid, "C1", tp, days, STUDY_CHANNELS[channel], channel, str(path),
                             str(mask_path) if drawn else ""])  # fmt: skip
            mask = sitk.GetImageFromArray(inside.astype(np.uint8))
            mask.SetSpacing((2.0, 2.0, 2.0))
            io.write_image(mask, mask_path)
        clinical.append([pid, float(i % 2), 10.0 + i, float(i % 3 != 0)])
    columns = ["patient_id", "center", "timepoint", "days", "modality", "channel", "image", "mask"]
    samples = io.write_table(pd.DataFrame(rows, columns=columns), root / "samples.tsv")
    table = pd.DataFrame(clinical, columns=["patient_id", "response", "time", "event"])
    return results, samples, io.write_table(table, root / "clinical.tsv")


def test_pair_cases_take_the_reference_rows_and_stack_the_other_channels(tmp_path):
    from deltarad.segment.data import ExtraChannel
    from deltarad.segment.stage import input_channels, pair_cases, patient_channels

    results, samples_path, _ = write_two_channel_study(tmp_path, n_patients=2)
    samples = io.read_tsv(samples_path)
    cases = pair_cases(results, samples, ["P0", "P1"], None, extra_channels=["PET"])
    assert [(c.patient_id, c.timepoint) for c in cases] == [("P0", "followup"), ("P1", "followup")]
    case = cases[0]
    assert case.base_image == scan_paths(results, "P0", "baseline")[0]
    assert case.extra == (
        ExtraChannel(
            "PET",
            scan_paths(results, "P0", "baseline", "PET")[0],
            scan_paths(results, "P0", "followup", "PET")[0],
        ),
    )
    assert case.follow_images[1].name == "followup__PET.nii.gz"
    # A mask drawn on any row of a scan (here the follow-up's PET row) labels the scan.
    assert case.base_mask is not None and case.follow_mask is not None
    assert input_channels(samples, ["PET"]) == STUDY_CHANNELS
    assert patient_channels(samples, "P1", ["PET"]) == ["CT", "PET"]
    # Training needs the channels the cases carry.
    with pytest.raises(UserError, match=r"P0 has the channels \['PET'\] .* trained on \['CT'\]"):
        train_network(cases, [], SEG_OUTCOME, "CT", SETTINGS, tmp_path / "m", "cpu")


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory):
    """A CT + PET network trained through the workflow's entry point (2 epochs x 2 iterations)."""
    from deltarad.segment.stage import run_training

    root = tmp_path_factory.mktemp("two_channels")
    results, samples, clinical = write_two_channel_study(root)
    seg_config = {
        **SETTINGS,
        "training": {**SETTINGS["training"], "epochs": 2, "iterations_per_epoch": 2},
        "augmentation": {**SETTINGS["augmentation"], "affine_prob": 0.5, "rotate_deg": 10,
                         "scale": 0.1, "gamma_prob": 0.5, "intensity_prob": 0.5},
        "seed": 0,
        "validation_fraction": 0.25,
        "presets": {"all": {"heads": ["segmentation", "response", "survival", "reconstruction"],
                            "outcome_scales": 2}},
    }  # fmt: skip
    out = results / "models/segmentation/all"
    meta = run_training("all", seg_config, results, samples, clinical, [], out, device="cpu",
                        extra_channels=["PET"])  # fmt: skip
    return {"results": results, "samples": samples, "model": out, "meta": meta}


def test_two_channel_network_reads_both_channels(two_channel_model):
    from deltarad.segment.infer import load_model

    topology = json.loads((two_channel_model["model"] / "plan.json").read_text())["topology"]
    assert topology["channels"] == ["CT", "PET"] and topology["modalities"] == ["CT", "PET"]
    ct, pet = topology["normalizations"]
    assert ct["scheme"] == "ct" and 50 < ct["clip_low"] < ct["mean"] < ct["clip_high"] < 200
    assert pet == {"scheme": "zscore"}  # each channel by its own modality
    net, plan, _ = load_model(two_channel_model["model"], torch.device("cpu"), ["CT", "PET"])
    assert net.encoder.stages[0][0].weight.shape[1] == 2  # in_channels
    assert net.reconstructor.outputs[0].weight.shape[0] == 2  # rebuilds both channels
    history = pd.read_csv(two_channel_model["model"] / "training_log.tsv", sep="\t")
    assert len(history) == 2 and np.isfinite(history["loss"]).all()


def test_two_channel_prediction_and_mismatched_channels(two_channel_model, tmp_path):
    from deltarad.segment.stage import network_predictions, run_prediction

    results, samples = two_channel_model["results"], two_channel_model["samples"]
    model = two_channel_model["model"]
    out = run_prediction(model, "P3", "followup", results, samples, tmp_path / "m.nii.gz",
                         device="cpu", extra_channels=["PET"])  # fmt: skip
    mask, image = io.read_image(out), io.read_image(scan_paths(results, "P3", "followup")[0])
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert io.Geometry.of(mask) == io.Geometry.of(image)
    table = network_predictions(["all"], results, samples, "cpu", extra_channels=["PET"])
    assert table["patient_id"].tolist() == ["P0", "P1", "P2", "P3"]
    assert table["response_probability"].between(0, 1).all() and table["risk_score"].notna().all()
    # The study without PET (or with its channels in another order) cannot use this network.
    with pytest.raises(UserError, match=r"reads the channels \['CT', 'PET'\].*study has \['CT'\]"):
        run_prediction(model, "P3", "followup", results, samples, tmp_path / "x.nii.gz",
                       device="cpu")  # fmt: skip
    with pytest.raises(UserError, match=r"reads the channels \['CT', 'PET'\].*has \['CT', 'MR'\]"):
        network_predictions(["all"], results, samples, "cpu", extra_channels=["MR"])
    assert not (tmp_path / "x.nii.gz").exists()


def test_plan_written_before_channels_is_single_channel(trained, pairs, tmp_path):
    """A plan.json without `channels` (one modality and normalisation) reads as one channel named
    after its modality and predicts as before."""
    import shutil

    from deltarad.segment.plan import TopologyPlan

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "plan.json").read_text())
    topology = meta["topology"]
    normalization = topology.pop("normalizations")[0]
    del topology["channels"], topology["modalities"]
    meta["topology"] = {**topology, "modality": "MR", "normalization": normalization}
    (old / "plan.json").write_text(json.dumps(meta))
    plan = TopologyPlan.from_json(meta["topology"])
    assert plan.channels == plan.modalities == ["MR"] and plan.normalizations == [normalization]
    a = predict_mask(old, pairs[4], False, tmp_path / "a.nii.gz", "cpu", channels=["CT"])
    b = predict_mask(trained, pairs[4], False, tmp_path / "b.nii.gz", "cpu")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(io.read_image(a)), sitk.GetArrayFromImage(io.read_image(b))
    )
