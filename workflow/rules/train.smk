# RL training: one job per (backbone, method, seed); an ablation arm is a method here ({method} = the arm,
# `--method ITS_METHOD --arm ARM`). The checkpoint directory
# appears only when training has finished; periodic checkpoints live beside
# it in train_state/checkpoint/{fingerprint}/, which is not a declared output, so a killed
# or preempted job (SIGTERM: checkpoint, exit 143) resumes where it stopped
# when rerun with the same settings, and starts over after a config change.


rule train:
    input:
        backbone=train_backbone_input,
        data=train_data_dir,
    output:
        directory(f"{RESULTS}/{{backbone}}/{{method}}/seed{{seed}}/checkpoint"),
    log:
        f"{LOGS}/train/{{backbone}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/train/{{backbone}}/{{method}}/seed{{seed}}.tsv"
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    params:
        code=CODE,
        config=train_config,
        launcher=train_launcher,
        method=method_arg,
    # SLURM's SIGTERM (preemption, time limit, scancel) reaches every process of the job: the shell
    # (trap :) and tee (trap '') outlive it, so the trainer can checkpoint, print and exit 143.
    shell:
        "trap : TERM; OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "{params.launcher} train --config-json {params.config:q} "
        "--backbone {wildcards.backbone:q} {params.method} --seed {wildcards.seed} "
        "--backbone-dir {input.backbone:q} --data {input.data:q} --out {output:q} "
        "2>&1 | (trap '' TERM; exec tee -a {log:q})"


# ATP-Latent's supervised stage, once per backbone: the conditional VAE whose
# policy, heads and decoder its RL (rule train, method atp_latent) starts from.
# It heads the longest chain (SFT -> RL -> evaluations), so it starts before the
# other trainings: last, it would leave one core idle for its whole length.


rule atp_sft:
    input:
        backbone=f"{RESULTS}/backbones/{{backbone}}",
        data=atp_sft_data_dir,
    output:
        directory(f"{RESULTS}/{{backbone}}/atp_latent/sft"),
    log:
        f"{LOGS}/atp_sft/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/atp_sft/{{backbone}}.tsv"
    priority: 10
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("atp_sft")
    resources:
        **rule_resources("atp_sft"),
    params:
        code=CODE,
        config=atp_sft_config,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo atp-sft --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--backbone-dir {input.backbone:q} --data {input.data:q} --out {output:q} 2>&1 | tee {log:q}"
