rule import_annotations:
    input:
        source=lambda wildcards: config["data"][f"{wildcards.split}_annotations"],
    output:
        coco="results/import/{split}.json",
    log:
        "logs/import/{split}.log",
    benchmark:
        "benchmarks/import_annotations/{split}.tsv"
    wildcard_constraints:
        split="train|test",
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        format=lookup(dpath="data/format", within=config),
        images=lambda wildcards: config["data"][f"{wildcards.split}_images"],
        class_names=lookup(dpath="data/class_names", within=config, default=None),
        difficult=lookup(dpath="data/difficult", within=config, default="ignore"),
    script:
        "../scripts/import_annotations.py"


rule audit:
    input:
        train=audit_input("train"),
        test=audit_input("test"),
        overrides=audit_overrides,
    output:
        train="results/audit/annotations.json",
        test="results/audit/test.json",
        findings="results/audit/findings.csv",
        summary="results/audit/summary.json",
        gallery=report(
            directory("results/audit/gallery"),
            patterns=["{check}.png"],
            caption="report/audit_gallery.rst",
            category="2. Audit",
            subcategory="gallery",
            labels={"check": "{check}"},
        ),
    log:
        "logs/audit.log",
    benchmark:
        "benchmarks/audit.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        train_images=lookup(dpath="data/train_images", within=config),
        test_images=lookup(dpath="data/test_images", within=config, default=None),
        settings=lookup(dpath="audit", within=config),
    script:
        "../scripts/audit.py"
