# Ingest: generate the synthetic cohort (default) or take the user's sheets, then validate.
from deltarad.layout import resolve_params

if SYNTHETIC:

    rule simulate_patient:
        output:
            synthetic_patient_outputs("{patient}"),
        log:
            LOGS / "simulate/{patient}.log",
        conda:
            ENVS / "imaging.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(2000),
            runtime=10,
        params:
            synthetic=config["synthetic"],
            root=COHORT,
        script:
            "../scripts/simulate_patient.py"

    rule simulate_sheets:
        input:
            expand(COHORT / "truth/patients/{patient}.json", patient=PATIENTS),
        output:
            samples=COHORT / "samples.tsv",
            clinical=COHORT / "clinical.tsv",
            latent=COHORT / "truth/latent.tsv",
        log:
            LOGS / "simulate/sheets.log",
        conda:
            ENVS / "imaging.yaml"
        threads: 1
        resources:
            mem_mb=scaled_mem(1000),
            runtime=5,
        params:
            root=COHORT,
        script:
            "../scripts/simulate_sheets.py"


checkpoint validate_cohort:
    input:
        samples=samples_sheet(),
        clinical=clinical_sheet(),
    output:
        samples=report(
            RESULTS / "tables/samples.validated.tsv",
            caption="../report/samples.rst",
            category="1. Cohort",
        ),
        clinical=RESULTS / "tables/clinical.validated.tsv",
    log:
        LOGS / "validate_cohort.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(2000),
        runtime=30,
    params:
        # Only what validation depends on, so other config changes do not rerun everything.
        settings=VALIDATION_SETTINGS,
    script:
        "../scripts/validate_cohort.py"


rule provenance:
    input:
        samples=RESULTS / "tables/samples.validated.tsv",
        clinical=RESULTS / "tables/clinical.validated.tsv",
        scans=validated_scan_files,
        radiomics_params=resolve_params(config["features"]["params"]),
    output:
        RESULTS / "provenance.json",
    log:
        LOGS / "provenance.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(1000),
        runtime=30,
    params:
        # The figures block only restyles figures: changing it must not rerun this job.
        config={k: v for k, v in config.items() if k != "figures"},
        repo=REPO,
        sheets=[samples_sheet(), clinical_sheet()],
    script:
        "../scripts/provenance.py"
