rule evaluate:
    input:
        val=expand("results/folds/fold{fold}/val.json", fold=FOLDS),
        oof=expand("results/predict/{{model}}/fold{fold}/oof.json", fold=FOLDS),
        test_gt=test_file("results/audit/test.json"),
        test=test_file(expand("results/predict/{{model}}/fold{fold}/test.json", fold=FOLDS)),
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
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/evaluate.py"
