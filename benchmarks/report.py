"""Turn the --benchmark-json output of the suites into a Markdown table and a speedup plot.

    python -m benchmarks.report results.json --markdown out.md --plot out.png

One table per op (a row per size: per-call median of each implementation, gedi_fast's achieved
GB/s and share of the run's copy bandwidth, and the speedups measured in the same run) and one
panel per op plotting speedup over eager against size. Reads only the JSON (no torch needed).
`terminal_summary` is the short form that `pytest benchmarks --benchmark-only` prints at its end.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shlex
import sys
import textwrap

OPS = {
    "sinkhorn": "Sinkhorn-Knopp (3 iterations, eps 0.05)",
    "gedi_fwd": "GEDI terms, forward",
    "gedi_fwd_bwd": "GEDI terms, forward + backward",
    "sgld_step": "SGLD update + noise",
    "buffer_draw": "Replay-buffer draw (5% re-init)",
    "train_step": "Training step (2 views, 20-step SGLD chain, loss, backward, Adam)",
    "sgld_chain": "20-step SGLD chain (CUDA graph)",
    "train_step_graph": "Training step (CUDA graph)",
}
IMPLS = {"eager": "eager", "compile": "torch.compile", "ours": "gedi_fast"}
COLOURS = {"compile": "tab:blue", "ours": "tab:orange"}
MISSING = "—"

Row = dict[str, dict]  # impl -> the result's extra_info


def load(path: pathlib.Path) -> tuple[dict, list[dict]]:
    """(run facts, extra_info of every gedi_fast result) from a --benchmark-json file."""
    data = json.loads(path.read_text())
    results = [b["extra_info"] for b in data.get("benchmarks", []) if "op" in b.get("extra_info", {})]
    if not results:
        raise ValueError(f"{path} holds no benchmark results of benchmarks/ (was it written by --benchmark-json?)")
    return data.get("gedi_fast", {}), results


def table_rows(results: list[dict]) -> dict[str, list[tuple[str, Row]]]:
    """op -> [(size label, {impl: info})], ops in OPS order, sizes by element count then dtype."""
    grouped: dict[str, dict[tuple, Row]] = {}
    for info in results:
        label = info["size"] if info["dtype"] == "float32" else f"{info['size']} {info['dtype']}"
        key = (math.prod(info["shape"]), info["dtype"] != "float32", label)
        grouped.setdefault(info["op"], {}).setdefault(key, {})[info["impl"]] = info
    order = [op for op in OPS if op in grouped] + sorted(set(grouped) - set(OPS))
    return {op: [(key[2], row) for key, row in sorted(grouped[op].items())] for op in order}


def side_by_side(row: Row) -> dict[str, float]:
    """Per-call microseconds of eager, compile and gedi_fast at one size, from one test where possible.

    The anchor is the gedi_fast result (else torch.compile's, else eager's): its own time and the
    baselines whose rounds it interleaved with its own (baseline_us), so the ratio of two times is a
    speedup measured under the same load. A baseline the anchor lacks comes from its own test.
    """
    times = {impl: info["median_us"] for impl, info in row.items() if impl in IMPLS}
    anchor = next((row[impl] for impl in ("ours", "compile", "eager") if impl in row), None)
    if anchor is not None:
        times.update(anchor.get("baseline_us") or {})
        times[anchor["impl"]] = anchor["median_us"]
    return times


def ratio(times: dict[str, float], slower: str, faster: str) -> float | None:
    return times[slower] / times[faster] if slower in times and faster in times else None


def format_time(us: float | None) -> str:
    if us is None:
        return MISSING
    if us < 1e3:
        return f"{us:.1f} us"
    return f"{us / 1e3:.2f} ms" if us < 1e6 else f"{us / 1e6:.2f} s"


def format_number(value: float | None, pattern: str) -> str:
    return MISSING if value is None else pattern.format(value)


def markdown(meta: dict, results: list[dict]) -> str:
    lines = [
        f"- Device: {meta.get('device_name', 'unknown')} ({meta.get('device', '?')}), "
        f"{meta.get('torch_threads', '?')} torch threads"
        + (f" ({meta['torch_threads_why']})" if meta.get("torch_threads_why") else "") + "; copy bandwidth "
        f"{format_number(meta.get('copy_gb_per_s'), '{:.1f}')} GB/s (read + write, same run).",
        f"- Date: {meta.get('date', 'unknown')}; Python {meta.get('python', '?')}, torch {meta.get('torch', '?')}, "
        f"triton {meta.get('triton') or 'not installed'}" + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "")
        + f"; quick mode: {'on' if meta.get('quick') else 'off'}.",
        f"- Command: `{meta.get('command', 'unknown')}`",
        "- Times: per-call medians. eager and torch.compile are the rounds run interleaved with gedi_fast's in its"
        " test (torch.compile's where gedi_fast does not run), so each speedup is a ratio of times measured"
        " side by side; other columns come from their own tests.",
    ]
    for op, rows in table_rows(results).items():
        extras = sorted({impl for _, row in rows for impl in row} - set(IMPLS))  # e.g. another suite's variants
        lines += ["", f"### {OPS.get(op, op)}", "",
                  "| size | eager | torch.compile | gedi_fast | " + "".join(f"{e} | " for e in extras)
                  + "gedi_fast GB/s | % of copy | gedi_fast vs eager | gedi_fast vs compile | compile vs eager |"
                  + "".join(f" {e} vs eager |" for e in extras),
                  "|---" * (9 + 2 * len(extras)) + "|"]
        for label, row in rows:
            times, ours = side_by_side(row), row.get("ours", {})
            cells = [label, *(format_time(times.get(impl)) for impl in IMPLS),
                     *(format_time(row.get(e, {}).get("median_us")) for e in extras),
                     format_number(ours.get("gb_per_s"), "{:.2f}"), format_number(ours.get("pct_of_copy"), "{:.0f}%"),
                     *(format_number(ratio(times, slower, faster), "{:.2f}x")
                       for slower, faster in (("eager", "ours"), ("compile", "ours"), ("eager", "compile"))),
                     *(format_number(row.get(e, {}).get("speedup_vs_eager"), "{:.2f}x") for e in extras)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_command(json_path: str | None) -> str:
    """Where the full report comes from: the command for this run's JSON, or how to get one."""
    if json_path is None:
        return ("Full report (tables per op, speedup plot): `make bench` writes .benchmarks/latest/bench.md; "
                "or add --benchmark-json=FILE.json and run "
                "python -m benchmarks.report FILE.json --markdown FILE.md --plot FILE.png")
    stem = json_path.removesuffix(".json")
    return (f"Full report (tables per op, speedup plot): python -m benchmarks.report {shlex.quote(json_path)} "
            f"--markdown {shlex.quote(stem + '.md')} --plot {shlex.quote(stem + '.png')}")


