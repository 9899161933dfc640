"""Rule runtime: the runtime and memory of a config's costly jobs, as one table.

Run by Snakemake's `script:` directive, which sets `snakemake`: params.records
lists the `benchmark:` record (a one-row TSV Snakemake writes when the job
ends) of every prepare, backbone, atp_sft, train, evaluate and router_probe job of the
config, in pipeline order, each at results/{name}/benchmarks/{rule}/{job}.tsv.
Writes output.tsv (one row per job) and output.html (totals per rule, then
the jobs) for the report. A job without a record (built before records were
kept, or restored with DVC, which does not version them) keeps its row with
the fields empty.
"""

import html
from pathlib import Path

import pandas as pd

# Snakemake's column -> ours (seconds; memory and I/O in MB, as Snakemake reports them).
COLUMNS = {
    "s": "seconds",
    "h:m:s": "h:m:s",
    "cpu_time": "cpu_seconds",
    "max_rss": "max_rss_mb",
    "max_uss": "max_uss_mb",
    "mean_load": "mean_load",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
}


def read_record(path: Path) -> dict:
    """A record's fields under our names; {} for a missing or empty record. With `repeat()`, the last run."""
    if not path.is_file():
        return {}
    rec = pd.read_csv(path, sep="\t")
    if rec.empty:
        return {}
    row = rec.iloc[-1]
    return {ours: row[theirs] for theirs, ours in COLUMNS.items() if theirs in rec.columns}


def job_table(records: list[str], root: Path) -> pd.DataFrame:
    rows = []
    for record in map(Path, records):
        rule, *job = record.relative_to(root).with_suffix("").parts
        rows.append({"rule": rule, "job": "/".join(job), **read_record(record)})
    table = pd.DataFrame(rows, columns=["rule", "job", *COLUMNS.values()])
    return table.astype({c: "float64" for c in COLUMNS.values() if c != "h:m:s"})


def hms(seconds: float) -> str:
    """12345.6 -> '3:25:46'; '' for no value."""
    if pd.isna(seconds):
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def rule_totals(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, how many have a record, their summed and longest wall-clock time, the peak memory."""
    by_rule = jobs.groupby("rule", sort=False)
    return pd.DataFrame(
        {
            "jobs": by_rule.size(),
            "recorded": by_rule["seconds"].count(),
            "total h:m:s": by_rule["seconds"].sum(min_count=1).map(hms),
            "longest job h:m:s": by_rule["seconds"].max().map(hms),
            "peak max_rss_mb": by_rule["max_rss_mb"].max(),
        }
    ).reset_index()


def per_method_seed(jobs: pd.DataFrame) -> pd.DataFrame:
    """CPU-seconds per (backbone, method, seed): its training and its evaluations, what one more seed costs.
    Jobs are named {backbone}/{method}/seed{seed}[/{benchmark}]; a (method, seed) without records is left out."""
    rows = jobs[jobs["rule"].isin(["train", "evaluate"]) & jobs["cpu_seconds"].notna()]
    parts = rows["job"].str.split("/")
    rows = rows.assign(backbone=parts.str[0], method=parts.str[1], seed=parts.str[2])
    cpu = rows.pivot_table(index=["backbone", "method", "seed"], columns="rule", values="cpu_seconds", aggfunc="sum",
                           sort=False)
    out = pd.DataFrame(index=cpu.index)
    out["train cpu_seconds"] = cpu["train"] if "train" in cpu else float("nan")
    out["evaluate cpu_seconds"] = cpu["evaluate"] if "evaluate" in cpu else float("nan")
    out["evaluations"] = rows[rows["rule"] == "evaluate"].groupby(["backbone", "method", "seed"], sort=False).size()
    out["cpu_seconds"] = out[["train cpu_seconds", "evaluate cpu_seconds"]].sum(axis=1, min_count=1)
    return out.reset_index()


def write_html(path: Path, totals: pd.DataFrame, jobs: pd.DataFrame, root: Path) -> None:
    recorded, n = int(jobs["seconds"].count()), len(jobs)
    fmt = {"float_format": lambda x: f"{x:,.2f}", "na_rep": "", "index": False, "border": 0}
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Runtime and memory per job</title>\n"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin-bottom:2em}"
        "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}</style></head><body>\n"
        "<h2>Runtime and memory per rule</h2>\n"
        f"<p>{recorded} of {n} jobs have a record (Snakemake's <code>benchmark:</code>: wall-clock and CPU "
        "seconds, peak resident memory of the job's processes in MB; GPU memory is not measured). Jobs "
        "without one were built before records were kept, or restored with DVC.</p>\n"
        + totals.to_html(**fmt)
        + "\n<h2>CPU-seconds per (method, seed)</h2>\n<p>A method's training and its evaluations: what one more "
        "training seed costs.</p>\n"
        + per_method_seed(jobs).to_html(**fmt)
        + "\n<h2>Jobs</h2>\n"
        + jobs.to_html(**fmt)
        + f"\n<p>Records: <code>{html.escape(str(root))}/{{rule}}/{{job}}.tsv</code></p>\n</body></html>\n"
    )


if __name__ == "__main__":
    sm = snakemake  # noqa: F821 (set by Snakemake's script: directive)
    out_tsv, out_html = Path(sm.output.tsv), Path(sm.output.html)
    root = out_tsv.parent  # results/{name}/benchmarks, where the records are
    jobs = job_table(list(sm.params.records), root)
    totals = rule_totals(jobs)
    jobs.to_csv(out_tsv, sep="\t", index=False, na_rep="")
    write_html(out_html, totals, jobs, root)
    with open(sm.log[0], "w") as log:
        print(f"{int(jobs['seconds'].count())} of {len(jobs)} jobs have a runtime record", file=log)
        print(totals.to_string(index=False), file=log)
        print(per_method_seed(jobs).to_string(index=False), file=log)
