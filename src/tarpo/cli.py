"""One entry point: `tarpo prepare | backbone | atp-sft | train | evaluate | router-probe | router-figure | summarise |
ablations | tune-report | track | check | schema | methods`.

Every workflow rule calls one of these subcommands; each can also be run by
hand. The configuration comes from a YAML file (`--config`) or, as the
workflow passes it, a JSON string (`--config-json`) holding the part of the
config the job needs.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from pathlib import Path

from tarpo.config import Config, ConfigError, load_config, load_config_json
from tarpo.io import BadInputError, DiskFullError, MissingInputError, io_error_message

log = logging.getLogger(__name__)


def _config(args: argparse.Namespace) -> Config:
    if args.config_json:
        return load_config_json(args.config_json)
    return load_config(args.config)


def _seeded(cfg: Config, seed: int | None) -> Config:
    """`--seed` (default: the config's first of `seeds`) becomes `cfg.seed` for this run: the training RNG,
    batch order and rollout sampling of `train`, the sampling of `evaluate`. (`seed` itself stays the
    backbone warm start's seed; `tarpo backbone` reads it as it is.)"""
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")
    cfg.seed = cfg.seeds[0] if seed is None else seed
    return cfg


def cmd_check(args: argparse.Namespace) -> None:
    """Every check `snakemake -n` runs on the config first (keys, types, ranges, names), with a YAML syntax
    error's file and line, which Snakemake's own message for a --configfile leaves out."""
    cfg = _config(args)
    where = "--config-json" if args.config_json else args.config
    print(f"{where}: ok ({len(cfg.backbones)} backbone(s), {len(cfg.methods)} method(s), "
          f"{len(cfg.evaluate.benchmarks)} benchmark(s), seeds {cfg.seeds}; results under {cfg.results_root}/)")


def cmd_schema(args: argparse.Namespace) -> None:
    from tarpo.config import schema_yaml

    text = schema_yaml()
    if args.out:
        from tarpo.io import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)


def cmd_prepare(args: argparse.Namespace) -> None:
    """A configured synthetic dataset: generate its splits. A registry training set
    (gsm8k_train, math_train, dapo_math_17k): export its normalised rows to train.jsonl."""
    from tarpo.data.benchmarks import TRAIN_SETS

    cfg = _config(args)
    if args.dataset in cfg.datasets:
        from tarpo.data.synthetic import SPLITS, prepare_dataset
        from tarpo.io import read_jsonl

        prepare_dataset(cfg.datasets[args.dataset], Path(args.out))
        files = [Path(args.out) / f"{split}.jsonl" for split in SPLITS]
        log.info(f"{args.dataset}: wrote " + ", ".join(f"{path} ({len(read_jsonl(path))} problems)" for path in files))
    elif args.dataset in TRAIN_SETS:
        from tarpo.data.benchmarks import load_benchmark
        from tarpo.io import atomic_dir, write_jsonl

        rows = load_benchmark(args.dataset, overrides=cfg.benchmarks)
        with atomic_dir(Path(args.out)) as tmp:
            write_jsonl(tmp / "train.jsonl", rows)
        log.info(f"{args.dataset}: wrote {Path(args.out) / 'train.jsonl'} ({len(rows)} training problems)")
    else:
        raise ConfigError(
            f"unknown dataset '{args.dataset}'; configured: {sorted(cfg.datasets)}, registry training sets: {list(TRAIN_SETS)}"
        )


def cmd_backbone(args: argparse.Namespace) -> None:
    from tarpo.backbone import build_backbone

    cfg = _config(args)
    build_backbone(cfg, args.backbone, Path(args.data) if args.data else None, Path(args.out))


def cmd_methods(args: argparse.Namespace) -> None:
    from tarpo.methods import all_methods

    for m in all_methods():
        facts = ["trained" if m.trained else "untrained baseline", f"mode {m.mode.__name__}"]
        facts += ["starts from its SFT stage"] * m.sft_stage + ["soft/discrete per step"] * m.soft_positions
        defaults = ", ".join(f"{k}={v}" for k, v in m.train_defaults.items())
        print(f"{m.name:12s} {m.label:12s} {'; '.join(facts)}" + (f"; fixes {defaults}" if defaults else ""))


def cmd_atp_sft(args: argparse.Namespace) -> None:
    from tarpo.atp_sft import run_sft

    cfg = _config(args)
    if "atp_latent" not in cfg.methods:  # the stage is ATP-Latent's (its registry entry: sft_stage)
        raise ConfigError("atp-sft prepares the method atp_latent, which the config's `methods` does not list")
    run_sft(cfg, args.backbone, Path(args.backbone_dir), Path(args.data), Path(args.out))


def _arm(cfg: Config, args: argparse.Namespace) -> str:
    """What runs: `--method`, or with `--arm` that ablation arm of the config (an arm of `--method`)."""
    if not args.arm:
        return args.method
    if args.arm not in cfg.ablations:
        raise ConfigError(f"--arm {args.arm}: the config's `ablations` has no such arm"
                          + (f" ({', '.join(cfg.ablations)})" if cfg.ablations else " (it has none)"))
    if cfg.ablations[args.arm].method != args.method:
        raise ConfigError(f"--arm {args.arm} is an arm of '{cfg.ablations[args.arm].method}', not of --method "
                          f"{args.method}")
    return args.arm


def cmd_train(args: argparse.Namespace) -> None:
    from tarpo.trainer import train

    cfg = _seeded(_config(args), args.seed)
    train(cfg, args.backbone, _arm(cfg, args), Path(args.backbone_dir), Path(args.data), Path(args.out))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tarpo.evaluate import evaluate

    cfg = _seeded(_config(args), args.seed)
    evaluate(
        cfg,
        backbone=args.backbone,
        method=_arm(cfg, args),
        backbone_dir=Path(args.backbone_dir),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        benchmark=args.benchmark,
        data_root=Path(args.data_root or f"{cfg.results_root}/data"),
        out_json=Path(args.out),
    )


def cmd_router_probe(args: argparse.Namespace) -> None:
    from tarpo.router_probe import probe

    cfg = _seeded(_config(args), args.seed)
    out = probe(cfg, backbone=args.backbone, method=_arm(cfg, args), backbone_dir=Path(args.backbone_dir),
                checkpoint=Path(args.checkpoint), benchmark=args.benchmark,
                data_root=Path(args.data_root or f"{cfg.results_root}/data"), out_json=Path(args.out))
    log.info(f"router probe {args.backbone}/{out['method']} seed {cfg.seed}: {out['n_problems']} problems x "
             f"{out['k']}, pass@1 before {out['before']['pass@1']:.3f}, after {out['after']['pass@1']:.3f} "
             f"-> {args.out}")


def cmd_router_figure(args: argparse.Namespace) -> None:
    from tarpo.router_probe import router_outputs

    table = router_outputs([Path(p) for p in args.probes], Path(args.out_csv), Path(args.out_png), args.title)
    log.info(f"router figure: {table.method.nunique()} method(s) -> {args.out_csv}, {args.out_png}")


def cmd_summarise(args: argparse.Namespace) -> None:
    from tarpo.plots import summarise

    cfg = _config(args)
    results = Path(args.results or cfg.results_root)
    if not args.page and not args.out:
        raise ConfigError("tarpo summarise needs --out (figures and tables) or --page (the results page)")
    if args.page:
        from tarpo.tables import results_page

        results_page(cfg, results, Path(args.page))
        log.info(f"summarise: results page -> {args.page}")
    elif args.combined:
        from tarpo.plots import combined_table

        combined_table(cfg, results, Path(args.out))
    else:
        summarise(cfg, results, Path(args.out), backbones=args.backbone)


def cmd_ablations(args: argparse.Namespace) -> None:
    from tarpo.ablations import write_ablations

    cfg = _config(args)
    if args.backbone not in cfg.backbones:
        raise ConfigError(f"unknown backbone '{args.backbone}'; configured: {sorted(cfg.backbones)}")
    results = Path(args.results or cfg.results_root)
    frame = write_ablations(cfg, results, args.backbone, Path(args.out_csv), Path(args.out_dir))
    log.info(f"ablations {args.backbone}: {frame.method.nunique()} arm(s), {len(frame)} comparison(s) -> "
             f"{args.out_csv}, {Path(args.out_dir) / 'ablations.md'}")


def cmd_tune_report(args: argparse.Namespace) -> None:
    from tarpo.tuning import write_report

    cfg = _config(args)
    rows = write_report(cfg, args.backbone, Path(args.results or cfg.results_root), Path(args.out_csv),
                        Path(args.out_md))
    for r in rows:
        if r.chosen:
            log.info(f"tune-report {args.backbone}/{r.method}: chose {r.trial} (validation pass@1 {r.score.mean:.3f})")


def cmd_track(args: argparse.Namespace) -> int | None:
    """--replay: the records jobs saved while the store was unusable, into the store; else the store's UI addresses."""
    from tarpo import tracking

    if not args.replay:
        return tracking.main(["--results-dir", args.results])
    replayed, left = tracking.replay_pending(args.results)
    pending = Path(args.results) / tracking.PENDING_FILE
    if not replayed and not left:
        print(f"nothing to replay: no {pending}")
    else:
        print(f"replayed {replayed} record(s) into {tracking.tracking_uri(args.results)}"
              + (f"; {left} left in {pending} (see the warnings above)" if left else ""))
    return 1 if left else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tarpo")
    except PackageNotFoundError:  # run from a source tree that was not installed
        from tarpo import __version__

        return __version__


def _subcommand(sub, name: str, help: str, description: str, example: str, parents=()) -> argparse.ArgumentParser:
    """A subcommand with a description and an example (shown by `tarpo NAME --help`)."""
    return sub.add_parser(name, parents=list(parents), help=help, description=description,
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


class BenchmarkChoices:
    """`--benchmark`'s choices: the registry's evaluation benchmarks, and DATASET_val (tuning) / DATASET_test_id /
    DATASET_test_ood for a synthetic dataset (which ones depends on the config, so a name of that form passes
    here and `get_benchmark` checks it against the config). argparse lists them in the help and in its error."""

    SYNTHETIC = re.compile(r".+_(val|test_id|test_ood)")

    def __init__(self, names: list[str] | tuple[str, ...]) -> None:
        self.names = tuple(names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names or bool(self.SYNTHETIC.fullmatch(name)))

    def __iter__(self):
        return iter((*self.names, "DATASET_val", "DATASET_test_id", "DATASET_test_ood"))


def build_parser() -> argparse.ArgumentParser:
    from tarpo.data.benchmarks import EVAL_BENCHMARKS, REGISTRY
    from tarpo.methods import method_names

    trained = method_names(trained=True)
    parser = argparse.ArgumentParser(
        prog="tarpo",
        description="TARPO reproduction pipeline. Normally driven by Snakemake (`snakemake --cores 2 all`), whose "
        "rules each call one subcommand; every step can also be run by hand. `tarpo COMMAND --help` describes "
        "one, with an example.",
        epilog="example:\n  tarpo check --config config/smoke.yaml\n"
               "  tarpo prepare --config config/smoke.yaml --dataset synthetic --out /tmp/data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conf = argparse.ArgumentParser(add_help=False)
    group = conf.add_mutually_exclusive_group()
    group.add_argument("--config", default="config/config.yaml", help="YAML config file (default: %(default)s)")
    group.add_argument("--config-json", help="the config as a JSON string (what the workflow passes)")

    p = _subcommand(sub, "check", "check a config file (what `snakemake -n` checks first)",
                    "Check a config file: unknown keys (with 'did you mean'), types, ranges, backbone / method / "
                    "benchmark names, and a YAML error's file and line.",
                    "tarpo check --config config/paper.yaml", [conf])
    p.set_defaults(func=cmd_check)

    p = _subcommand(sub, "methods", "list the registered methods",
                    "List the method registry (src/tarpo/methods/): each method's label, whether it is trained, "
                    "its mode, whether it starts from a supervised stage, and the training defaults it fixes.",
                    "tarpo methods")
    p.set_defaults(func=cmd_methods)

    p = _subcommand(sub, "schema", "print the config's JSON schema (YAML)",
                    "Print the JSON schema of the config, generated from src/tarpo/config.py (the workflow validates "
                    "against workflow/schemas/config.schema.yaml, which a test keeps equal to this).",
                    "tarpo schema --out workflow/schemas/config.schema.yaml")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = _subcommand(sub, "prepare", "generate a synthetic dataset's splits, or export a registry training set, as JSONL",
                    "Generate a configured synthetic dataset's train / test_id / test_ood splits, or export a "
                    "registry training set (" + ", ".join(n for n, b in REGISTRY.items() if b.distribution == "train")
                    + ") to train.jsonl. Writes the directory atomically and says what it wrote.",
                    "tarpo prepare --config config/smoke.yaml --dataset synthetic --out results/smoke/data/synthetic", [conf])
    p.add_argument("--dataset", default="synthetic", help="dataset name in the config (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="output directory (train/test_id/test_ood .jsonl; train.jsonl only for a registry training set)")
    p.set_defaults(func=cmd_prepare)

    p = _subcommand(sub, "backbone", "build + warm-start the embedded model, or snapshot a hub model",
                    "Build the embedded Qwen2 and its tokenizer and warm-start it on the dataset's train split, or "
                    "resolve a hub backbone's pinned snapshot (offline: from the Hugging Face cache).",
                    "tarpo backbone --config config/smoke.yaml --backbone tiny --data results/smoke/data/synthetic "
                    "--out results/smoke/backbones/tiny", [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--data", help="prepared dataset directory (embedded backbones warm-start on its train split)")
    p.add_argument("--out", required=True, help="output directory (save_pretrained layout)")
    p.set_defaults(func=cmd_backbone)

    p = _subcommand(sub, "atp-sft", "ATP-Latent's supervised stage: a conditional VAE over CoT steps, with its curriculum",
                    "ATP-Latent's supervised stage: train the conditional VAE (policy, latent and stop heads, and "
                    "the decoder that reads latents back) from explicit to fully latent steps; RL starts from it.",
                    "tarpo atp-sft --config config/smoke.yaml --backbone tiny --backbone-dir results/smoke/backbones/tiny "
                    "--data results/smoke/data/synthetic --out results/smoke/tiny/atp_latent/sft", [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--backbone-dir", required=True, help="directory written by `tarpo backbone`")
    p.add_argument("--data", required=True, help="prepared training dataset directory (test_id.jsonl beside it "
                   "serves the checks after training)")
    p.add_argument("--out", required=True, help="output directory: the policy to start RL from, decoder/, "
                   "mode.safetensors, sft.json")
    p.set_defaults(func=cmd_atp_sft)

    p = _subcommand(sub, "train", "RL-train one method on one backbone",
                    "RL-train one method on one backbone with the shared rollout engine and GRPO loss. Checkpoints "
                    "periodically; a rerun with the same settings resumes, SIGTERM checkpoints and exits 143.",
                    "tarpo train --config config/smoke.yaml --backbone tiny --method tarpo --backbone-dir "
                    "results/smoke/backbones/tiny --data results/smoke/data/synthetic --out "
                    "results/smoke/tiny/tarpo/seed0/checkpoint",
                    [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--method", required=True, choices=trained, help="one of: %(choices)s")
    p.add_argument("--arm", help="train this ablation arm of the config (`ablations`; an arm of --method): the "
                   "method with the arm's overrides, named by the arm")
    p.add_argument("--backbone-dir", required=True,
                   help="directory written by `tarpo backbone` (for atp_latent: by `tarpo atp-sft`)")
    p.add_argument("--data", required=True, help="prepared training dataset directory")
    p.add_argument("--out", required=True, help="checkpoint directory; a rerun resumes from it")
    p.add_argument("--seed", type=int, help="training seed (default: the first of the config's `seeds`)")
    p.set_defaults(func=cmd_train)

    p = _subcommand(sub, "evaluate", "sample k completions per problem and score them",
                    "Sample k completions per problem of one benchmark and score them: pass@k with 95% CIs, tokens, "
                    "lucky share; samples and an HTML view beside the JSON. Resumes a killed run per problem.",
                    "tarpo evaluate --config config/smoke.yaml --backbone tiny --method cot --backbone-dir "
                    "results/smoke/backbones/tiny --benchmark synthetic_test_id --out /tmp/eval/synthetic_test_id.json",
                    [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--method", required=True, choices=method_names(),
                   help="an untrained baseline (cot: the bare backbone) or a trained method: %(choices)s")
    p.add_argument("--backbone-dir", required=True,
                   help="directory written by `tarpo backbone` (for atp_latent: by `tarpo atp-sft`)")
    p.add_argument("--arm", help="an ablation arm of the config (`ablations`; an arm of --method), evaluated from "
                   "its checkpoint and named by the arm")
    p.add_argument("--checkpoint", help="checkpoint directory of the trained method (omit for cot)")
    p.add_argument("--benchmark", required=True, choices=BenchmarkChoices(EVAL_BENCHMARKS), metavar="BENCHMARK",
                   help="one of: %(choices)s (DATASET: a synthetic dataset of the config)")
    p.add_argument("--data-root", help="where prepared datasets live (default: the config's results root's data/, "
                   "results/NAME/data)")
    p.add_argument("--out", required=True, help="result JSON; samples go beside it")
    p.add_argument("--seed", type=int, help="sampling seed (default: the first of the config's `seeds`)")
    p.set_defaults(func=cmd_evaluate)

    p = _subcommand(sub, "router-probe", "TARPO's router before and after training: soft ratio by position, "
                    "entropy and correctness",
                    "Sample the config's `router.problems` problems x `router.k` of one benchmark from a trained "
                    "TARPO policy and from the same backbone with the router at its initialisation, and count each "
                    "thinking step's soft flag and router probability by relative position, next-token entropy "
                    "and the sample's correctness (tarpo.router_probe). Writes one JSON.",
                    "tarpo router-probe --config config/smoke.yaml --backbone tiny --method tarpo --backbone-dir "
                    "results/smoke/backbones/tiny --checkpoint results/smoke/tiny/tarpo/seed0/checkpoint "
                    "--benchmark synthetic_test_id --out /tmp/router.json", [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--method", default="tarpo", choices=["tarpo"], help="the routed method (default: %(default)s)")
    p.add_argument("--arm", help="an ablation arm of tarpo (the config's `ablations`), probed from its checkpoint")
    p.add_argument("--backbone-dir", required=True, help="directory written by `tarpo backbone`")
    p.add_argument("--checkpoint", required=True, help="the trained run's checkpoint directory")
    p.add_argument("--benchmark", required=True, choices=BenchmarkChoices(EVAL_BENCHMARKS), metavar="BENCHMARK",
                   help="one of: %(choices)s (DATASET: a synthetic dataset of the config)")
    p.add_argument("--data-root", help="where prepared datasets live (default: results/NAME/data)")
    p.add_argument("--out", required=True, help="the probe's JSON")
    p.add_argument("--seed", type=int, help="the run's training seed, also the sampling seed (default: the first "
                   "of the config's `seeds`)")
    p.set_defaults(func=cmd_router_probe)

    p = _subcommand(sub, "router-figure", "the router table and figure from probe JSONs",
                    "Pool `tarpo router-probe` JSONs (every seed of every routed method or arm of a backbone) into a "
                    "table (soft ratio per bin with its 95% interval over seeds and problems, mean router "
                    "probability) and a three-panel figure (position, entropy, correctness; before and after).",
                    "tarpo router-figure --probes results/smoke/tiny/tarpo/seed0/router.json --out-csv /tmp/router.csv "
                    "--out-png /tmp/router.png")
    p.add_argument("--probes", nargs="+", required=True, help="probe JSONs")
    p.add_argument("--out-csv", required=True, help="the table")
    p.add_argument("--out-png", required=True, help="the figure")
    p.add_argument("--title", default="", help="the figure's title")
    p.set_defaults(func=cmd_router_figure)

    p = _subcommand(sub, "summarise", "tables and figures from every evaluation",
                    "Tables (Markdown, LaTeX, HTML, CSV) with 95% CIs, paired comparisons and figures from every "
                    "evaluation of a backbone; or the all-backbone tables (--combined); or the results page (--page).",
                    "tarpo summarise --config config/smoke.yaml --out results/smoke/figures", [conf])
    p.add_argument("--results", help="results root (default: the config's, results/NAME)")
    p.add_argument("--out", help="figures and tables go to OUT/{backbone}/ (OUT/tables/: all backbones)")
    p.add_argument("--backbone", action="append",
                   help="summarise only this backbone (repeatable); default: every configured backbone, then the "
                   "all-backbone table")
    p.add_argument("--combined", action="store_true",
                   help="only the all-backbone tables OUT/tables/main.*, paired.*, from each "
                   "RESULTS/{backbone}/summary.csv, paired.csv")
    p.add_argument("--page", help="only the Markdown results page, written to PAGE (from each "
                   "RESULTS/{backbone}/summary.csv, paired.csv and the evaluations)")
    p.set_defaults(func=cmd_summarise)

    p = _subcommand(sub, "ablations", "table each ablation arm minus its method (paired by seed and problem)",
                    "Read every ablation arm's and its method's evaluations (the config's `ablations`, "
                    "RESULTS/{backbone}/{arm}/seed{seed}/eval/...) and write the ablation table: arm minus method, "
                    "Pass@1 in points per benchmark and split average, with the seed-level 95% interval, p-value "
                    "and Holm's adjusted p over the backbone's arms.",
                    "tarpo ablations --config config/smoke.yaml --backbone tiny "
                    "--out-csv results/smoke/tiny/ablations.csv --out-dir results/smoke/figures/tiny/tables", [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--results", help="results root (default: the config's, results/NAME)")
    p.add_argument("--out-csv", required=True, help="one row per arm and benchmark / split average (paired.csv's "
                   "columns, comparison 'ablation')")
    p.add_argument("--out-dir", required=True, help="ablations.md, .tex and .html go here")
    p.set_defaults(func=cmd_ablations)

    p = _subcommand(sub, "tune-report", "table the tuning trials' validation pass@1 and choose each method's",
                    "Read every tuned method x trial x seed evaluation on the config's validation benchmark "
                    "(`tuning`, RESULTS/{backbone}/tune/...) and write the table: mean pass@1 over seeds with its "
                    "95% interval, and each method's chosen trial (the highest mean; a tie goes to the earlier "
                    "grid point). Test splits are never read.",
                    "tarpo tune-report --config config/smoke.yaml --backbone tiny "
                    "--out-csv results/smoke/tiny/tuning.csv --out-md results/smoke/tiny/tuning.md", [conf])
    p.add_argument("--backbone", required=True, help="backbone name in the config")
    p.add_argument("--results", help="results root (default: the config's, results/NAME)")
    p.add_argument("--out-csv", required=True, help="one row per method x trial (the grid values, pass1, low, "
                   "high, n_seeds, n_problems, chosen)")
    p.add_argument("--out-md", required=True, help="the same table in Markdown, with the procedure and budget")
    p.set_defaults(func=cmd_tune_report)

    p = _subcommand(sub, "track", "the MLflow store: replay the records jobs saved while it was unusable",
                    "A job whose MLflow store (results/mlflow.db, or MLFLOW_TRACKING_URI) cannot be opened or "
                    "written warns once, writes its outputs all the same and saves its tracking records to "
                    "RESULTS/mlflow-pending.jsonl; a damaged SQLite store is set aside as mlflow.db.damaged-TIME. "
                    "Once the store is repaired, moved back or left out for a fresh one, --replay logs those "
                    "records into it (those that fail again stay in the file). Without --replay: the store's "
                    "`mlflow ui` addresses.",
                    "tarpo track --replay --results results")
    p.add_argument("--replay", action="store_true", help="log RESULTS/mlflow-pending.jsonl into the store")
    p.add_argument("--results", default="results", help="the directory holding the store, shared by every config's "
                   "root (default: %(default)s)")
    p.set_defaults(func=cmd_track)
    return parser


# What an I/O error (a full disk, EIO, ...) leaves intact, by subcommand: every output is written atomically,
# so an earlier one stays whole, and the resumable jobs keep their progress.
INTACT = {
    "prepare": "--out is replaced only once complete, so an earlier one is intact",
    "backbone": "--out is replaced only once complete, so an earlier one is intact",
    "atp-sft": "--out is replaced only once complete, so an earlier one is intact",
    "train": "--out appears only once complete; the last complete periodic checkpoint is intact and a rerun "
             "resumes from it",
    "evaluate": "finished problems are kept in the .samples.jsonl.partial beside --out and a rerun resumes from them",
    "summarise": "the evaluations are intact and each table is written whole or not at all; a rerun rewrites them",
    "tune-report": "the evaluations are intact; a rerun rewrites the table",
    "router-probe": "the checkpoint is intact; the JSON is written whole or not at all, so a rerun redoes it",
    "router-figure": "the probes are intact; a rerun rewrites the table and figure",
    "ablations": "the evaluations are intact and each table is written whole or not at all; a rerun rewrites them",
    "track": "the pending records are kept until they reach the store",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tarpo.allocator import keep_freed_memory
    from tarpo.console import setup_logging

    setup_logging()
    keep_freed_memory()  # CPU steps stop re-faulting their activations in (tarpo.allocator)
    try:
        code = args.func(args)
    except ConfigError as err:
        print(f"tarpo: config error: {err}", file=sys.stderr)
        return 2
    except BadInputError as err:  # there but unusable: a malformed file, rows without the fields
        print(f"tarpo: bad input: {err}", file=sys.stderr)
        return 4
    except MissingInputError as err:
        print(f"tarpo: missing input: {err}", file=sys.stderr)
        return 3
    except DiskFullError as err:  # the message names what was being written and what a rerun resumes from
        print(f"tarpo: {err}", file=sys.stderr)
        return 5
    except OSError as err:  # any subcommand: a full disk or another I/O error is one line, not a traceback
        print(f"tarpo: {io_error_message(err, INTACT.get(args.command, ''))}", file=sys.stderr)
        return 5 if err.errno in (errno.ENOSPC, errno.EDQUOT) else 6
    return code or 0


if __name__ == "__main__":
    raise SystemExit(main())
