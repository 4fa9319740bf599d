# DeltaRad: longitudinal radiomics workflow. Wiring only: the logic lives in src/deltarad.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"


rule all:
    default_target: True
    input:
        RESULTS / "tables/samples.validated.tsv",
        RESULTS / "provenance.json",
