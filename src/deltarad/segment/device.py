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
