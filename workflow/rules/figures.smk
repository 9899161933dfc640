# Figures and tables: one summarise job per backbone (its figures, its
# summary.csv), then the all-backbone table. `snakemake --report report.html`
# collects every figure with its caption from workflow/report/.

FIGURES = ["training_dynamics", "pass_at_k", "token_efficiency", "soft_position"]


rule summarise:
    input:
        unpack(summarise_inputs),
    output:
        summary=f"{RESULTS}/{{backbone}}/summary.csv",
        figures=[
            report(f"{RESULTS}/figures/{{backbone}}/{fig}.png", caption=f"../report/{fig}.rst",
                   category="{backbone}")
            for fig in FIGURES
        ],
        tables=multiext(f"{RESULTS}/figures/{{backbone}}/tables/main", ".csv", ".md", ".tex"),
    params:
        config=summarise_config,
    log:
        f"{LOGS}/summarise/{{backbone}}.log",
    shell:
        "PYTHONUNBUFFERED=1 tarpo summarise --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--results {RESULTS} --out {RESULTS}/figures 2>&1 | tee {log:q}"


rule tables:
    input:
        expand(f"{RESULTS}/{{backbone}}/summary.csv", backbone=BACKBONES),
    output:
        report(multiext(f"{RESULTS}/figures/tables/main", ".csv", ".md", ".tex"),
               caption="../report/tables.rst", category="tables"),
    params:
        config=lambda wildcards: _slice(backbones={b: to_dict(bb) for b, bb in CFG.backbones.items()},
                                        methods=METHODS, datasets=DATASETS, sections=["evaluate"]),
    log:
        f"{LOGS}/summarise/tables.log",
    shell:
        "tarpo summarise --config-json {params.config:q} --combined --results {RESULTS} "
        "--out {RESULTS}/figures 2>&1 | tee {log:q}"
