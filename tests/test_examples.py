"""The examples run as a user would run them and do what they say."""
from __future__ import annotations

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_loop_clusters_the_moons_with_gediloss_and_the_sampler(capsys, one_thread):
    nmi = load("own_loop").main(["--steps", "400", "--seed", "1"])
    printed = capsys.readouterr().out
    assert nmi > 0.3 and f"nmi={nmi:.4f} clusters used=2" in printed  # chance is 0; 1000 steps reach 0.84
    assert "step 400: loss=" in printed
