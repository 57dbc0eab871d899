rule ensemble_oof:
    input:
        gt="results/audit/annotations.json",
        oof=expand("results/predict/{model}/fold{fold}/oof.json", model=MODELS, fold=FOLDS),
        external=external_files("oof"),
    output:
        search="results/ensemble/search.csv",
        best="results/ensemble/best.json",
        oof="results/ensemble/oof.json",
        metrics="results/ensemble/oof_metrics.json",
    log:
        "logs/ensemble_oof.log",
    benchmark:
        "benchmarks/ensemble_oof.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        settings=lookup(dpath="ensemble", within=config),
        models=MODELS,
    script:
        "../scripts/ensemble_oof.py"


rule ensemble:
    input:
        test_gt="results/audit/test.json",
        test=expand("results/predict/{model}/fold{fold}/test.json", model=MODELS, fold=FOLDS),
        best="results/ensemble/best.json",
        external=external_files("test"),
    output:
        fused="results/ensemble/test.json",
        default="results/ensemble/test_default.json",
        metrics="results/ensemble/metrics.json",
        submission="results/ensemble/submission.csv",
    log:
        "logs/ensemble.log",
    benchmark:
        "benchmarks/ensemble.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        settings=lookup(dpath="ensemble", within=config),
        models=MODELS,
    script:
        "../scripts/ensemble.py"
