rule train:
    input:
        train="results/folds/fold{fold}/train.json",
        val="results/folds/fold{fold}/val.json",
        model_config=model_config_file,
    output:
        checkpoint="results/train/{model}/fold{fold}/model.pth",
        config="results/train/{model}/fold{fold}/config.py",
    log:
        "logs/train/{model}/fold{fold}.log",
    benchmark:
        "benchmarks/train/{model}/fold{fold}.tsv"
    conda:
        "../envs/mmdet.yaml"
    threads: lookup(dpath="resources/train_threads", within=config)
    resources:
        gpu=model_gpus,
        jobs_per_gpu=lookup(dpath="resources/jobs_per_gpu", within=config),
        mem_mb=lookup(dpath="resources/train_mem_mb", within=config),
        runtime=lookup(dpath="resources/train_runtime", within=config),
    params:
        settings=model_settings,
        images=lookup(dpath="data/train_images", within=config),
        seed=lambda wildcards: config["seed"] + int(wildcards.fold),
    script:
        "../scripts/train.py"
