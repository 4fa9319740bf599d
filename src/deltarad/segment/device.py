"""The torch device of the segmentation jobs, shared by our network and the nnU-Net backend."""

from __future__ import annotations

from typing import Any

from deltarad.runlog import UserError


def resolve_device(requested: str) -> Any:
    """``auto`` uses CUDA when torch sees a GPU; asking for ``cuda`` without one is a clear error.

    torch is imported here, not at module level, so the workflow can import this package while
    building the DAG without paying for torch.
    """
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "segmentation.device is 'cuda' but torch sees no GPU on this machine "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use 'cpu' or 'auto', "
            "or run the segmentation jobs on a GPU node"
        )
    if requested not in ("cpu", "cuda"):
        raise UserError(f"segmentation.device: {requested!r} — choose auto, cpu or cuda")
    return torch.device(requested)


def memory_layout(device: Any) -> Any:
    """Memory format of the network's weights and tensors, in training and inference alike.

    On CPU the standard (contiguous) layout: with this torch build (oneDNN) channels-last 3-D
    tensors made the training step ~3 % slower (forward +8 %, backward equal) and inference
    10-30 % slower (bench/bench_segmentation.py, nnU-Net-planned 32³ patches, 1 thread), and
    nnU-Net's trainer runs contiguous too. On CUDA channels-last suits cuDNN's mixed precision.
    """
    import torch

    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
