# Registration of each later scan onto its patient's baseline, QC and the QC gate.


rule register:
    input:
        unpack(registration_inputs),
        fixed=RESULTS / "preprocessed/{patient}/baseline.nii.gz",
        moving=RESULTS / "preprocessed/{patient}/{timepoint}.nii.gz",
    output:
        image=RESULTS / "registered/{patient}/{timepoint}.nii.gz",
        transform=RESULTS / "registered/{patient}/{timepoint}.tfm",
        qc=RESULTS / "qc/registration/{patient}/{timepoint}.json",
        figure=report(
            RESULTS / "figures/qc/registration/{patient}_{timepoint}.png",
            caption="../report/registration_qc_figure.rst",
            category="2. Registration",
            subcategory="QC pictures",
        ),
    log:
        LOGS / "register/{patient}/{timepoint}.log",
    benchmark:
        RESULTS / "benchmarks/register/{patient}_{timepoint}.tsv"
    wildcard_constraints:
        timepoint=LATER_TIMEPOINT,
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(3000),
        runtime=30,
    params:
        modality=scan_modality,
        settings=REGISTRATION_SETTINGS,
        truth_cohort=COHORT if SYNTHETIC else None,
    script:
        "../scripts/register.py"


# A later scan's drawn mask in baseline space (scans without one get a predicted mask).
rule register_mask:
    input:
        mask=drawn_mask,
        fixed=RESULTS / "preprocessed/{patient}/baseline.nii.gz",
        transform=RESULTS / "registered/{patient}/{timepoint}.tfm",
    output:
        RESULTS / "registered/{patient}/{timepoint}_mask.nii.gz",
    log:
        LOGS / "register/{patient}/{timepoint}_mask.log",
    wildcard_constraints:
        timepoint=LATER_TIMEPOINT,
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(2000),
        runtime=10,
    script:
        "../scripts/register_mask.py"


rule registration_qc:
    input:
        [
            RESULTS / f"qc/registration/{pid}/{tp}.json"
            for pid, tp in LATER.itertuples(index=False)
        ],
    output:
        table=report(
            RESULTS / "tables/registration_qc.tsv",
            caption="../report/registration_qc.rst",
            category="2. Registration",
        ),
        failures=RESULTS / "qc/failures_registration.tsv",
    log:
        LOGS / "register/qc.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(1000),
        runtime=10,
    params:
        gate=config["registration"]["gate"],
    script:
        "../scripts/registration_qc.py"


rule failures:
    input:
        FAILURE_TABLES,
    output:
        report(
            RESULTS / "tables/failures.tsv",
            caption="../report/failures.rst",
            category="1. Cohort",
        ),
    log:
        LOGS / "failures.log",
    conda:
        ENVS / "imaging.yaml"
    threads: 1
    resources:
        mem_mb=scaled_mem(1000),
        runtime=5,
    script:
        "../scripts/failures.py"
