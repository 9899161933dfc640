# Synthetic datasets: train / test_id / test_ood splits as JSONL.


rule prepare:
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/prepare/{{dataset}}.tsv"
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("prepare")
    resources:
        **rule_resources("prepare"),
    params:
        code=CODE,
        config=prepare_config,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo prepare --config-json {params.config:q} --dataset {wildcards.dataset:q} --out {output:q} "
        "2>&1 | tee {log:q}"
