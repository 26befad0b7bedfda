"""benchmarks/report.py on a small synthetic --benchmark-json file: tables, ordering, missing cells, plot, CLI; the
terminal summary of `pytest benchmarks --benchmark-only` on made-up rows and on one quick case; harness's per-call
stats and thread choice."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from pytest_benchmark.stats import Metadata

from benchmarks import harness

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


# The terminal summary of `pytest benchmarks --benchmark-only` (benchmarks/conftest.py prints report.terminal_summary).

def flat(name, median, iterations, rounds, group="buffer_draw 10000x3x32x32-B64", **extra_info):
    """One row of pytest-benchmark's table (its flat stats: per call) with the extra_info a suite recorded."""
    impl = name.split("-")[-1].rstrip("]")
    return {"name": name, "param": name.split("[")[-1].rstrip("]"), "group": group, "median": median,
            "iterations": iterations, "rounds": rounds, "path": None, "extra_info": {"impl": impl, **extra_info}}


@pytest.mark.parametrize("calls", [1, 57])
def test_per_call_divides_every_round_by_its_calls(calls):
    fixture = SimpleNamespace(name="test_x", fullname="test_x", group="g", param=None, params=None, extra_info={},
                              cprofile_stats=None)
    metadata = Metadata(fixture, iterations=1, options={})
    per_call_us = [30.0, 10.0, 20.0, 1000.0]  # one slow round: the median must not care
    for us in per_call_us:
        metadata.update(calls * us * 1e-6)  # what pedantic records for a round of `calls` calls
    assert metadata.stats.median == pytest.approx(calls * 25e-6)  # computed (and cached) before
    harness.per_call(metadata, calls)
    row = metadata.as_dict(include_data=True, flat=True)
    assert row["iterations"] == calls
    assert row["median"] == pytest.approx(25e-6) and row["min"] == pytest.approx(10e-6)
    assert row["rounds"] == 4 and row["data"] == pytest.approx([us * 1e-6 for us in per_call_us])


def test_json_leaves_out_a_case_stopped_before_its_first_round():
    # .ci/gpu-check stops a suite with SIGINT at its time limit: the cases it finished must reach the JSON.
    from benchmarks import conftest as bench_conftest

    fixture = SimpleNamespace(name="test_x", fullname="test_x", group="g", param=None, params=None, extra_info={},
                              cprofile_stats=None)
    finished, stopped = Metadata(fixture, iterations=1, options={}), Metadata(fixture, iterations=1, options={})
    finished.update(1e-3)
    with pytest.raises(ValueError):  # what pytest-benchmark's writer meets in a stopped case
        stopped.as_dict()
    benchmarks = [finished, stopped]
    wrapper = bench_conftest.pytest_benchmark_generate_json(None, benchmarks, False, {}, {})
    next(wrapper)
    assert benchmarks == [finished]
    assert finished.as_dict()["stats"]["median"] == pytest.approx(1e-3)


def test_summary_table_compares_rows_per_call_whatever_their_calls_per_round():
    # A round of 57 draws took 2.6 ms, a round of one eager draw 2.6 ms: per call the draw is 57x faster.
    rows = [
        flat("test_buffer_draw[10000x3x32x32-B64-eager]", 2.6e-3, 1, 6, ideal_bytes=1_575_232,
             copy_gb_per_s=10.0, speedup_vs_eager=1.0, speedup_vs_compile=1.2),
        flat("test_buffer_draw[10000x3x32x32-B64-ours]", 2.6e-3 / 57, 57, 15, ideal_bytes=1_575_232,
             copy_gb_per_s=10.0, speedup_vs_eager=56.0, speedup_vs_compile=None),
        flat("test_buffer_draw[10000x3x32x32-B64-compile]", 3.1e-3, 1, 5, ideal_bytes=1_575_232,
             copy_gb_per_s=10.0, speedup_vs_eager=0.8, speedup_vs_compile=1.0),
    ]
    assert report.summary_table("buffer_draw 10000x3x32x32-B64", rows) == [
        "buffer_draw 10000x3x32x32-B64",
        "  impl     per call  calls/round  rounds   GB/s  % of copy  vs eager  vs compile",
        "  ours      45.6 us           57      15  34.53       345%    56.00x           —",
        "  eager     2.60 ms            1       6   0.61         6%     1.00x       1.20x",
        "  compile   3.10 ms            1       5   0.51         5%     0.80x       1.00x",
    ]


