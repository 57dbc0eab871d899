rule ensemble:
    input:
        predictions=ENSEMBLE_INPUTS,
        test_gt="results/audit/test.json",
    output:
        fused="results/ensemble/test.json",
        metrics="results/ensemble/metrics.json",
    log:
        "logs/ensemble.log",
    conda:
        "../envs/light.yaml"
    params:
        settings=lookup(dpath="ensemble", within=config),
        members=ENSEMBLE_MEMBERS,
    script:
        "../scripts/ensemble.py"
