# Backbones: the embedded tiny Qwen2 is built and warm-started on its
# dataset's train split; a hub model is resolved and snapshotted (no data).


rule backbone:
    input:
        unpack(backbone_inputs),
    output:
        directory(f"{RESULTS}/backbones/{{backbone}}"),
    log:
        f"{LOGS}/backbone/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/backbone/{{backbone}}.tsv"
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("backbone")
    resources:
        **rule_resources("backbone"),
    params:
        code=CODE,
        config=backbone_config,
        data=backbone_data_arg,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo backbone --config-json {params.config:q} --backbone {wildcards.backbone:q} {params.data} "
        "--out {output:q} 2>&1 | tee {log:q}"
