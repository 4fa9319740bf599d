# Models: response and survival models on the feature sets of features/features.parquet,
# validated by nested CV, external centres and leave-one-centre-out (deltarad.model).
# Input function model_inputs lives in common.smk.


rule models:
    input:
        unpack(model_inputs),
    output:
        metrics=report(
            RESULTS / "tables/metrics.tsv",
            caption="../report/model_metrics.rst",
            category="4. Models",
        ),
        predictions=report(
            RESULTS / "tables/predictions.tsv",
            caption="../report/model_predictions.rst",
            category="4. Models",
        ),
        td_auc=RESULTS / "tables/td_auc.tsv",
        hazard_ratios=report(
            RESULTS / "tables/hazard_ratios.tsv",
            caption="../report/model_hazard_ratios.rst",
            category="4. Models",
        ),
        coefficients=RESULTS / "tables/model_coefficients.tsv",
        harmonization_check=report(
            RESULTS / "tables/harmonization_check.tsv",
            caption="../report/model_harmonization.rst",
            category="4. Models",
        ),
        harmonization_embedding=RESULTS / "tables/harmonization_embedding.tsv",
        delong=report(
            RESULTS / "tables/delong.tsv",
            caption="../report/model_delong.rst",
            category="4. Models",
        ),
        models=directory(RESULTS / "models/fitted"),
    log:
        LOGS / "models.log",
    benchmark:
        RESULTS / "benchmarks/models.tsv"
    conda:
        ENVS / "stats.yaml"
    # Feature sets are fitted in parallel threads.
    threads: 2
    resources:
        mem_mb=scaled_mem(4000),
        runtime=60,
    params:
        # Only the blocks the models depend on, so other config changes do not rerun them.
        settings={
            "models": config["models"],
            "study": config["study"],
            "segmentation": config.get("segmentation", {}),
            # Which network's encoder gave the deep features (leakage guard).
            "features": {"deep": config["features"]["deep"]},
        },
    script:
        "../scripts/model_run.py"
