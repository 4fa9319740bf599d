"""nnU-Net v2 plans -> our TopologyPlan (deltarad.segment.plan.topology_from_nnunet_plans)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deltarad.runlog import UserError
from deltarad.segment.network import LongitudinalNet
from deltarad.segment.plan import Preset, normalize, topology_from_nnunet_plans

INTENSITY = {
    "0": {"max": 150.0, "mean": 100.0, "median": 100.1, "min": 42.0,
          "percentile_00_5": 61.25, "percentile_99_5": 137.5, "std": 14.9}
}  # fmt: skip


def nnunet_plans(scheme: str = "ZScoreNormalization", transpose=(0, 1, 2)) -> dict:
    """A plans dict as nnU-Net 2.8's ExperimentPlanner writes it (values after transpose_forward:
    axis 0 is the coarse one), with an inheriting configuration."""
    return {
        "dataset_name": "Dataset902_SegBench",
        "plans_name": "nnUNetPlans",
        "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "foreground_intensity_properties_per_channel": INTENSITY,
        "configurations": {
            "3d_fullres": {
                "batch_size": 2,
                "patch_size": [24, 48, 40],
                "median_image_size_in_voxels": [30.0, 60.0, 50.0],
                "spacing": [3.0, 1.0, 1.2],
                "normalization_schemes": [scheme],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet."
                    "PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 4,
                        "features_per_stage": [32, 64, 128, 256],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [2, 2, 2, 2],
                        "n_conv_per_stage_decoder": [2, 2, 2],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            },
            "3d_wide": {"inherits_from": "3d_fullres", "patch_size": [16, 32, 32]},
        },
    }


def test_topology_fields_from_plans():
    plan = topology_from_nnunet_plans(nnunet_plans(), "3d_fullres")
    assert plan.patch_size == [24, 48, 40]
    assert plan.spacing == [3.0, 1.0, 1.2]
    assert plan.strides == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert plan.kernels == [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert plan.features == [32, 64, 128, 256]
    assert plan.median_shape == [30, 60, 50]
    assert plan.channels == plan.modalities == ["MR"]
    assert plan.normalizations == [{"scheme": "zscore"}]
    assert plan.divisor.tolist() == [4, 8, 8]
    inherited = topology_from_nnunet_plans(nnunet_plans(), "3d_wide")
    assert inherited.patch_size == [16, 32, 32]
    assert inherited.features == plan.features


def test_transposed_plans_come_back_in_image_axis_order():
    # nnU-Net moved image axis 2 (the coarse one) first: transposed = original[[2, 0, 1]].
    plan = topology_from_nnunet_plans(nnunet_plans(transpose=(2, 0, 1)), "3d_fullres")
    assert plan.patch_size == [48, 40, 24]
    assert plan.spacing == [1.0, 1.2, 3.0]
    assert plan.kernels[0] == [3, 3, 1]
    assert plan.strides[1] == [2, 2, 1]


def test_ct_normalisation_matches_nnunet_formula():
    plan = topology_from_nnunet_plans(nnunet_plans("CTNormalization"), "3d_fullres")
    assert plan.modalities == ["CT"]
    assert plan.normalizations == [{
        "scheme": "ct", "clip_low": 61.25, "clip_high": 137.5, "mean": 100.0, "std": 14.9
    }]  # fmt: skip
    image = np.random.default_rng(0).normal(100, 40, (4, 5, 6)).astype(np.float32)
    expected = (np.clip(image, 61.25, 137.5) - 100.0) / 14.9
    np.testing.assert_allclose(normalize(image, plan), expected, rtol=1e-6)
    # A fingerprint (or its per-channel block) given explicitly wins over the plans' copy.
    plans = nnunet_plans("CTNormalization")
    del plans["foreground_intensity_properties_per_channel"]
    other = copy.deepcopy(INTENSITY)
    other["0"]["mean"] = 90.0
    fingerprint = {"foreground_intensity_properties_per_channel": other}
    assert topology_from_nnunet_plans(plans, intensity_properties=fingerprint).normalizations[0][
        "mean"
    ] == pytest.approx(90.0)
    assert topology_from_nnunet_plans(plans, intensity_properties=other).normalizations[0][
        "mean"
    ] == pytest.approx(90.0)
    with pytest.raises(UserError, match="CT normalisation of channel 0 needs intensity property"):
        topology_from_nnunet_plans(plans)


def test_encoder_matches_nnunet_network_built_from_the_same_plans():
    """Our encoder's convolutions have the shapes of nnU-Net's PlainConvUNet encoder."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = nnunet_plans()
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    theirs = get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
        allow_init=True, deep_supervision=True,
    )  # fmt: skip
    plan = topology_from_nnunet_plans(plans)
    ours = LongitudinalNet(plan, Preset("seg_only", ("segmentation",)), deep_supervision=3)

    def conv_shapes(module: nn.Module) -> list[tuple]:
        return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Conv3d)]

    assert conv_shapes(ours.encoder) == conv_shapes(theirs.encoder)
    with torch.no_grad():
        x = torch.zeros(1, 1, *plan.patch_size)
        out = ours(x, x, outcome=False)
    assert [tuple(o.shape[2:]) for o in out.seg[0]] == [(24, 48, 40), (24, 24, 20), (12, 12, 10)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(use_mask_for_norm=[True]), "use_mask_for_norm"),
        (lambda c: c.update(normalization_schemes=["RescaleTo01Normalization"]), "not supported"),
        (lambda c: c["architecture"]["arch_kwargs"].update(n_conv_per_stage=[1, 1, 1, 1]),
         "2 convs per stage"),
        (lambda c: c.update(patch_size=[48, 40]), "only 3-D"),
        (lambda c: c.pop("architecture"), "no architecture"),
    ],
)  # fmt: skip
def test_unsupported_plans_are_clear_errors(edit, message):
    plans = nnunet_plans()
    edit(plans["configurations"]["3d_fullres"])
    with pytest.raises(UserError, match=message):
        topology_from_nnunet_plans(plans, "3d_fullres")