def summary_header(meta: dict) -> list[str]:
    """The run's facts that every time depends on, and how to read the tables."""
    others, threads, cpus = meta.get("others_busy_cpus"), meta.get("torch_threads", "?"), meta.get("cpus")
    copy = meta.get("copy_gb_per_s")
    lines = [
        f"device: {meta.get('device_name', 'unknown')} ({meta.get('device', '?')}); copy bandwidth "
        f"{f'{copy:.1f} GB/s' if copy else 'not measured'}; quick mode {'on' if meta.get('quick') else 'off'}",
        f"torch threads: {threads} ({meta.get('torch_threads_why') or 'torch default'}); "
        f"CPUs busy with other processes during the run: {format_number(others, '{:.1f}')}",
    ]
    if others is not None and cpus and isinstance(threads, int) and threads + others > cpus + 0.25:
        remedy = "GEDI_BENCH_THREADS=1 is steadier" if threads > 1 else "measure on a quieter machine"
        lines.append(f"WARNING: {threads} torch threads beside {others:.1f} busy CPUs on {cpus}: "
                     f"times are inflated and noisy; {remedy}")
    lines += [
        "per call: one call's median; a round holds calls/round calls (pytest-benchmark's Iterations: "
        "its stats above are per call too)",
        "GB/s: ideal bytes per call / time; vs X: X's time per call / the row's, X's rounds interleaved "
        "with the row's (above 1: the row is faster)",
    ]
    return lines


