rule evaluate:
    input:
        val=model_fold_files("results/folds/fold{fold}/val.json"),
        oof=model_fold_files("results/predict/{model}/fold{fold}/oof.json"),
        test_gt=lambda wildcards: test_file("results/audit/test.json") if wildcards.model in FULL_MODELS else [],
        test=(model_fold_files("results/predict/{model}/fold{fold}/test.json", full_only=True) if HAS_TEST else []),
    output:
        metrics="results/eval/{model}/metrics.json",
        pr_curves="results/eval/{model}/pr_curves.csv",
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/evaluate/{model}.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        folds=lambda wildcards: MODEL_FOLDS[wildcards.model],
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/evaluate.py"
