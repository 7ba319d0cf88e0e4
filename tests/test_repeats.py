"""The smoke config end to end with repeats, as a newcomer runs it on a fresh clone, and
run again from scratch: same accuracies to the bit, means and intervals in every output.

One smoke run with three seeds and one with the default single seed: the seed-0 trials of
the first are the smoke config's own trials (same keys, same sweep id), run among 28 others
in another order, so comparing them with the second run checks that a rerun from scratch
reproduces every accuracy, at the cost of one extra smoke run rather than two.
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from seed_db import parse_page

from tests.conftest import run_in

pytestmark = pytest.mark.slow

MODELS, PRUNERS, RATES = ("resnet18", "mobilenet_v2"), ("l1norm", "l2norm", "fpgm"), (0.3, 0.6)


def _rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM trials")]
    finally:
        con.close()


def _sweep(db: Path) -> dict:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM sweeps").fetchone())
    finally:
        con.close()


@pytest.fixture(scope="module")
def smoke_again(smoke_three_seeds, tmp_path_factory):
    """The smoke config once more, from scratch: another database, output and data folder."""
    folder = tmp_path_factory.mktemp("again")
    result = run_in(smoke_three_seeds["clone"], "run", "configs/smoke.yaml", "--db", str(folder / "smoke.db"),
                    "--out", str(folder / "out"), "--data-root", str(folder / "data"))
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "smoke.db"


def test_three_seeds_give_each_seed_a_baseline_and_every_trial(smoke_three_seeds):
    rows = _rows(smoke_three_seeds["db"])
    assert len(rows) == 3 * len(MODELS) * (1 + len(PRUNERS) * len(RATES))
    assert {r["status"] for r in rows} == {"completed"}, [r["error"] for r in rows if r["error"]]
    assert sorted((r["model"], r["seed"]) for r in rows if r["kind"] == "baseline") == sorted(
        (m, s) for m in MODELS for s in (0, 1, 2))
    baselines = {(b["model"], b["seed"]): b["accuracy"] for b in rows if b["kind"] == "baseline"}
    for r in rows:  # every pruned trial's drop is against the baseline of its own seed
        if r["kind"] == "pruned":
            assert r["baseline_accuracy"] == baselines[(r["model"], r["seed"])]
    out = smoke_three_seeds["stdout"]
    assert "42 trials (2 models x 3 pruners x 2 rates x 3 seeds + baselines)" in out
    assert "resnet18 l1norm 30% seed 2" in out
    print(f"\nsmoke with three seeds: {smoke_three_seeds['seconds']:.0f} s")


def test_smoke_run_twice_from_scratch_gives_identical_accuracies_and_one_format_per_model(smoke_three_seeds,
                                                                                       smoke_again):
    first = {r["key"]: r for r in _rows(smoke_three_seeds["db"]) if r["seed"] == 0}
    second = {r["key"]: r for r in _rows(smoke_again)}
    assert _sweep(smoke_again)["sweep_id"] == _sweep(smoke_three_seeds["db"])["sweep_id"]
    assert len(second) == 14 and set(first) == set(second)
    for key, row in second.items():
        label = f"{row['model']} {row['pruner']} {row['rate']}"
        assert row["status"] == first[key]["status"] == "completed", label
        assert row["accuracy"] == first[key]["accuracy"], label
        assert row["params_after"] == first[key]["params_after"], label
    for rows in (first.values(), second.values()):
        for model in MODELS:
            assert len({r["compute"] for r in rows if r["model"] == model}) == 1, model
    # Both data sets were generated anew, and hash alike.
    provenance = [json.loads(_sweep(db)["provenance_json"]) for db in (smoke_three_seeds["db"], smoke_again)]
    assert provenance[0]["data_sha256"] == provenance[1]["data_sha256"]
    assert len(provenance[0]["data_sha256"]) == 64 and provenance[0]["data_files"] == 7


def test_report_shows_intervals_pairwise_comparisons_and_provenance(smoke_three_seeds):
    html = (smoke_three_seeds["report"] / "index.html").read_text()
    page = parse_page(html)
    best = page.tables["best-table"]
    assert [row[0] for row in best] == list(MODELS)
    assert all(" ± " in row[4] and row[4].endswith("%") for row in best)  # accuracy: mean ± half-width
    for model in MODELS:
        pairs = page.tables[f"pairwise-table-{model}"]
        assert len(pairs) == len(RATES) * 3  # three pairs of pruners at each rate
        assert {row[4] for row in pairs} == {"3"}  # seeds
        assert all(row[3].endswith(" pt") and " to " in row[3] for row in pairs)  # the interval
        assert {row[5] for row in pairs} <= {"not distinguishable from noise", *(f"{p} better" for p in PRUNERS)}
    assert "ran with 3 seeds (0, 1, 2)" in html
    assert "each pruned trial prunes its baseline and fine-tunes 1 epoch more, 4 epochs in all" in html
    assert smoke_three_seeds["commit"] in html  # the clone's commit
    rows = _rows(smoke_three_seeds["db"])
    versions = json.loads(rows[0]["worker_versions_json"])
    assert "+" in versions["torch"] and versions["torch"] in html  # torch's full build string
    assert "worker-warning" not in html  # one machine: the workers agree
    charts = {p.name for p in smoke_three_seeds["report"].glob("*.png")}
    assert {"accuracy_vs_rate.png", "accuracy_pruned_vs_rate.png", "accuracy_vs_sparsity.png",
            "model_resnet18.png", "model_mobilenet_v2.png"} <= charts
    # What grouping and allocation the trials recorded is in the sweep's details.
    assert "<dt>grouping</dt><dd>dependency</dd>" in html and "<dt>allocation</dt><dd>uniform</dd>" in html


def test_recommend_status_and_export_give_mean_and_interval(smoke_three_seeds):
    clone, db = smoke_three_seeds["clone"], str(smoke_three_seeds["db"])
    rec = run_in(clone, "recommend", "--db", db, timeout=300)
    assert rec.returncode == 0, rec.stderr
    assert "figures: mean ± half-width of the 95% interval over each configuration's seeds" in rec.stdout
    chosen = next(line for line in rec.stdout.splitlines() if line.startswith("  accuracy "))
    assert " ± " in chosen and "over 3 seeds" in chosen
    assert "(mean of 3 seeds: trials " in rec.stdout

    status = run_in(clone, "status", "--db", db, timeout=300)
    assert status.returncode == 0, status.stderr
    assert "configurations (mean ± half-width of the 95 % interval over their seeds):" in status.stdout
    assert sum(" 3 seeds  acc " in line for line in status.stdout.splitlines()) == 2 + 2 * 3 * 2

    export = run_in(clone, "export", "--db", db, "--summary", timeout=300)
    assert export.returncode == 0, export.stderr
    summary = list(csv.DictReader(io.StringIO(export.stdout)))
    assert len(summary) == 14 and {r["n"] for r in summary} == {"3"}
    for row in summary:
        assert float(row["accuracy_ci95_low"]) <= float(row["accuracy_mean"]) <= float(row["accuracy_ci95_high"])
