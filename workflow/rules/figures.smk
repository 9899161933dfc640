# Tables and figures (`tarpo summarise`). One job per backbone reads that
# backbone's evaluations (JSON + samples, every seed) and training metrics and writes,
# under the config's root ({root} = results/{name}, common.smk),
#
#   {root}/{backbone}/summary.csv                      long format, every eval metric with its 95% CI
#                                                       (over problems and seeds) + split averages
#   {root}/{backbone}/paired.csv                       paired comparisons (vs CoT, vs GRPO, best vs runner-up)
#   {root}/figures/{backbone}/tables/main.{csv,md,tex,html}
#                                                       method x benchmark Pass@1 / Pass@k ± CI (split averages
#                                                       where a split has several benchmarks); bold only where
#                                                       the best is significantly above the runner-up
#   {root}/figures/{backbone}/tables/paired.{md,tex,html}
#                                                       method - CoT / - GRPO: delta, 95% CI, p-value
#   {root}/figures/{backbone}/{figure}.png             the figures below (in the --report)
#
# `tables` puts every backbone into {root}/figures/tables/main.* and paired.*,
# and `results_page` writes the Markdown results page to the config's
# `results_page` (config/config.yaml: the tracked docs/results.md; other
# configs: {root}/figures/tables/results.md). All are cheap: they only read results. `snakemake --report FILE.html`
# collects the figures and the tables with their captions (workflow/report/*.rst;
# the report's front page, workflow.rst, is set in the Snakefile). The tables
# enter the report as HTML pages (main.html, paired.html), which it displays;
# the CSV, Markdown and LaTeX versions sit beside them.

# Not in the config's `resources` (ResourcesConfig has no entry for it): the
# job plots and reads JSON, one CPU thread and a few GB at most at paper scale.
SUMMARISE_RESOURCES = {"mem_mb": 4000, "runtime": 30, "gpu": 0}


rule summarise:
    input:
        unpack(summarise_inputs),
    output:
        summary=f"{RESULTS}/{{backbone}}/summary.csv",
        paired=f"{RESULTS}/{{backbone}}/paired.csv",
        tables=multiext(f"{FIGURES_DIR}/{{backbone}}/tables/main", ".csv", ".md", ".tex", ".html"),
        paired_tables=multiext(f"{FIGURES_DIR}/{{backbone}}/tables/paired", ".md", ".tex", ".html"),
        positions=f"{FIGURES_DIR}/{{backbone}}/soft_position.csv",
        training_dynamics=report_figure("training_dynamics", "training dynamics"),
        pass_at_k=report_figure("pass_at_k", "Pass@k curves"),
        token_efficiency=report_figure("token_efficiency", "token efficiency"),
        soft_position=report_figure("soft_position", "soft ratio by position"),
    log:
        f"{LOGS}/summarise/{{backbone}}.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
        config=summarise_config,
        results=results_root,
        figures=figures_root,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo summarise --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--results {params.results:q} --out {params.figures:q} 2>&1 | tee {log:q}"


rule tables:
    input:
        expand(f"{RESULTS}/{{backbone}}/{{name}}.csv", backbone=BACKBONES, name=["summary", "paired"]),
    output:
        csv=f"{FIGURES_DIR}/tables/main.csv",
        md=f"{FIGURES_DIR}/tables/main.md",
        tex=f"{FIGURES_DIR}/tables/main.tex",
        html=report(
            f"{FIGURES_DIR}/tables/main.html",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "main results, every backbone"},
        ),
        paired=f"{FIGURES_DIR}/tables/paired.md",
        paired_tex=f"{FIGURES_DIR}/tables/paired.tex",
        paired_html=report(
            f"{FIGURES_DIR}/tables/paired.html",
            caption="../report/paired.rst",
            category="Tables",
            labels={"table": "paired comparisons, every backbone"},
        ),
    log:
        f"{LOGS}/summarise/tables.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
        config=summarise_config,
        results=results_root,
        figures=figures_root,
    shell:
        "PYTHONUNBUFFERED=1 tarpo summarise --config-json {params.config:q} --combined "
        "--results {params.results:q} --out {params.figures:q} 2>&1 | tee {log:q}"


# The results page (README, "Results"): main table with CIs, paired table,
# lucky share, tokens, soft ratio / gate, precision, and the machine the
# evaluations ran on. It reads the summaries and, for the machine, the
# evaluation JSONs.
rule results_page:
    input:
        summaries=expand(f"{RESULTS}/{{backbone}}/{{name}}.csv", backbone=BACKBONES, name=["summary", "paired"]),
        evals=[e for b in BACKBONES for e in backbone_eval_jsons(b)],
        ablations=[ablations_csv(b) for b in BACKBONES] if ARMS else [],
    output:
        CFG.results_page,
    log:
        f"{LOGS}/summarise/results_page.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
        config=results_page_config,
        results=results_root,
    shell:
        "PYTHONUNBUFFERED=1 tarpo summarise --config-json {params.config:q} --results {params.results:q} "
        "--page {output:q} 2>&1 | tee {log:q}"


# The ablation table (tarpo.ablations): per backbone, each arm of the config's `ablations` minus its method,
# Pass@1 per benchmark and split average, paired by seed and problem, Holm-adjusted over the backbone's arms:
#
#   {root}/{backbone}/ablations.csv                                one row per arm and benchmark / split average
#   {root}/figures/{backbone}/tables/ablations.{md,tex,html}      the table (the HTML in the --report)
#
# `snakemake ablations` (every backbone) or `ablations_<backbone>` builds the arms' chains and their tables;
# `all` includes them when the config has arms, and the results page gets an "Ablations" section.


rule ablations:
    input:
        ablation_targets(BACKBONES),


for _backbone in BACKBONES:

    rule:
        name:
            f"ablations_{_backbone}"
        input:
            ablation_targets([_backbone]),


rule ablations_table:
    input:
        ablations_inputs,
    output:
        csv=f"{RESULTS}/{{backbone}}/ablations.csv",
        md=f"{FIGURES_DIR}/{{backbone}}/tables/ablations.md",
        tex=f"{FIGURES_DIR}/{{backbone}}/tables/ablations.tex",
        html=report(
            f"{FIGURES_DIR}/{{backbone}}/tables/ablations.html",
            caption="../report/ablations.rst",
            category="Tables",
            subcategory="{backbone}",
            labels={"table": "ablations", "backbone": "{backbone}"},
        ),
    log:
        f"{LOGS}/summarise/ablations/{{backbone}}.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
        config=ablations_config,
        results=results_root,
        tables=ablations_tables_dir,
    shell:
        "PYTHONUNBUFFERED=1 tarpo ablations --config-json {params.config:q} --backbone {wildcards.backbone:q} "
        "--results {params.results:q} --out-csv {output.csv:q} --out-dir {params.tables:q} 2>&1 | tee {log:q}"
