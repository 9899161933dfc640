"""Console output of the jobs: `logging` records with time and level, written around the progress bars.

Every module logs through `logging.getLogger(__name__)`; `setup_logging` (the
CLI calls it once) sends the records to stdout, which the workflow's rules
copy into results/NAME/logs/, as `2026-11-24 23:41:08 INFO tarpo.trainer: ...`.
Records go through `tqdm.write`, so a message printed while a progress bar is
drawn does not leave a torn bar line behind.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class TqdmStdoutHandler(logging.Handler):
    """Writes each record to the current sys.stdout (looked up per record) through tqdm.write."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()  # in order with the bars (stderr) even when stdout is a file
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """The `tarpo` loggers at `level` with timestamps; the libraries' own chatter at WARNING, their
    per-load progress bars (transformers' "Loading weights", one per model load) off."""
    root = logging.getLogger("tarpo")
    if not any(isinstance(h, TqdmStdoutHandler) for h in root.handlers):
        handler = TqdmStdoutHandler()
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_warning()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; without it nothing here loads models anyway
        pass
