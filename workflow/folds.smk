rule split_folds:
    input:
        coco="results/audit/annotations.json",
        groups=group_csv_input,
    output:
        table="results/folds/folds.csv",
        balance="results/folds/balance.csv",
        plot=report(
            "results/folds/balance.png",
            caption="report/fold_balance.rst",
            category="1. Fold balance",
            labels={"figure": "class shares per fold"},
        ),
        summary="results/folds/balance.json",
        near_duplicates="results/folds/near_duplicates.csv",
        blend="results/folds/blend_annotations.json",
    log:
        "logs/split_folds.log",
    benchmark:
        "benchmarks/split_folds.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        k=lookup(dpath="folds/k", within=config),
        seed=lookup(dpath="seed", within=config),
        method=lookup(dpath="folds/method", within=config),
        group_by=lookup(dpath="folds/group_by", within=config, default=None),
        weights=lookup(dpath="folds/weights", within=config),
        near_duplicate_distance=lookup(dpath="folds/near_duplicate_distance", within=config),
        images=lookup(dpath="data/train_images", within=config),
        blend_share=lookup(dpath="folds/blend_share", within=config),
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
    benchmark:
        "benchmarks/fold_files/fold{fold}.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/fold_files.py"