def summary_table(title: str, benchmarks: list[dict]) -> list[str]:
    """One group of pytest-benchmark's table (its flat stats, per call): per-call median, calls per
    round and rounds, GB/s on ideal bytes with % of copy where the results name ideal bytes, and every
    speedup_vs_* the results recorded, fastest row first."""
    infos = [bench.get("extra_info") or {} for bench in benchmarks]
    has_bytes = any(info.get("ideal_bytes") for info in infos)
    names = {key.removeprefix("speedup_vs_") for info in infos for key, value in info.items()
             if key.startswith("speedup_vs_") and value is not None}
    baselines = [name for name in ("eager", "compile") if name in names] + sorted(names - {"eager", "compile"})
    header = ["impl" if any(info.get("impl") for info in infos) else "param", "per call", "calls/round", "rounds",
              *(["GB/s", "% of copy"] if has_bytes else []), *(f"vs {name}" for name in baselines)]
    rows = []
    for bench, info in sorted(zip(benchmarks, infos), key=lambda pair: pair[0]["median"]):
        seconds = bench["median"]
        cells = [info.get("impl") or bench.get("param") or bench["name"], format_time(seconds * 1e6),
                 str(bench["iterations"]), str(bench["rounds"])]
        if has_bytes:
            gbps = info["ideal_bytes"] / seconds / 1e9 if info.get("ideal_bytes") else None
            copy = info.get("copy_gb_per_s")
            cells += [format_number(gbps, "{:.2f}"),
                      format_number(100 * gbps / copy if gbps is not None and copy else None, "{:.0f}%")]
        cells += [format_number(info.get(f"speedup_vs_{name}"), "{:.2f}x") for name in baselines]
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [title]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                      for i, (cell, w) in enumerate(zip(row, widths))))
    return lines


def terminal_summary(meta: dict, groups: list[tuple[str | None, list[dict]]], json_path: str | None) -> list[str]:
    """What `pytest benchmarks --benchmark-only` prints after pytest-benchmark's table: the run's facts,
    a compact table per group (`summary_table`) and, where the run has results the report tabulates
    (those of harness.measure: extra_info names an op), the command that writes the full report."""
    lines, tabulated = summary_header(meta), False
    for group, benchmarks in groups:
        current = [bench for bench in benchmarks if bench.get("path") is None]  # not --benchmark-compare's
        if current:
            lines += ["", *summary_table(group or current[0]["name"].split("[")[0], current)]
            tabulated = tabulated or any("op" in (bench.get("extra_info") or {}) for bench in current)
    return [*lines, "", report_command(json_path)] if tabulated else lines


def plot(results: list[dict], path: pathlib.Path) -> None:
    """One panel per op: speedup over eager (log scale) of torch.compile and gedi_fast against size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    times = FuncFormatter(lambda value, _: f"{value:g}x")

    rows = table_rows(results)
    columns = min(3, len(rows))
    figure_rows = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(figure_rows, columns, figsize=(5 * columns, 3.8 * figure_rows), squeeze=False)
    for ax, (op, op_rows) in zip(axes.flat, rows.items()):
        labels = [label for label, _ in op_rows]
        extras = sorted({impl for _, row in op_rows for impl in row} - set(IMPLS))
        for impl, style in (("compile", "s--"), ("ours", "o-"), *((e, "^:") for e in extras)):
            points = [(i, ratio(side_by_side(row), "eager", impl) if impl in IMPLS
                       else row.get(impl, {}).get("speedup_vs_eager")) for i, (_, row) in enumerate(op_rows)]
            points = [(i, speedup) for i, speedup in points if speedup]
            if points:
                ax.plot(*zip(*points), style, label=IMPLS.get(impl, impl), color=COLOURS.get(impl, "tab:green"))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(times)
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(times if high / low < 10 else NullFormatter())  # label 2x..9x on short axes
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(textwrap.fill(OPS.get(op, op), 45), fontsize=9)
        ax.set_ylabel("speedup over eager")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=pathlib.Path, help="pytest --benchmark-json output of benchmarks/")
    parser.add_argument("--markdown", type=pathlib.Path, help="write the tables here (default: stdout)")
    parser.add_argument("--plot", type=pathlib.Path, help="write the speedup plot (PNG) here")
    args = parser.parse_args(argv)
    try:
        meta, results = load(args.json)
    except (OSError, ValueError) as error:
        print(f"benchmarks.report: {error}", file=sys.stderr)
        return 2
    text = markdown(meta, results)
    if args.markdown is None:
        sys.stdout.write(text)
    else:
        args.markdown.write_text(text)
    if args.plot is not None:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
