"""benchmarks/report.py on a small synthetic --benchmark-json file: tables, ordering, missing cells, plot, CLI."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

META = {"date": "2026-11-29 00:00 UTC", "device": "cpu", "device_name": "Test CPU, 2 cores", "python": "3.11.7",
        "torch": "2.13.0+cpu", "triton": "3.9.0", "cuda": None, "torch_threads": 2, "quick": True,
        "copy_gb_per_s": 10.0, "command": "python -m pytest benchmarks --benchmark-only"}


def info(op, size, shape, impl, us, dtype="float32", ideal=None, baseline=None):
    """A result's extra_info as benchmarks/harness.measure writes it; baseline: {impl: us} run alongside."""
    baseline = baseline or {}
    gbps = None if ideal is None else ideal / (us * 1e-6) / 1e9
    speedups = {}
    for name in ("eager", "compile"):
        base = us if name == impl else baseline.get(name)
        speedups[f"speedup_vs_{name}"] = None if base is None else base / us
    return {"op": op, "impl": impl, "size": size, "shape": shape, "dtype": dtype, "device": "cpu", "median_us": us,
            "ideal_bytes": ideal, "gb_per_s": gbps, "copy_gb_per_s": 10.0,
            "pct_of_copy": None if gbps is None else 10 * gbps, "baseline_us": baseline, **speedups}


RESULTS = [
    # Deliberately out of size order: the report sorts by element count.
    info("sgld_step", "12.6M", [12_582_912], "eager", 125_000.0, ideal=150_994_944),
    info("sgld_step", "12.6M", [12_582_912], "ours", 25_000.0, ideal=150_994_944, baseline={"eager": 130_000.0}),
    info("sgld_step", "786k", [786_432], "eager", 4100.0, ideal=9_437_184, baseline={"compile": 7200.0}),
    info("sgld_step", "786k", [786_432], "compile", 7100.0, ideal=9_437_184, baseline={"eager": 4200.0}),
    info("sgld_step", "786k", [786_432], "ours", 800.0, ideal=9_437_184, baseline={"eager": 4000.0, "compile": 7000.0}),
    info("sinkhorn", "256x10", [256, 10], "eager", 250.0, ideal=20_480, baseline={"compile": 110.0}),
    info("sinkhorn", "256x10", [256, 10], "compile", 100.0, ideal=20_480, baseline={"eager": 260.0}),
    info("gedi_fwd_bwd", "32768x1000", [32768, 1000], "eager", 3_870_000.0, dtype="bfloat16"),
    info("gedi_fwd_bwd", "32768x1000", [32768, 1000], "eager", 2_236_000.0),
    info("train_step", "mlp-moons-B256", [256, 2], "ours", 19_000.0, baseline={"eager": 23_750.0}),
    info("sgld_chain", "mlp-B64", [64, 2], "eager", 19_000.0),
    info("sgld_chain", "mlp-B64", [64, 2], "ours_nograph", 9_500.0, baseline={"eager": 19_000.0}),
]


def write_json(path: pathlib.Path, results: list[dict]) -> pathlib.Path:
    benchmarks = [{"name": f"test[{r['size']}-{r['impl']}]", "extra_info": r} for r in results]
    benchmarks.append({"name": "unrelated", "extra_info": {}})
    path.write_text(json.dumps({"benchmarks": benchmarks, "gedi_fast": META}))
    return path


def section(text: str, title: str) -> list[str]:
    """The table rows under the heading `### title`."""
    lines = text.splitlines()
    start = lines.index(f"### {title}")
    rows = []
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_markdown_tables_carry_times_bandwidth_and_speedups():
    text = report.markdown(META, RESULTS)
    assert "Test CPU, 2 cores (cpu)" in text and "torch 2.13.0+cpu, triton 3.9.0" in text
    assert "copy bandwidth 10.0 GB/s" in text and "`python -m pytest benchmarks --benchmark-only`" in text
    # Times side by side with the gedi_fast result (else torch.compile's): its columns' ratios are the speedups.
    assert section(text, "SGLD update + noise") == [
        "| 786k | 4.00 ms | 7.00 ms | 800.0 us | 11.80 | 118% | 5.00x | 8.75x | 0.57x |",
        "| 12.6M | 130.00 ms | — | 25.00 ms | 6.04 | 60% | 5.20x | — | — |",
    ]
    assert section(text, "Sinkhorn-Knopp (3 iterations, eps 0.05)") == [
        "| 256x10 | 260.0 us | 100.0 us | — | — | — | — | — | 2.60x |",
    ]


def test_ops_in_fixed_order_and_dtypes_apart():
    text = report.markdown(META, RESULTS)
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### Sinkhorn-Knopp (3 iterations, eps 0.05)", "### GEDI terms, forward + backward",
                        "### SGLD update + noise",
                        "### Training step (2 views, 20-step SGLD chain, loss, backward, Adam)",
                        "### 20-step SGLD chain (CUDA graph)"]
    assert [row.split(" | ")[0] for row in section(text, "GEDI terms, forward + backward")] == [
        "| 32768x1000", "| 32768x1000 bfloat16"]
    assert section(text, "Training step (2 views, 20-step SGLD chain, loss, backward, Adam)") == [
        "| mlp-moons-B256 | 23.75 ms | — | 19.00 ms | — | — | 1.25x | — | — |"]


def test_other_implementations_get_their_own_columns():
    text = report.markdown(META, RESULTS)
    lines = text.splitlines()
    start = lines.index("### 20-step SGLD chain (CUDA graph)")
    assert lines[start + 2].startswith("| size | eager | torch.compile | gedi_fast | ours_nograph | gedi_fast GB/s")
    assert lines[start + 2].endswith("| compile vs eager | ours_nograph vs eager |")
    assert lines[start + 3] == "|---" * 11 + "|"
    assert section(text, "20-step SGLD chain (CUDA graph)") == [
        "| mlp-B64 | 19.00 ms | — | — | 9.50 ms | — | — | — | — | — | 2.00x |"]


def test_command_line_writes_markdown_and_plot(tmp_path):
    source = write_json(tmp_path / "results.json", RESULTS)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(source), "--markdown", str(tmp_path / "out.md"),
         "--plot", str(tmp_path / "out.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out.md").read_text() == report.markdown(META, RESULTS)
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("content", ['{"benchmarks": []}', '{"benchmarks": [{"name": "x", "extra_info": {}}]}'])
def test_json_without_results_is_an_error(tmp_path, capsys, content):
    source = tmp_path / "empty.json"
    source.write_text(content)
    assert report.main([str(source)]) == 2
    assert "holds no benchmark results" in capsys.readouterr().err
