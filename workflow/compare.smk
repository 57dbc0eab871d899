# The leaderboard (detfold.compare): every model and variant on the same images, the screens
# (models.NAME.folds) included; paired bootstrap differences to the leader say which lead is real.


rule compare:
    input:
        val=expand("results/folds/fold{fold}/val.json", fold=FOLDS),
        oof=each_model_fold("results/predict/{model}/fold{fold}/oof.json"),
        checkpoints=each_model_fold("results/train/{model}/fold{fold}/model.pth"),
        train_benchmarks=each_model_fold("benchmarks/train/{model}/fold{fold}.tsv"),
    output:
        csv="results/compare/leaderboard.csv",
        json="results/compare/leaderboard.json",
    log:
        "logs/compare.log",
    benchmark:
        "benchmarks/compare.tsv"
    conda:
        "../envs/mmdet.yaml"  # torch reads the fold models' parameter counts
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        model_folds=MODEL_FOLDS,
        metric=lookup(dpath="ensemble/search/metric", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/compare.py"
