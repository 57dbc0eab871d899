rule predict:
    input:
        checkpoint="results/train/{model}/fold{fold}/model.pth",
        config="results/train/{model}/fold{fold}/config.py",
        coco=predict_annotations,
    output:
        predictions="results/predict/{model}/fold{fold}/{split}.json",
    log:
        "logs/predict/{model}/fold{fold}/{split}.log",
    benchmark:
        "benchmarks/predict/{model}/fold{fold}/{split}.tsv"
    conda:
        "../envs/mmdet.yaml"
    threads: lookup(dpath="resources/train_threads", within=config)
    resources:
        gpu=1,
        jobs_per_gpu=lookup(dpath="resources/jobs_per_gpu", within=config),
        mem_mb=lookup(dpath="resources/train_mem_mb", within=config),
        runtime=lookup(dpath="resources/predict_runtime", within=config),
    params:
        images=predict_images,
        score_thr=lookup(dpath="predict/score_thr", within=config),
        max_per_img=lookup(dpath="predict/max_per_img", within=config),
        tta=lookup(dpath="predict/tta", within=config, default=None),
    script:
        "../scripts/predict.py"