def test_unknown_configuration_and_broken_inheritance():
    plans = nnunet_plans()
    with pytest.raises(UserError, match=r"no such configuration; available: \['3d_fullres'"):
        topology_from_nnunet_plans(plans, "2d")
    plans["configurations"]["3d_wide"]["inherits_from"] = "3d_lowres"
    with pytest.raises(UserError, match="broken 'inherits_from' chain"):
        topology_from_nnunet_plans(plans, "3d_wide")


def test_multichannel_plans_normalise_each_channel_by_its_scheme():
    """Two input channels (CT + PET, as nnU-Net's channel_names 0 and 1): CT normalisation from
    channel 0's intensity properties, per-image z-score for channel 1; the encoder's first
    convolution reads both."""
    plans = nnunet_plans()
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = [
        "CTNormalization", "ZScoreNormalization"
    ]  # fmt: skip
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [False, False]
    plans["foreground_intensity_properties_per_channel"]["1"] = {"mean": 5.0, "std": 2.0}
    plan = topology_from_nnunet_plans(plans, channels=["CT", "PET"])
    assert plan.channels == ["CT", "PET"] and plan.modalities == ["CT", "MR"]
    assert plan.normalizations[0]["clip_high"] == 137.5
    assert plan.normalizations[1] == {"scheme": "zscore"}
    image = np.random.default_rng(1).normal(3, 2, (4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(
        normalize(image, plan, 1), (image - image.mean()) / image.std(), rtol=1e-5, atol=1e-6
    )
    net = LongitudinalNet(plan, Preset("seg_only", ("segmentation",)), deep_supervision=1)
    assert net.encoder.stages[0][0].weight.shape[1] == 2
    with pytest.raises(UserError, match=r"2 input channels but 1 names \['CT'\]"):
        topology_from_nnunet_plans(plans, channels=["CT"])
