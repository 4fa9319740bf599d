# DeltaRad: longitudinal radiomics workflow. Wiring only: the logic lives in src/deltarad.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/model.smk"
# Last: figures join the target only when an earlier rule file produces their tables.
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        RESULTS / "tables/samples.validated.tsv",
        RESULTS / "provenance.json",
        RESULTS / "preprocess/fingerprint.json",
        RESULTS / "tables/registration_qc.tsv",
        RESULTS / "tables/failures.tsv",
        RESULTS / "features/features.parquet",
        RESULTS / "tables/metrics.tsv",
        SEGMENTATION_TARGETS,
        FIGURE_TARGETS,
