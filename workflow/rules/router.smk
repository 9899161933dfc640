# TARPO's router, before and after training (tarpo.router_probe). For every TARPO run (the method and its
# ablation arms) and seed, one probe samples `router.problems` problems x `router.k` of the first
# in-distribution test benchmark from the trained policy and from the backbone with the router at its
# initialisation, and counts the soft steps by relative position, next-token entropy and correctness:
#
#   {root}/{backbone}/{method}/seed{seed}/router.json     the probe's per-problem counts per bin
#   {root}/{backbone}/router.csv                           soft ratio per bin, 95% CI over seeds and problems
#   {root}/figures/{backbone}/router.png                   the figure (in the --report)
#
# `all` includes them when the config trains TARPO and `router.problems` > 0.


rule router_probe:
    input:
        unpack(router_inputs),
    output:
        f"{RESULTS}/{{backbone}}/{{method}}/seed{{seed}}/router.json",
    log:
        f"{LOGS}/router/{{backbone}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS_DIR}/router/{{backbone}}/{{method}}/seed{{seed}}.tsv"
    wildcard_constraints:
        method=one_of(ROUTED),
    conda:
        "../../envs/tarpo.yaml"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        code=CODE,
        config=router_config,
        method=method_arg,
        benchmark=router_benchmark(),
        data_root=evaluate_data_root,
    shell:
        "OMP_NUM_THREADS={threads} PYTHONUNBUFFERED=1 "
        "tarpo router-probe --config-json {params.config:q} --backbone {wildcards.backbone:q} {params.method} "
        "--seed {wildcards.seed} --backbone-dir {input.backbone:q} --checkpoint {input.checkpoint:q} "
        "--benchmark {params.benchmark:q} --data-root {params.data_root:q} --out {output:q} 2>&1 | tee {log:q}"


rule router_figure:
    input:
        router_probes,
    output:
        csv=f"{RESULTS}/{{backbone}}/router.csv",
        png=report(
            f"{FIGURES_DIR}/{{backbone}}/router.png",
            caption="../report/router.rst",
            category="Figures",
            subcategory="{backbone}",
            labels={"backbone": "{backbone}", "figure": "router before and after training"},
        ),
    log:
        f"{LOGS}/router/{{backbone}}/figure.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        **SUMMARISE_RESOURCES,
    params:
        code=CODE,
    shell:
        "PYTHONUNBUFFERED=1 tarpo router-figure --probes {input:q} --out-csv {output.csv:q} --out-png {output.png:q} "
        "--title {wildcards.backbone:q} 2>&1 | tee {log:q}"
