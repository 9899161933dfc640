# Evaluation: one job per (backbone, method, seed, benchmark), ablation arms included; `cot` is the bare
# backbone (evaluated once per seed: the seed is its sampling seed, so every
# method's seed-s evaluation pairs with cot's). Finished problems go to {benchmark}.samples.jsonl.partial, which is
# not a declared output, so a killed job resumes at problem granularity.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        json=f"{RESULTS}/{{backbone}}/{{method}}/seed{{seed}}/eval/{{benchmark}}.json",
        samples=f"{RESULTS}/{{backbone}}/{{method}}/seed{{seed}}/eval/{{benchmark}}.samples.jsonl",
        html=f"{RESULTS}/{{backbone}}/{{method}}/seed{{seed}}/eval/{{benchmark}}.html",
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{method}}/seed{{seed}}/{{benchmark}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/evaluate/{{backbone}}/{{method}}/seed{{seed}}/{{benchmark}}.tsv"
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        code=CODE,
        config=evaluate_config,
        checkpoint=evaluate_checkpoint_arg,
        data_root=evaluate_data_root,
        method=method_arg,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo evaluate --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "{params.method} --seed {wildcards.seed} --backbone-dir {input.backbone:q} {params.checkpoint} "
        "--benchmark {wildcards.benchmark:q} --data-root {params.data_root:q} --out {output.json:q} 2>&1 | tee -a {log:q}"
