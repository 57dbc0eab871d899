rule summary:
    input:
        audit="results/audit/summary.json",
        folds="results/folds/folds.csv",
        balance="results/folds/balance.json",
        models=expand("results/eval/{model}/metrics.json", model=MODELS),
        selection="results/ensemble/selection.json",
        leaderboard="results/compare/leaderboard.json",
        test=test_file("results/ensemble/metrics.json"),
    output:
        md="results/summary.md",
        json="results/summary.json",
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        models=MODELS,
    script:
        "../scripts/summary.py"


# The report (snakemake --report report.html): the summary first, then plots and tables of every
# stage. Captions are in workflow/report/; the categories are numbered in reading order.


rule report_summary:
    input:
        md="results/summary.md",
    output:
        page=report(
            "results/report/summary.html",
            caption="report/summary.rst",
            category="0. Summary",
            labels={"figure": "run summary"},
        ),
    log:
        "logs/report/summary.log",
    benchmark:
        "benchmarks/report_summary.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_summary.py"


rule report_compare:
    input:
        csv="results/compare/leaderboard.csv",
        json="results/compare/leaderboard.json",
    output:
        plot=report(
            "results/report/compare/leaderboard.png",
            caption="report/leaderboard.rst",
            category="4. CV results",
            labels={"figure": "leaderboard"},
        ),
        table=report(
            "results/report/compare/leaderboard.html",
            caption="report/leaderboard.rst",
            category="4. CV results",
            labels={"figure": "leaderboard (table)"},
        ),
    log:
        "logs/report/compare.log",
    benchmark:
        "benchmarks/report_compare.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_compare.py"


rule report_folds:
    input:
        table="results/folds/folds.csv",
        balance="results/folds/balance.csv",
    output:
        sizes=report(
            "results/report/folds/sizes.png",
            caption="report/fold_sizes.rst",
            category="1. Fold balance",
            labels={"figure": "fold sizes"},
        ),
    log:
        "logs/report/folds.log",
    benchmark:
        "benchmarks/report_folds.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_folds.py"


rule report_audit:
    input:
        summary="results/audit/summary.json",
    output:
        plot=report(
            "results/report/audit/counts.png",
            caption="report/audit_counts.rst",
            category="2. Audit",
            subcategory="counts",
            labels={"figure": "findings per check"},
        ),
        table=report(
            "results/report/audit/counts.html",
            caption="report/audit_counts.rst",
            category="2. Audit",
            subcategory="counts",
            labels={"figure": "findings per check (table)"},
        ),
    log:
        "logs/report/audit.log",
    benchmark:
        "benchmarks/report_audit.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_audit.py"


rule report_training:
    input:
        checkpoints=model_fold_files("results/train/{model}/fold{fold}/model.pth"),
    output:
        curves=report(
            "results/report/training/{model}.png",
            caption="report/training.rst",
            category="3. Training",
            labels={"model": "{model}"},
        ),
    log:
        "logs/report/training/{model}.log",
    benchmark:
        "benchmarks/report_training/{model}.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_training.py"


rule report_cv:
    input:
        metrics=expand("results/eval/{model}/metrics.json", model=MODELS),
        pr_curves=expand("results/eval/{model}/pr_curves.csv", model=MODELS),
    output:
        table=report(
            "results/report/cv/folds.html",
            caption="report/cv_table.rst",
            category="4. CV results",
            labels={"figure": "per-fold table"},
        ),
        per_class=report(
            "results/report/cv/per_class_ap.png",
            caption="report/cv_per_class.rst",
            category="4. CV results",
            labels={"figure": "per-class AP"},
        ),
        pr_curves=report(
            "results/report/cv/pr_curves.png",
            caption="report/cv_pr_curves.rst",
            category="4. CV results",
            labels={"figure": "PR curves"},
        ),
    log:
        "logs/report/cv.log",
    benchmark:
        "benchmarks/report_cv.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        models=MODELS,
    script:
        "../scripts/report_cv.py"


rule report_ensemble:
    input:
        selection="results/ensemble/selection.json",
        test=test_file("results/ensemble/metrics.json"),
        search="results/ensemble/search.csv",
    output:
        plot=report(
            "results/report/ensemble/comparison.png",
            caption="report/ensemble.rst",
            category="5. Ensemble",
            labels={"figure": "single vs ensembles"},
        ),
        table=report(
            "results/report/ensemble/comparison.html",
            caption="report/ensemble.rst",
            category="5. Ensemble",
            labels={"figure": "single vs ensembles (table)"},
        ),
        search=report(
            "results/report/ensemble/search.html",
            caption="report/ensemble_search.rst",
            category="5. Ensemble",
            labels={"figure": "fusion parameter search (blend split)"},
        ),
    log:
        "logs/report/ensemble.log",
    benchmark:
        "benchmarks/report_ensemble.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    script:
        "../scripts/report_ensemble.py"


rule run_facts:
    input:
        benchmarks=benchmark_files,
    output:
        facts=report(
            "results/report/run_facts.html",
            caption="report/run_facts.rst",
            category="7. Run facts",
            labels={"figure": "versions, machine, run times, config"},
        ),
    log:
        "logs/report/run_facts.log",
    benchmark:
        "benchmarks/run_facts.tsv"
    conda:
        "../envs/mmdet.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        config=config,
    script:
        "../scripts/run_facts.py"


rule report_analysis:
    input:
        tide=expand("results/analysis/{name}/tide.json", name=ANALYSES),
        thresholds=expand("results/analysis/{name}/thresholds.json", name=ANALYSES),
        confusion=expand("results/analysis/{name}/confusion.csv", name=ANALYSES),
    output:
        breakdown=report(
            "results/report/analysis/breakdown.png",
            caption="report/analysis_breakdown.rst",
            category="6. Error analysis",
            subcategory="breakdown",
            labels={"figure": "TIDE error breakdown"},
        ),
        confusion=report(
            "results/report/analysis/confusion.png",
            caption="report/analysis_confusion.rst",
            category="6. Error analysis",
            subcategory="breakdown",
            labels={"figure": "confusion matrix"},
        ),
        thresholds=report(
            "results/report/analysis/thresholds.html",
            caption="report/analysis_thresholds.rst",
            category="6. Error analysis",
            subcategory="breakdown",
            labels={"figure": "best-F1 thresholds (table)"},
        ),
    log:
        "logs/report/analysis.log",
    benchmark:
        "benchmarks/report_analysis.tsv"
    conda:
        "../envs/light.yaml"
    resources:
        mem_mb=lookup(dpath="resources/mem_mb", within=config),
        runtime=lookup(dpath="resources/runtime", within=config),
    params:
        names=ANALYSES,
    script:
        "../scripts/report_analysis.py"
