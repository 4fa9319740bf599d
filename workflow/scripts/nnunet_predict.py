"""Snakemake adapter: binary masks from a trained (or the user's pretrained) nnU-Net model.

Inputs and outputs named ``{patient}__{timepoint}`` pair each scan's reference channel image
with its mask path; inputs ``{patient}__{timepoint}__{channel}`` are its extra channels' images
(nnU-Net's input channels 1, 2, ... in the study's order).
"""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.nnunet import predict

with log_to(snakemake.log[0]):
    s, p = snakemake.params.settings, snakemake.params
    device = snakemake.config["segmentation"]["device"]
    names = set(snakemake.output.keys())  # Namedlist: `in` would test values, not names
    extra = [f"__{ch}" for ch in p.channels]
    cases = [
        (k, [Path(v), *(Path(snakemake.input[k + suffix]) for suffix in extra)])
        for k, v in snakemake.input.items()
        if k in names
    ]
    predict(
        Path(p.model_folder), cases, Path(snakemake.output[0]).parent, device, s["folds"],
        s["checkpoint"], s.get("labels"), s["mirroring"], snakemake.threads,
        [Path(snakemake.output[k]) for k, _ in cases],
    )  # fmt: skip
