# Runtime and memory. Every job that does real work (prepare, backbone,
# atp_sft, train, evaluate, router_probe) has a `benchmark:` record, which Snakemake writes
# when the job ends: {root}/benchmarks/{rule}/... beside the job's log in
# {root}/logs/{rule}/..., one TSV row with wall-clock and CPU seconds and peak
# memory. Rule runtime puts the records of the config's jobs into one table,
#
#   {root}/benchmarks/runtime.tsv     one row per job (empty fields: no record)
#   {root}/benchmarks/runtime.html    totals per rule, then the jobs (in the --report)
#
# Its inputs are the jobs' outputs, not the records: it runs after every
# costly job and again when one is rebuilt, and a missing record (a job built
# before records were kept, or restored with DVC, which versions none) never
# makes Snakemake rerun that job. Cheap (a local rule), so part of `all`.


localrules:
    runtime,


rule runtime:
    input:
        [output for output, _ in costly_jobs()],
    output:
        tsv=f"{BENCHMARKS_DIR}/runtime.tsv",
        html=report(
            f"{BENCHMARKS_DIR}/runtime.html",
            category="Runtime",
            labels={"table": "runtime and memory per job"},
        ),
    log:
        f"{LOGS}/runtime.log",
    conda:
        "../../envs/tarpo.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        records=[record for _, record in costly_jobs()],
    script:
        "../scripts/runtime_table.py"
