"""The `gedi-fast` entry point. `--version` is answered from package metadata before the command line's
imports (scikit-learn, matplotlib and scipy take seconds), which only the commands need."""
from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def version_line() -> str:
    """gedi-fast's and torch's installed versions, as `gedi-fast --version` prints them."""

    def installed(distribution: str) -> str:
        try:
            return version(distribution)
        except PackageNotFoundError:
            return "unknown (not installed)"

    return f"gedi-fast {installed('gedi-fast')} (torch {installed('torch')})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(version_line())
        return 0
    from gedi_fast.cli import main as run_command

    return run_command(argv)
