"""`gedi-fast study`: what each study runs, its table, summary and figures, on tiny runs."""
from __future__ import annotations

import dataclasses
import math

import pytest

from gedi_fast.cli import main
from gedi_fast.experiments import runner, studies
from gedi_fast.experiments.studies import sgld
from gedi_fast.train.data import MANY_BLOBS, view_noise
from gedi_fast.train.presets import PRESETS
from gedi_fast.train.trainer import TrainConfig

FAST = ["--set", "batch_size=32", "--set", "hidden=32", "--set", "sgld_steps=2", "--set", "buffer_size=64",
        "--set", "log_every=5", "--set", "sgld_samples=8"]
# The cases each CLI test keeps: enough for every panel of the study's figures.
KEPT = {
    "collapse": lambda c: c.group == "moons" and c.method in ("GEDI (full)", "without gen", "without gen, K = 50"),
    "clusters": lambda c: c.group in ("blobs10", "digits, K = 20") and c.method == "GEDI (full)",
    "precision": lambda c: c.group == "mnist5k",
    "sgld": lambda c: c.group == "moons" and c.method in ("0 SGLD steps", "1 SGLD steps", "5 steps from noise",
                                                         "20 steps, 16 samples", "without gen"),
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_a_study_writes_its_table_summary_figures_and_results(name, tmp_path, monkeypatch):
    study = studies.STUDIES[name]
    small = dataclasses.replace(study, cases=tuple(c for c in study.cases if KEPT[name](c)))
    monkeypatch.setitem(studies.STUDIES, name, small)
    report = tmp_path / "docs" / f"{name}.md"
    argv = ["study", name, "--seeds", "2", "--steps", "6", "--out", str(tmp_path / "runs"), "--report", str(report),
            "--jobs", "2", *FAST]
    assert main(argv) == 0
    text = report.read_text()
    assert study.question in text and "not run" not in text
    saved = studies.load_results(tmp_path / "runs" / "results.json")
    assert set(saved) == {(m, g) for g in small.groups for m in (*small.methods(g), "k-means")}
    assert all(len(runs) == 2 for runs in saved.values())
    for group in small.groups:
        for method in (*small.methods(group), "k-means"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {group} | {method} | 2 | "))
            cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
            assert len(cells) == 8 + len(study.columns), row
            extra = cells[8:]
            for column, cell in zip(study.columns, extra):  # k-means has no network: n/a where it lacks a score
                assert (cell == "n/a") == (column.key not in saved[(method, group)][0]), (row, column)
                assert cell == "n/a" or "+-" in cell, row
    pictures = sorted(report.parent.glob(f"{name}_*.png"))
    assert bool(pictures) == (study.figures is not None)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert all(f"]({p.name})" in text for p in pictures)
    if name == "precision":
        fp32, auto = small.methods("mnist5k")
        assert {r["precision"] for r in saved[(fp32, "mnist5k")]} == {"fp32"}
        assert {r["memory_format"] for r in saved[(fp32, "mnist5k")]} == {"contiguous_format"}
        assert {r["memory_format"] for r in saved[(auto, "mnist5k")]} == {"channels_last"}
        assert f"| {fp32}: median | | | " in text and "(+0.000)" in text and f"| {auto}: median | | | " in text
    if name == "sgld":
        assert "cheapest within 0.01 of it" in text
        assert 0 <= saved[("0 SGLD steps", "moons")][0]["ood_energy_auroc"] <= 1


def test_a_group_with_its_own_k_trains_and_clusters_with_it(tmp_path):
    case = runner.Case("digits, K = 13", "GEDI", {"dataset": "digits", "clusters": 13})
    base = TrainConfig(batch_size=32, hidden=16, sgld=dict(steps=1, buffer_size=32), sgld_samples=8, log_every=2)
    results = runner.run_cases([case], range(1), 2, tmp_path, base, log=lambda _: None)
    for method in ("GEDI", "k-means"):
        (scores,) = results[(method, "digits, K = 13")]
        assert scores["usage_entropy_max"] == pytest.approx(math.log(13)) and scores["clusters_used"] <= 13
    assert (runner.run_folder(tmp_path, "digits, K = 13", "GEDI", 0) / "checkpoint.pt").is_file()
    assert runner.run_folder(tmp_path, "digits, K = 13", "GEDI", 0).parent.parent.name == "digits_K_13"


def test_the_cheapest_setting_within_the_tolerance_of_the_best():
    study = studies.Study("q", (runner.Case("d", "long", {}), runner.Case("d", "short", {}),
                                runner.Case("d", "shortest", {})))
    results = {("long", "d"): [{"nmi": 0.90, "ms_per_step": 30.0}, {"nmi": 0.92, "ms_per_step": 32.0}],
               ("short", "d"): [{"nmi": 0.905, "ms_per_step": 10.0}, {"nmi": 0.905, "ms_per_step": 10.0}],
               ("shortest", "d"): [{"nmi": 0.80, "ms_per_step": 5.0}, {"nmi": 0.80, "ms_per_step": 5.0}]}
    line = sgld.cheapest_within_best(study, results)
    assert "best mean NMI 0.910 (long, 31.0 ms/step)" in line and "of it: short (NMI 0.905, 10.0 ms/step)" in line
    assert "of it: long" in sgld.cheapest_within_best(study, results, tolerance=0.001)


def test_the_studies_cover_the_settings_they_are_asked_about():
    sgld = {c.method: c.settings for c in studies.STUDIES["sgld"].cases if c.group == "digits"}
    steps = {s.get("sgld_steps", 20) for s in sgld.values() if s.get("gen_weight", 1) and "reinit_prob" not in s}
    assert steps == {0, 1, 5, 10, 20, 40}
    assert {s.get("sgld_samples", 64) for s in sgld.values() if s.get("gen_weight", 1)} == {16, 64, 256}
    assert {s["reinit_prob"] for s in sgld.values() if "reinit_prob" in s} == {1.0}
    clusters = studies.STUDIES["clusters"]
    assert {g for g in clusters.groups if g.startswith("blobs")} == {f"blobs{k}" for k in MANY_BLOBS}
    assert {c.settings["clusters"] for c in clusters.cases if c.group.startswith("digits")} == {10, 20, 50}
    collapse = studies.STUDIES["collapse"]
    assert collapse.groups == ["moons", "digits", "mnist5k"]
    images = {c.method: c.settings for c in collapse.cases if c.group == "mnist5k"}
    assert set(images) == {"GEDI (full)", "without gen"} and images["without gen"]["gen_weight"] == 0
    assert images["GEDI (full)"] == {**PRESETS["cpu-images"], "dataset": "mnist5k"}
    assert images["without gen"] == {**PRESETS["cpu-images"], "dataset": "mnist5k", "gen_weight": 0, "energy_reg": 0}
    for group in ("moons", "digits"):
        settings = {c.method: c.settings for c in collapse.cases if c.group == group}
        assert settings["without gen, views 1/10"]["view_noise"] == pytest.approx(view_noise(group) / 10)
        assert settings["without gen"]["energy_reg"] == 0 and settings["without gen, energy_reg kept"]["gen_weight"] == 0
        assert "energy_reg" not in settings["without gen, energy_reg kept"]
    for study in studies.STUDIES.values():  # every case is a valid config
        for case in study.cases:
            TrainConfig().with_settings(**case.settings)


def test_the_forms_study_runs_both_forms_with_and_without_gen_on_vectors_and_images():
    forms = studies.STUDIES["forms"]
    datasets = {c.settings["dataset"] for c in forms.cases}
    assert datasets == {"moons", "circles", "digits", "mnist5k"}
    for dataset in datasets:
        settings = [TrainConfig.from_settings(**c.settings) for c in forms.cases if c.settings["dataset"] == dataset]
        seen = {(config.form, config.gen_weight != 0) for config in settings}
        assert seen == {("symmetric", True), ("symmetric", False), ("author", True), ("author", False)}
        authors = [c for c in settings if (c.inv_weight, c.prior_weight, c.gen_weight) == (0.05, 0.5, 0.0)]
        assert len(authors) == 1 and authors[0].form == "author" and authors[0].energy_reg == 0


def test_start_scores_read_the_last_record_at_or_before_each_step():
    history = [{"step": 50, "logit_spread": 0.4, "inv": 2.30}, {"step": 100, "logit_spread": 0.2, "inv": 2.31},
               {"step": 120, "event": "rollback", "reason": "non-finite loss"},
               {"step": 200, "logit_spread": 1.5, "inv": 2.10}, {"step": 400, "logit_spread": 2.5, "inv": 1.20}]
    assert runner.start_scores(history) == {"logit_spread_at_100": 0.2, "inv_at_300": 2.10}
    late = runner.start_scores([{"step": 500, "logit_spread": 1.0, "inv": 1.0}])
    assert math.isnan(late["logit_spread_at_100"]) and math.isnan(late["inv_at_300"])