def test_summary_table_shows_only_the_columns_a_group_has():
    # The plain-loop suite names its own baseline; the image-preset suite (no group, no impl) records neither.
    loop = [flat("test_train_step_vs_plain_loop[cpu-images-ours]", 0.9, 1, 3, speedup_vs_eager=1.5,
                 speedup_vs_compile=None, speedup_vs_plain_loop=1.5),
            flat("test_train_step_vs_plain_loop[cpu-images-eager]", 1.35, 1, 3, speedup_vs_eager=1.0,
                 speedup_vs_compile=None)]
    assert report.summary_table("train_step_vs_plain_loop cpu-images", loop)[1:] == [
        "  impl    per call  calls/round  rounds  vs eager  vs plain_loop",
        "  ours   900.00 ms            1       3     1.50x          1.50x",
        "  eager     1.35 s            1       3     1.00x              —",
    ]
    preset = [{"name": "test_image_preset_step[width 16]", "param": "width 16", "group": None, "median": 0.2,
               "iterations": 1, "rounds": 8, "path": None, "extra_info": {"variant": "width 16", "torch_threads": 2}}]
    text = report.terminal_summary(META, [(None, preset)], None)
    assert not any(line.startswith("Full report") for line in text)  # benchmarks/report.py would find no results
    assert text[text.index("test_image_preset_step"):] == [
        "test_image_preset_step",
        "  param      per call  calls/round  rounds",
        "  width 16  200.00 ms            1       8"]


def test_summary_header_names_threads_and_warns_of_a_busy_machine():
    quiet = report.summary_header({**META, "torch_threads_why": "2 physical cores available", "others_busy_cpus": 0.1})
    assert quiet[:2] == [
        "device: Test CPU, 2 cores (cpu); copy bandwidth 10.0 GB/s; quick mode on",
        "torch threads: 2 (2 physical cores available); CPUs busy with other processes during the run: 0.1"]
    assert not any(line.startswith("WARNING") for line in quiet)
    busy = report.summary_header({**META, "cpus": 2, "others_busy_cpus": 1.3})
    assert "WARNING: 2 torch threads beside 1.3 busy CPUs on 2: times are inflated and noisy; " \
           "GEDI_BENCH_THREADS=1 is steadier" in busy
    one = report.summary_header({**META, "cpus": 2, "torch_threads": 1, "others_busy_cpus": 1.5})
    assert any(line.endswith("measure on a quieter machine") for line in one)


def test_report_command_points_to_the_full_report():
    assert report.report_command("out/run 1.json") == (
        "Full report (tables per op, speedup plot): python -m benchmarks.report 'out/run 1.json' "
        "--markdown 'out/run 1.md' --plot 'out/run 1.png'")
    assert "`make bench` writes .benchmarks/latest/bench.md" in report.report_command(None)
    draw = flat("test_buffer_draw[10000x2-B256-ours]", 1e-4, 10, 15, op="buffer_draw", ideal_bytes=100)
    lines = report.terminal_summary(META, [("buffer_draw 10000x2-B256", [draw])], None)
    assert lines[-2:] == ["", report.report_command(None)]


