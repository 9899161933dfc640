# Synthetic datasets: train / test_id / test_ood splits as JSONL.


rule prepare:
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    params:
        config=prepare_config,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    threads: rule_threads("prepare")
    resources:
        **rule_resources("prepare"),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo prepare --config-json {params.config:q} --dataset {wildcards.dataset:q} --out {output:q} "
        "2>&1 | tee {log:q}"
