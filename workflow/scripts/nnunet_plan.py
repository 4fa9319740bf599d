"""Snakemake adapter: nnU-Net fingerprint, plans and preprocessing (copies of the JSON as outputs).

nnU-Net's workers start with `spawn`, which re-runs this file: keep the `__main__` guard.
"""

from pathlib import Path

from deltarad.runlog import log_to
from deltarad.segment.nnunet import plan_and_preprocess

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        s, out = snakemake.params.settings, snakemake.output
        plan_and_preprocess(
            Path(snakemake.params.root), s["dataset_id"], s["configuration"], snakemake.threads,
            out.plans, out.fingerprint, s.get("fingerprint_samples"),
        )  # fmt: skip
