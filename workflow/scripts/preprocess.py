"""Snakemake adapter: resample and normalise one scan."""

import json
from pathlib import Path

from deltarad.preprocess import PreprocessSettings, preprocess_scan
from deltarad.runlog import log_to

with log_to(snakemake.log[0]):
    fp = snakemake.input.get("fingerprint")
    settings = PreprocessSettings.from_config(
        snakemake.params.settings, json.loads(Path(fp).read_text()) if fp else None
    )
    preprocess_scan(
        snakemake.input.image,
        None,
        snakemake.params.modality,
        settings,
        snakemake.output.image,
        None,
        snakemake.output.record,
        where=f"patient {snakemake.wildcards.patient}, {snakemake.wildcards.timepoint}",
    )
