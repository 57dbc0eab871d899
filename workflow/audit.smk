rule audit:
    input:
        train=lookup(dpath="data/train_annotations", within=config),
        test=lookup(dpath="data/test_annotations", within=config),
    output:
        train="results/audit/annotations.json",
        test="results/audit/test.json",
        findings="results/audit/findings.csv",
        summary="results/audit/summary.json",
    log:
        "logs/audit.log",
    conda:
        "../envs/light.yaml"
    params:
        train_images=lookup(dpath="data/train_images", within=config),
        test_images=lookup(dpath="data/test_images", within=config),
        policy=lookup(dpath="audit", within=config),
    script:
        "../scripts/audit.py"
