rule ensemble_select:
    input:
        blend="results/folds/blend_annotations.json",
        train="results/audit/annotations.json",
        predictions=expand("results/predict/{model}/fold{fold}/blend.json", model=FULL_MODELS, fold=FOLDS),
        external=external_files("oof"),
    output:
        search="results/ensemble/search.csv",
        best="results/ensemble/best.json",
        selection="results/ensemble/selection.json",
        blend="results/ensemble/blend_predictions.json",
    log:
        "logs/ensemble_select.log",
    benchmark:
        "benchmarks/ensemble_select.tsv"
    conda:
        "../envs/light.yaml"
    threads: 2  # the search's combinations on two processes (as many as Snakemake grants)
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        settings=ensemble_choice_settings(),
        models=FULL_MODELS,
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/ensemble_select.py"


rule ensemble_test:
    input:
        test_gt="results/audit/test.json",
        test=expand("results/predict/{model}/fold{fold}/test.json", model=FULL_MODELS, fold=FOLDS),
        best="results/ensemble/best.json",
        selection="results/ensemble/selection.json",
        external=external_files("test"),
    output:
        fused="results/ensemble/test.json",
        metrics="results/ensemble/metrics.json",
        submission="results/ensemble/submission.csv",
    log:
        "logs/ensemble_test.log",
    benchmark:
        "benchmarks/ensemble_test.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        settings=ensemble_test_settings(),
        models=FULL_MODELS,
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/ensemble_test.py"
