"""`python -m recolab <task> [hydra overrides]`: run a task module as `__main__`.

The task runs through `runpy` as a real module run (not by importing and calling `main()`), so
that Lightning's DDP launcher, which restarts each rank as `python -m <__main__.__spec__.name>
<argv[1:]>`, re-enters the same task module with the same overrides. `--help` (`-h`) lists the
tasks and how to see a task's config.
"""

from __future__ import annotations

import runpy
import sys

TASKS = {
    "train": "recolab.train",
    "evaluate": "recolab.evaluate",
    "compare": "recolab.compare",
    "select": "recolab.select",  # choose on validation, re-run the choice on fresh seeds, compare
    "data": "recolab.data.cli",
    "sync": "recolab.sync",  # record in MLflow what a run could not (its server was down)
}

USAGE = "usage: python -m recolab {" + ",".join(TASKS) + "} [key=value ...]"

#: What each task does, for `python -m recolab --help`.
SUMMARIES = {
    "train": "train an experiment, test its best checkpoint, write the report (+exp=mmoe ...)",
    "evaluate": "evaluate a checkpoint or a tracked run on its data or another (ckpt_path=, run_id=)",
    "compare": "tracked runs side by side, with intervals and tests (exps=[...] baseline=...)",
    "select": "choose a configuration on validation, re-run it on fresh seeds, compare",
    "data": "data chores: data import path=<log> schema=<yaml> (own logs into recolab's layout)",
    "sync": "record in MLflow what a run kept while its server was down (sync <run folder>)",
}


EXAMPLES = (
    ("python -m recolab train +exp=mmoe --cfg job", "print the composed config, run nothing"),
    ("python -m recolab train --help", "the config groups and their options (Hydra)"),
    ("python -m recolab train +exp=mmoe key=value ...", "override any key"),
    ("python -m recolab train -m +exp=mmoe seed=1,2,3", "a sweep (Hydra multirun)"),
    ("python -m recolab evaluate --cfg job", "the same for any other task"),
    ("python -m recolab data", "the data commands' usage"),
)


def help_text() -> str:
    """The tasks, and how to see and change a task's config (Hydra's own options)."""
    width = max(map(len, TASKS))
    tasks = [f"  {name:<{width}}  {SUMMARIES.get(name, '')}".rstrip() for name in TASKS]
    return "\n".join(
        [
            USAGE,
            "",
            "tasks:",
            *tasks,
            "",
            "A task's config (Hydra; configs/<task>.yaml and its groups):",
            *(f"  {command:<48}  {what}" for command, what in EXAMPLES),
            "",
            "Experiments: configs/exp/*.yaml (+exp=<name>). More: README.md.",
        ]
    )


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help", "help"):
        print(help_text())
        return
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        sys.exit(f"{USAGE}\n(got {got!r}; python -m recolab --help lists the tasks)")
    module = TASKS[sys.argv.pop(1)]
    from recolab.console import quiet  # imports Lightning: not for --help

    quiet()  # the known noise of Lightning, torch and alembic (recolab.console)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
