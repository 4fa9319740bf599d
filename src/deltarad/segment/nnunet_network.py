"""A trained nnU-Net model's network and intensity normalisation, for reading its encoder
(deep features from the nnU-Net backend: :mod:`deltarad.features.deep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deltarad.runlog import UserError
from deltarad.segment.device import resolve_device
from deltarad.segment.nnunet import check_model_folder


class NnunetNetwork(NamedTuple):
    """One fold's trained nnU-Net network (eval mode, on `device`) and the plans that feed it."""

    network: Any
    plans_manager: Any
    configuration_manager: Any
    device: Any


def load_network(
    model_folder: Path,
    fold: int | str = 0,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    n_channels: int = 1,
) -> NnunetNetwork:
    """One fold's network, rebuilt by nnU-Net's predictor, for reading its encoder.

    A single fold, never an ensemble: folds are separately trained networks whose channels do
    not correspond, so averaging their activations would mean nothing. Only 3-D configurations
    (2-D ones encode slices, not volumes). `n_channels`: the images given per scan, which the
    model must read.
    """
    wanted = check_model_folder(model_folder, [fold], checkpoint, n_channels)
    torch_device = resolve_device(device)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        perform_everything_on_device=torch_device.type == "cuda",
        device=torch_device,
        verbose=False,
        allow_tqdm=False,
    )
    try:
        predictor.initialize_from_trained_model_folder(str(model_folder), wanted, checkpoint)
    except (RuntimeError, KeyError) as err:  # unreadable checkpoint, trainer nnU-Net cannot find
        raise UserError(f"cannot load nnU-Net model {model_folder}: {err}") from None
    config = predictor.configuration_manager
    if len(config.patch_size) != 3:
        raise UserError(
            f"nnU-Net model {model_folder}: deep features need a 3-D configuration, this one "
            f"has patch size {config.patch_size}"
        )
    net = getattr(predictor.network, "_orig_mod", predictor.network)  # unwrap torch.compile
    if not hasattr(net, "encoder"):
        raise UserError(
            f"nnU-Net model {model_folder}: network {type(net).__name__} has no `encoder`"
        )
    net.load_state_dict(predictor.list_of_parameters[0])
    net.to(torch_device).eval()
    return NnunetNetwork(net, predictor.plans_manager, config, torch_device)


def normalize_for_network(arrays: np.ndarray, model: NnunetNetwork) -> np.ndarray:
    """nnU-Net's own intensity normalisation of one scan's (channels, z, y, x) images, as its
    preprocessor does it.

    Each channel's scheme (CT, z-score, ...) and intensity statistics come from the plans.
    nnU-Net first crops to the bounding box of the region where any channel is non-zero and
    normalises inside it (z-score statistics from it; with ``use_mask_for_norm`` only inside the
    non-zero mask); outside that box, which nnU-Net never shows its network, we write 0, the
    value nnU-Net pads with.
    """
    import nnunetv2
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        ImageNormalization,
    )
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    config = model.configuration_manager
    properties = model.plans_manager.foreground_intensity_properties_per_channel
    data = np.asarray(arrays, dtype=np.float32)
    cropped, seg, bbox = crop_to_nonzero(data.copy())
    out = np.zeros(data.shape, dtype=np.float32)
    for channel, scheme in enumerate(config.normalization_schemes):
        cls = recursive_find_python_class(
            str(Path(nnunetv2.__path__[0]) / "preprocessing" / "normalization"),
            scheme,
            "nnunetv2.preprocessing.normalization",
        )
        if cls is None or not issubclass(cls, ImageNormalization):
            raise UserError(f"nnU-Net normalisation scheme {scheme!r} not found in nnunetv2")
        normalizer = cls(
            use_mask_for_norm=config.use_mask_for_norm[channel],
            intensityproperties=properties[str(channel)],
        )
        out[(channel, *bounding_box_to_slice(bbox))] = normalizer.run(cropped[channel], seg[0])
    return out
