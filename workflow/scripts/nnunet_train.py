"""Snakemake adapter: train one nnU-Net fold (resumes from its latest checkpoint).

nnU-Net's workers start with `spawn`, which re-runs this file: keep the `__main__` guard.
"""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.nnunet import train

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        s, p = snakemake.params.settings, snakemake.params
        device = snakemake.config["segmentation"]["device"]  # not a param: no retraining
        train(
            Path(p.root), s["dataset_id"], s["configuration"], snakemake.wildcards.fold,
            s["trainer"], s["epochs"], s["iterations_per_epoch"], s["val_iterations"], device,
            p.seed, snakemake.threads, s["validate"],
        )  # fmt: skip
