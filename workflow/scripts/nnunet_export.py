"""Snakemake adapter: the nnU-Net raw dataset of the training scans and its patient-level splits.

Inputs named ``{patient}__{timepoint}`` (image) and ``{patient}__{timepoint}_mask``.
"""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.nnunet import export_training_set

with log_to(snakemake.log[0]):
    s = snakemake.params.settings
    export_training_set(
        dict(snakemake.input.items()), Path(snakemake.params.root), s["dataset_id"],
        s["dataset_name"], snakemake.params.channel_name, s["n_folds"], snakemake.params.seed,
        snakemake.params.mask_label,
    )  # fmt: skip
