rule summary:
    input:
        audit="results/audit/summary.json",
        folds="results/folds/folds.csv",
        balance="results/folds/balance.json",
        models=expand("results/eval/{model}/metrics.json", model=MODELS),
        ensemble="results/ensemble/metrics.json",
        oof_ensemble="results/ensemble/oof_metrics.json",
    output:
        md="results/summary.md",
        json="results/summary.json",
    log:
        "logs/summary.log",
    conda:
        "../envs/light.yaml"
    params:
        models=MODELS,
    script:
        "../scripts/summary.py"
