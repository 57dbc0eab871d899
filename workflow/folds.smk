rule split_folds:
    input:
        coco="results/audit/annotations.json",
    output:
        table="results/folds/folds.csv",
    log:
        "logs/split_folds.log",
    conda:
        "../envs/light.yaml"
    params:
        k=lookup(dpath="folds/k", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/split_folds.py"


rule fold_files:
    input:
        coco="results/audit/annotations.json",
        table="results/folds/folds.csv",
    output:
        train="results/folds/fold{fold}/train.json",
        val="results/folds/fold{fold}/val.json",
    log:
        "logs/fold_files/fold{fold}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../scripts/fold_files.py"
