#!/usr/bin/env python3
"""Look at the MLflow runs table the way a user does: serve the store with `mlflow ui`, open an
experiment's runs table in headless Chromium, save a screenshot and the page's DOM.

    tools/mlflow_screenshot.py                                  # results/mlflow.db, the first experiment with runs
    tools/mlflow_screenshot.py --results-dir results --experiment smoke --out mlflow_runs.png --dom mlflow_runs.html

It starts `mlflow ui --backend-store-uri sqlite:///<results>/mlflow.db` (the README's command) on a
free localhost port, loads `tarpo.tracking.ui_url` (the runs table in MLflow 3's "Model training"
mode), writes the PNG (and the DOM with --dom), stops the server, and checks the DOM: exit 0 when
every top-level run of the experiment is listed and the table counts all its runs (nested ones
included), 1 otherwise, 2 when Chromium (`apt-get install chromium`, or $CHROMIUM) or the store is
missing. tests/test_mlflow_ui.py runs it when Chromium is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 120
BROWSER_TIMEOUT_S = 120


def find_chromium() -> str | None:
    """$CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("CHROMIUM", "").strip()
    if env:
        return env
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.exists() else "mlflow"


@contextlib.contextmanager
def mlflow_ui(db: Path, log: Path) -> Iterator[str]:
    """`mlflow ui --backend-store-uri sqlite:///<db>` on a free localhost port; yields its base URL.
    The server runs in its own process group (its workers outlive a kill of the parent alone)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [_mlflow(), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # workers left in the group
            os.killpg(proc.pid, signal.SIGKILL)


def browse(chromium: str, url: str, png: Path | None, size: str = "1400,900", budget_ms: int = 15000) -> str:
    """Load `url` in headless Chromium; save a screenshot to `png` (if given); return the rendered DOM."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        common.append(f"--user-data-dir={profile}")  # a fresh profile: what a first-time user sees
        if png is not None:
            subprocess.run([*common, f"--screenshot={png}", url], check=True, capture_output=True,
                           timeout=BROWSER_TIMEOUT_S)
        dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True,
                             timeout=BROWSER_TIMEOUT_S)
    return dom.stdout


def check_dom(dom: str, top_level: list[str], n_runs: int) -> list[str]:
    """What the runs table lacks: top-level run names not shown, or a run count other than `n_runs`."""
    problems = [f"run {name} not listed" for name in top_level if f">{name}<" not in dom]
    count = re.search(r"(\d+)</strong> matching runs", dom)
    if count is None:
        problems.append("no runs table ('N matching runs') on the page")
    elif int(count.group(1)) != n_runs:
        problems.append(f"the table counts {count.group(1)} runs, the store holds {n_runs}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default="results", help="the store is <results-dir>/mlflow.db")
    parser.add_argument("--experiment", help="experiment name (default: the first one with runs)")
    parser.add_argument("--out", default="mlflow_runs.png", help="screenshot file")
    parser.add_argument("--dom", help="also write the rendered page's DOM here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mlflow.tracking import MlflowClient

    from tarpo.tracking import PARENT_TAG, ui_url

    chromium = find_chromium()
    if chromium is None:
        print("no Chromium: apt-get install chromium (or set $CHROMIUM)", file=sys.stderr)
        return 2
    db = (Path(args.results_dir) / "mlflow.db").resolve()
    if not db.exists():
        print(f"no MLflow store at {db}", file=sys.stderr)
        return 2
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exps = [e for e in client.search_experiments(order_by=["creation_time ASC"])
            if (e.name == args.experiment if args.experiment else client.search_runs([e.experiment_id], max_results=1))]
    if not exps:
        print(f"no experiment {args.experiment!r} in {db}" if args.experiment else f"no runs in {db}", file=sys.stderr)
        return 2
    exp = exps[0]
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    top_level = sorted(r.info.run_name for r in runs if PARENT_TAG not in r.data.tags)

    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as tmp, mlflow_ui(db, Path(tmp) / "ui.log") as base:
        url = ui_url(exp.experiment_id, base)
        dom = browse(chromium, url, out)
    if args.dom:
        Path(args.dom).write_text(dom)
    print(f"{exp.name}: {url}\nscreenshot: {out}")
    problems = check_dom(dom, top_level, len(runs))
    for line in problems:
        print(f"MISSING: {line}", file=sys.stderr)
    if not problems:
        print(f"the runs table lists {len(top_level)} top-level runs ({len(runs)} with nested ones): "
              + ", ".join(top_level))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
