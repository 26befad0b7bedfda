"""The `gedi-fast` entry point. `--version` is answered from package metadata before the command line's
imports (torch and the command's modules take seconds), which only the commands need."""
from __future__ import annotations

import sys

from gedi_fast.version import version_line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(version_line())
        return 0
    try:
        from gedi_fast.cli import main as run_command
    except ImportError as err:
        if getattr(err, "extra", None) is None:  # not a missing extra (gedi_fast.train.MissingExtra): a fault
            raise
        print(f"gedi-fast: error: {err}", file=sys.stderr)
        return 2
    return run_command(argv)
