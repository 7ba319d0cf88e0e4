"""`recommend`: the most accurate trial within limits, and why; a clear answer when none fits."""
from __future__ import annotations

import itertools

import pytest
from seed_db import seed_sweep, seeded_copy

from sweep_service.cli import main
from sweep_service.report.fmt import parse_count, parse_fraction
from sweep_service.report.recommend import Limits, misses, recommend
from sweep_service.report.results import SweepResults, load_results, trial_label

FAILED = [("googlenet", "fpgm", 0.8), ("densenet121", "l1norm", 0.7)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The full reference grid (7 models x 3 pruners x 8 rates + baselines), 2 failed."""
    db, _ = seeded_copy(tmp_path_factory.mktemp("recommend"), failed=FAILED)
    return db


@pytest.fixture(scope="module")
def results(reference) -> SweepResults:
    return load_results(reference)


@pytest.mark.parametrize("limits, expected", [
    (Limits(max_params=2_000_000, min_accuracy=0.85), "mobilenet_v2 fpgm 20%"),
    (Limits(max_latency_ms=1.0), "alexnet fpgm 80%"),
    (Limits(max_size_mb=50, min_accuracy=0.9), "densenet121 baseline"),
    (Limits(max_latency_ms=8.0), "resnet50 fpgm 20%"),
    (Limits(max_macs=100_000_000, max_latency_ms=6), "mobilenet_v2 baseline"),
    (Limits(), "resnet50 baseline"),
])
def test_picks_the_expected_trial(results, limits, expected):
    rec = recommend(results, limits)
    assert rec.chosen is not None
    assert trial_label(rec.chosen) == expected
    assert rec.chosen["status"] == "completed"


def test_choice_is_the_most_accurate_that_meets_every_limit(results):
    """Against a brute force over many limit sets: never a trial breaking a limit, never
    a better one left out, failed trials never chosen."""
    grid = itertools.product((None, 2e6, 10e6, 30e6), (None, 50e6, 300e6), (None, 2.0, 5.0, 9.0), (None, 0.8, 0.92))
    for params, macs, latency, accuracy in grid:
        limits = Limits(max_params=params, max_macs=macs, max_latency_ms=latency, min_accuracy=accuracy)
        rec = recommend(results, limits)
        fitting = [t for t in results.completed if not misses(t, limits)]
        if not fitting:
            assert rec.chosen is None
            continue
        assert rec.chosen["accuracy"] == max(t["accuracy"] for t in fitting)
        assert not misses(rec.chosen, limits)
        assert len(rec.eligible) == len(fitting)


def test_ties_go_to_fewer_parameters(results):
    a = {**results.completed[0], "kind": "pruned", "pruner": "l1norm", "rate": 0.1, "key": "a", "accuracy": 0.9,
         "params_after": 5_000_000, "latency_ms": 3.0}
    b = {**a, "rate": 0.2, "key": "b", "params_after": 4_000_000}
    c = {**a, "rate": 0.3, "key": "c", "params_after": 4_000_000, "latency_ms": 2.0}
    tiny = SweepResults(sweep=results.sweep, trials=[a, b, c], dataset_label="x")
    assert recommend(tiny, Limits(max_params=6_000_000)).chosen["key"] == "c"


def test_trials_missing_a_figure_do_not_meet_its_limit(results):
    rows = [dict(t) for t in results.trials]
    best = max((t for t in rows if t["status"] == "completed"), key=lambda t: t["accuracy"])
    best["latency_ms"] = None
    patched = SweepResults(sweep=results.sweep, trials=rows, dataset_label="x")
    rec = recommend(patched, Limits(max_latency_ms=100.0))
    assert rec.chosen["key"] != best["key"]
    assert rec.excluded_by == {"max_latency_ms": 1}


def test_no_trial_fits_says_which_limit_and_the_closest(results):
    rec = recommend(results, Limits(max_params=1_000_000, min_accuracy=0.95))
    assert rec.chosen is None
    assert rec.excluded_by["max_params"] == len(results.completed)  # nothing is that small
    assert rec.most_excluding() == "parameters <= 1 M"
    assert len(rec.closest) == 3
    text = "\n".join(rec.lines())
    assert "NO completed trial meets all the limits" in text
    assert "the limit that excludes most: parameters <= 1 M" in text
    assert "closest candidates" in text
    # The closest candidates are small mobilenets, a bit over the parameter limit.
    assert all(t["model"] == "mobilenet_v2" for t, _ in rec.closest)
    assert "over by" in text and "pt short" in text


def test_cli_prints_the_choice_and_why(reference, capsys):
    code = main(["recommend", "--db", str(reference), "--max-params", "2M", "--min-accuracy", "85%"])
    out = capsys.readouterr().out
    assert code == 0
    assert "recommended: mobilenet_v2 fpgm 20%" in out
    assert "limits (from the command line): parameters <= 2 M, accuracy >= 85.0%" in out
    assert "why: the most accurate of the 6 of 173 completed trials that meet every limit" in out
    assert "parameters <= 2 M" in out and "ok: 1.86 M" in out
    assert "next best within the limits:" in out
    assert "data: synthetic CIFAR-10 format" in out


def test_cli_exits_1_when_nothing_fits(reference, capsys):
    code = main(["recommend", "--db", str(reference), "--max-latency-ms", "0.5", "--min-accuracy", "0.9"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NO completed trial meets all the limits (173 checked)" in out
    assert "latency <= 0.5 ms" in out and "excludes  173 trials" in out
    assert "the limit that excludes most: latency <= 0.5 ms" in out


def test_cli_uses_the_config_limits_when_none_are_given(tmp_path, capsys):
    db = tmp_path / "c.db"
    seed_sweep(db, models=["resnet18", "mobilenet_v2"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6],
               constraints={"max_params": 2_000_000, "min_accuracy": 0.8})
    assert main(["recommend", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "limits (from the sweep config): parameters <= 2 M, accuracy >= 80.0%" in out
    assert "recommended: mobilenet_v2 fpgm 30%" in out
    # Limits on the command line replace the config's.
    assert main(["recommend", "--db", str(db), "--max-latency-ms", "100"]) == 0
    out = capsys.readouterr().out
    assert "limits (from the command line): latency <= 100 ms" in out
    assert "recommended: mobilenet_v2 baseline" in out


def test_cli_on_a_sweep_without_completed_trials(tmp_path, capsys):
    db = tmp_path / "e.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=0, status="running")
    assert main(["recommend", "--db", str(db), "--max-params", "5M"]) == 1
    out = capsys.readouterr().out
    assert "no completed trial yet" in out
    assert "2 trials are not finished yet" in out


def test_cli_errors(tmp_path, capsys):
    assert main(["recommend", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no results database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["recommend", "--db", "x.db", "--min-accuracy", "95"])
    assert exc.value.code == 2
    assert "write a fraction (0.9) or a percent (90%)" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("5M", 5_000_000), ("2.5m", 2_500_000), ("300k", 300_000),
                                         ("1.2G", 1_200_000_000), ("2_000_000", 2_000_000), ("2.5e6", 2_500_000)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text, value", [("0.9", 0.9), ("90%", 0.9), ("1", 1.0), ("0", 0.0)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)