def test_bench_threads_honours_the_environment(monkeypatch):
    monkeypatch.delenv("GEDI_BENCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: the outer level counts
    assert harness.bench_threads() == (4, "OMP_NUM_THREADS=4")
    monkeypatch.setenv("GEDI_BENCH_THREADS", "3")
    assert harness.bench_threads() == (3, "GEDI_BENCH_THREADS=3")
    monkeypatch.setenv("GEDI_BENCH_THREADS", "0")
    with pytest.raises(pytest.UsageError, match="GEDI_BENCH_THREADS must be a positive integer"):
        harness.bench_threads()
    monkeypatch.delenv("GEDI_BENCH_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, why = harness.bench_threads(sample_s=0.05)
    cores = harness.available_cores()
    assert 1 <= threads <= max(1, cores - 1) and why.startswith(f"{cores} physical cores available")


def test_others_busy_leaves_out_this_process():
    start = harness.CpuClock(wall=10.0, machine=100.0, own=5.0)
    assert harness.others_busy(start, harness.CpuClock(wall=12.0, machine=104.0, own=6.0)) == 1.5
    assert harness.others_busy(start, harness.CpuClock(wall=12.0, machine=None, own=6.0)) is None


def test_benchmark_run_prints_per_call_summary_and_report_command(tmp_path):
    """The advertised command on one quick case: its summary, its JSON (stats per call) and the printed command."""
    bench_json = tmp_path / "run.json"
    # No torch.compile: quick mode skips it at this size anyway, and its smoke test alone takes seconds.
    # Without the xdist worker's variables: pytest-benchmark switches itself off inside an xdist worker.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env = {**inherited, "GEDI_BENCH_QUICK": "1", "GEDI_BENCH_THREADS": "1", "GEDI_BENCH_COMPILE": "0"}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_bench_buffer_draw.py", "--benchmark-only", "-q",
         "-p", "no:cacheprovider", "-k", "10000x2-B256", f"--benchmark-json={bench_json}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if "gedi_fast: times per call, bandwidth and speedups" in line]
    assert len(starts) == 1, completed.stdout
    summary = lines[starts[0] + 1:]
    assert summary[1].startswith("torch threads: 1 (GEDI_BENCH_THREADS=1); CPUs busy with other processes")
    table = summary[summary.index("buffer_draw 10000x2-B256") + 1:]
    assert table[0].split() == "impl per call calls/round rounds GB/s % of copy vs eager".split()
    results = {b["extra_info"]["impl"]: b for b in json.loads(bench_json.read_text())["benchmarks"]}
    assert set(results) == {"eager", "ours"}
    for row in table[1:3]:
        impl, time, unit, calls, rounds, gbps, _, speedup = row.split()
        stats, extra = results[impl]["stats"], results[impl]["extra_info"]
        # pytest-benchmark's stats are per call: its median is the extra_info's per-call median.
        assert stats["median"] * 1e6 == pytest.approx(extra["median_us"])
        assert stats["iterations"] == extra["calls_per_round"] == int(calls)
        assert report.format_time(extra["median_us"]) == f"{time} {unit}" and int(rounds) == stats["rounds"]
        assert gbps == f"{extra['gb_per_s']:.2f}" and speedup == f"{extra['speedup_vs_eager']:.2f}x"
        assert extra["torch_threads"] == 1
    command = f"python -m benchmarks.report {bench_json} --markdown {tmp_path / 'run.md'} --plot {tmp_path / 'run.png'}"
    pointer = next(i for i, line in enumerate(summary) if line.startswith("Full report"))
    assert summary[pointer] == f"Full report (tables per op, speedup plot): {command}"
    assert all(line.startswith(("=", "SKIPPED", "FAILED")) or not line.strip() or "passed" in line
               for line in summary[pointer + 1:]), summary[pointer + 1:]
    assert report.main(command.split()[3:]) == 0  # the printed arguments, in this process
    assert "### Replay-buffer draw (5% re-init)" in (tmp_path / "run.md").read_text()


def test_profile_ops_prints_wall_and_kernel_time_per_case(capsys):
    from benchmarks import profile_ops

    profile_ops.main(["--ops", "sinkhorn", "--impls", "eager", "ours", "--sizes", "256x10", "--calls", "2"])
    out = capsys.readouterr().out
    assert "**sinkhorn 256x10, eager**:" in out and "us per call; kernels" in out
    assert "| kernel | us per call | launches per call |" in out
    if not torch.cuda.is_available():
        assert "sinkhorn 256x10 ours: not run (the fused Triton kernels need CUDA" in out
