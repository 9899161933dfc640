"""The programs `tarpo.sandbox` runs in subprocesses, as `python -I -B -c <source> args...`.

    codec.py            plain data on the wire (JSON with type tags, frames), shared by runner and checker
    runner.py           the candidate's runner: limits, guard, program.py, then serving calls for run_check
    namespace_setup.py  init of the sandbox's namespaces: private filesystem, then forks the runner
    checker.py          the trusted checker of run_check: the HumanEval test against a proxy of the candidate

They are real files so that the linter and editors see them, but they are never
imported: `tarpo.sandbox` reads their text and passes it with -c, so they run
in isolated mode without the package (no `tarpo` import, no site-packages), and
nothing of them has to be readable from inside the sandbox. runner.py and
checker.py name what they use from the codec with one `from .codec import ...`
line; in the program that runs, that line is replaced by codec.py's text
(`tarpo.sandbox._program`), so each stays one self-contained source. Values
from `tarpo.sandbox` (the end marker, the setup's failure status, the checker's
pass marker) come in through argv or the config, not through templating.
"""
