"""`python -m recolab data <command> key=value ...`: data chores from the command line.

    python -m recolab data import path=<log.csv|log.parquet> schema=<schema.yaml> [out=<folder>] [drop_bad_rows=true]

`import` checks a user's log against its schema, writes recolab's parquet layout and a summary to
`out` (default `data/imported/<log name>`), prints the summary, and says how to train on it
(`recolab.data.importer` has the details). A problem with the log or the schema exits with status
2 and one message naming the file, the column and the rows.
"""

from __future__ import annotations

import difflib
import logging
import sys
from pathlib import Path

from recolab.data.importer import LogImportError, import_log, summary_markdown
from recolab.stacks import dump_stacks_on_signal

COMMANDS = {"import": ("path", "schema", "out", "drop_bad_rows")}
REQUIRED = {"import": ("path", "schema")}
USAGE = (
    "usage: python -m recolab data import path=<log.csv|log.parquet> schema=<schema.yaml> "
    "[out=<folder>] [drop_bad_rows=true]"
)


def parse(argv: list[str]) -> tuple[str, dict[str, str]]:
    """`[command, key=value, ...]` -> (command, {key: value}); `SystemExit(2)` with usage on a mistake."""
    if not argv or argv[0] not in COMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        raise SystemExit(f"unknown command {got} (commands: {', '.join(COMMANDS)})\n{USAGE}")
    command, args = argv[0], {}
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: arguments are key=value\n{USAGE}")
        if key not in COMMANDS[command]:
            close = difflib.get_close_matches(key, COMMANDS[command], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SystemExit(f"unknown key {key!r}{hint}\n{USAGE}")
        args[key] = value
    missing = [k for k in REQUIRED[command] if k not in args]
    if missing:
        raise SystemExit(f"missing {', '.join(f'{k}=' for k in missing)}\n{USAGE}")
    return command, args


def _flag(value: str, key: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SystemExit(f"{key}={value!r}: expected true or false\n{USAGE}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, args = parse(sys.argv[1:] if argv is None else argv)
    if command == "import":
        out = Path(
            args.get("out") or Path("data") / "imported" / Path(args["path"]).name.split(".")[0]
        )
        try:
            summary = import_log(
                args["path"],
                args["schema"],
                out,
                drop_bad_rows=_flag(args.get("drop_bad_rows", "false"), "drop_bad_rows"),
            )
        except LogImportError as e:
            print(f"recolab data import: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print(summary_markdown(summary))
        print(f"written: {out}/ (data.parquet, recolab_schema.yaml, summary.json, summary.md)")
        print(f"train on it: python -m recolab train +exp=mmoe data=imported data.path={out}")


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
