"""gedi-fast's and torch's installed versions, read from package metadata without importing either."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def version_line() -> str:
    """The line `gedi-fast --version` prints."""

    def installed(distribution: str) -> str:
        try:
            return version(distribution)
        except PackageNotFoundError:
            return "unknown (not installed)"

    return f"gedi-fast {installed('gedi-fast')} (torch {installed('torch')})"
