# Choosing hyperparameters on validation (tarpo.tuning): `snakemake --cores 2 tune` (every backbone) or
# `tune_<backbone>`; not part of `all`. Every tuned method is trained once per grid point of the config's
# `tuning` section (a trial, named e.g. `learning_rate=0.0001`) and seed, with the train section's steps:
# the same grid, seeds and budget for every method. The trial's grid values are applied as the method's
# overrides, over every layer of the merge (rule train's slice with the point in the backbone's
# method_overrides), so `tarpo train` runs unchanged. Each policy is evaluated on the validation benchmark
# (rule evaluate's slice and settings); rule tune_report tables pass@1 per method x trial and marks each
# method's choice. Test splits are never read. The jobs log to the MLflow experiment `{name}-tune`.
#
#   {root}/{backbone}/tune/{method}/{trial}/seed{seed}/checkpoint/         (rule tune_train)
#   {root}/{backbone}/tune/{method}/{trial}/seed{seed}/eval/{benchmark}.*  (rule tune_evaluate)
#   {root}/{backbone}/tuning.csv, tuning.md                                (rule tune_report)


rule tune:
    input:
        tune_targets(BACKBONES),


for _backbone in BACKBONES:

    rule:
        name:
            f"tune_{_backbone}"
        input:
            tune_targets([_backbone]),


rule tune_train:
    input:
        backbone=train_backbone_input,
        data=train_data_dir,
    output:
        directory(f"{TUNE}/checkpoint"),
    log:
        f"{LOGS}/tune_train/{{backbone}}/{{method}}/{{trial}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/tune_train/{{backbone}}/{{method}}/{{trial}}/seed{{seed}}.tsv"
    wildcard_constraints:
        method=one_of(TUNING.methods),
        trial=one_of(TRIALS),
        seed=one_of([str(s) for s in TUNING.seeds]),
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    params:
        code=CODE,
        config=tune_train_config,
        launcher=train_launcher,
    # as rule train: SIGTERM checkpoints, a rerun with the same settings resumes
    shell:
        "trap : TERM; OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "{params.launcher} train --config-json {params.config:q} "
        "--backbone {wildcards.backbone:q} --method {wildcards.method:q} --seed {wildcards.seed} "
        "--backbone-dir {input.backbone:q} --data {input.data:q} --out {output:q} "
        "2>&1 | (trap '' TERM; exec tee -a {log:q})"


rule tune_evaluate:
    input:
        unpack(tune_evaluate_inputs),
    output:
        json=f"{TUNE}/eval/{{benchmark}}.json",
        samples=f"{TUNE}/eval/{{benchmark}}.samples.jsonl",
        html=f"{TUNE}/eval/{{benchmark}}.html",
    log:
        f"{LOGS}/tune_evaluate/{{backbone}}/{{method}}/{{trial}}/seed{{seed}}/{{benchmark}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/tune_evaluate/{{backbone}}/{{method}}/{{trial}}/seed{{seed}}/{{benchmark}}.tsv"
    wildcard_constraints:
        method=one_of(TUNING.methods),
        trial=one_of(TRIALS),
        seed=one_of([str(s) for s in TUNING.seeds]),
        benchmark=one_of([TUNING.benchmark]),
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        code=CODE,
        config=tune_evaluate_config,
        data_root=evaluate_data_root,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo evaluate --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--method {wildcards.method:q} --seed {wildcards.seed} --backbone-dir {input.backbone:q} "
        "--checkpoint {input.checkpoint:q} --benchmark {wildcards.benchmark:q} --data-root {params.data_root:q} "
        "--out {output.json:q} 2>&1 | tee -a {log:q}"


rule tune_report:
    input:
        tune_report_inputs,
    output:
        csv=f"{RESULTS}/{{backbone}}/tuning.csv",
        md=f"{RESULTS}/{{backbone}}/tuning.md",
    log:
        f"{LOGS}/tune_report/{{backbone}}.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
        config=tune_report_config,
        results=results_root,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo tune-report --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--results {params.results:q} --out-csv {output.csv:q} --out-md {output.md:q} 2>&1 | tee {log:q}"
