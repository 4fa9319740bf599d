# Paper figures and Table 1, redrawn from the cached result tables only.
# Include this file last: deltarad.figures.plan enables a figure only when a rule defined
# before it produces every table the figure reads, so a run without segmentation or models
# simply has fewer figures. Stages that can be switched off should define their rules (or
# outputs) only when enabled, as ingest.smk does for the synthetic cohort.
# Only these rules see the `figures` config block (params): restyling reruns figure jobs only.
from deltarad.figures.plan import figure_targets, plan_figures, producer_check

FIGURE_STYLE = config["figures"]["style"]
FIGURE_JOBS = plan_figures(
    config, RESULTS, COHORT, SYNTHETIC, LATER, producer_check(workflow.rules)
)
FIGURE_TARGETS = figure_targets(FIGURE_JOBS, config, RESULTS)


rule table1:
    input:
        clinical=RESULTS / "tables/clinical.validated.tsv",
        samples=RESULTS / "tables/samples.validated.tsv",
        scans=validated_scan_files,
    output:
        tsv=report(
            RESULTS / "tables/table1.tsv",
            caption="../report/table1.rst",
            category="1. Cohort",
        ),
        png=report(
            RESULTS / "figures/table1.png",
            caption="../report/figure_table1.rst",
            category="1. Cohort",
        ),
        pdf=RESULTS / "figures/table1.pdf",
    log:
        LOGS / "figures/table1.log",
    conda:
        ENVS / "stats.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(1000),
        runtime=10,
    params:
        figure="table1",
        options={"time_unit": config["figures"]["time_unit"]},
        style=FIGURE_STYLE,
    script:
        "../scripts/figure.py"


for _job in FIGURE_JOBS.values():

    rule:
        name:
            f"figure_{_job.name}"
        input:
            **_job.tables,
            images=_job.images,
        output:
            png=report(
                RESULTS / f"figures/{_job.name}.png",
                caption=f"../report/figure_{_job.name}.rst",
                category=_job.category,
                subcategory=_job.subcategory,
            ),
            pdf=RESULTS / f"figures/{_job.name}.pdf",
        log:
            LOGS / f"figures/{_job.name}.log",
        conda:
            ENVS / "stats.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(2000),
            runtime=10,
        params:
            figure=_job.name,
            options=_job.options,
            style=FIGURE_STYLE,
        script:
            "../scripts/figure.py"


rule figures:
    input:
        FIGURE_TARGETS,
