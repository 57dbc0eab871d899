# Error analysis and label review of the pooled out-of-fold predictions (detfold.analyze.analysis):
# per model, and for the OOF ensemble when there are several models. Label-review candidates go
# into review.csv in the audit's findings.csv columns: a person copies the ones to act on into
# config/audit_overrides.csv.


rule analyze:
    input:
        val=expand("results/folds/fold{fold}/val.json", fold=FOLDS),
        oof=expand("results/predict/{{model}}/fold{fold}/oof.json", fold=FOLDS),
        blend="results/folds/blend_annotations.json",
        blend_preds=expand("results/predict/{{model}}/fold{fold}/blend.json", fold=FOLDS),
    output:
        tide="results/analysis/{model}/tide.json",
        thresholds="results/analysis/{model}/thresholds.json",
        confusion="results/analysis/{model}/confusion.csv",
        review="results/analysis/{model}/review.csv",
        gallery=report(
            directory("results/analysis/{model}/gallery"),
            patterns=["{name}.png"],
            caption="report/analysis_gallery.rst",
            category="6. Error analysis",
            subcategory="galleries: {model}",
            labels={"model": "{model}", "gallery": "{name}"},
        ),
    log:
        "logs/analyze/{model}.log",
    benchmark:
        "benchmarks/analyze/{model}.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        images=lookup(dpath="data/train_images", within=config),
        fusion=analysis_fusion_settings(),
    script:
        "../scripts/analyze.py"


rule analyze_ensemble:
    input:
        val=expand("results/folds/fold{fold}/val.json", fold=FOLDS),
        oof=expand("results/predict/{model}/fold{fold}/oof.json", model=FULL_MODELS, fold=FOLDS),
        blend="results/folds/blend_annotations.json",
        blend_preds=expand("results/predict/{model}/fold{fold}/blend.json", model=FULL_MODELS, fold=FOLDS),
    output:
        tide=f"results/analysis/{OOF_ENSEMBLE}/tide.json",
        thresholds=f"results/analysis/{OOF_ENSEMBLE}/thresholds.json",
        confusion=f"results/analysis/{OOF_ENSEMBLE}/confusion.csv",
        review=f"results/analysis/{OOF_ENSEMBLE}/review.csv",
        gallery=report(
            directory(f"results/analysis/{OOF_ENSEMBLE}/gallery"),
            patterns=["{name}.png"],
            caption="report/analysis_gallery.rst",
            category="6. Error analysis",
            subcategory=f"galleries: {OOF_ENSEMBLE}",
            labels={"model": OOF_ENSEMBLE, "gallery": "{name}"},
        ),
    log:
        f"logs/analyze/{OOF_ENSEMBLE}.log",
    benchmark:
        f"benchmarks/analyze/{OOF_ENSEMBLE}.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        images=lookup(dpath="data/train_images", within=config),
        fusion=analysis_fusion_settings(),
        models=FULL_MODELS,
    script:
        "../scripts/analyze.py"
