# Evaluation: one job per (backbone, method, benchmark); `cot` is the bare
# backbone. Finished problems go to {benchmark}.samples.jsonl.partial, which is
# not a declared output, so a killed job resumes at problem granularity.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        json=f"{RESULTS}/{{backbone}}/{{method}}/eval/{{benchmark}}.json",
        samples=f"{RESULTS}/{{backbone}}/{{method}}/eval/{{benchmark}}.samples.jsonl",
        html=f"{RESULTS}/{{backbone}}/{{method}}/eval/{{benchmark}}.html",
    params:
        config=evaluate_config,
        checkpoint=evaluate_checkpoint_arg,
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{method}}/{{benchmark}}.log",
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo evaluate --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--method {wildcards.method:q} --backbone-dir {input.backbone:q} {params.checkpoint} "
        "--benchmark {wildcards.benchmark:q} --data-root {RESULTS}/data --out {output.json:q} 2>&1 | tee -a {log:q}"
