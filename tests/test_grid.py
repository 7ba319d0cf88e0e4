"""Grid expansion is deterministic and keys identify what determines a result."""
from __future__ import annotations

import pytest

from sweep_service.config import load_config
from sweep_service.grid import TrialSpec, expand


def test_expand_counts_order_and_stable_keys(tiny_config):
    path, _ = tiny_config(models=["resnet18", "mobilenet_v2"], rates=[0.6, 0.3])
    specs = list(expand(load_config(path)))
    assert len(specs) == 2 * (1 + 2 * 2)
    assert [s.kind for s in specs[:5]] == ["baseline"] + ["pruned"] * 4
    assert [(s.pruner, s.rate) for s in specs[1:5]] == [("l1norm", 0.3), ("l1norm", 0.6), ("fpgm", 0.3), ("fpgm", 0.6)]
    assert len({s.key for s in specs}) == len(specs)
    assert all(s.baseline_key == specs[0].key for s in specs[1:5])
    again = list(expand(load_config(path)))
    assert [s.key for s in again] == [s.key for s in specs]


def test_keys_ignore_paths_and_resources_but_not_training(tiny_config, tmp_path):
    path, _ = tiny_config()
    base = [s.key for s in expand(load_config(path))]
    moved = load_config(path, {"database": tmp_path / "x.db", "output_dir": tmp_path / "x",
                               "data_root": tmp_path / "elsewhere"})
    assert [s.key for s in expand(moved)] == base
    path2, _ = tiny_config(resources={"cpus": 2})
    assert [s.key for s in expand(load_config(path2))] == base
    path3, _ = tiny_config(finetune_epochs=2)
    changed = [s.key for s in expand(load_config(path3))]
    assert changed[0] == base[0]  # the baseline does not depend on the fine-tune epochs
    assert set(changed[1:]).isdisjoint(base[1:])


def test_spec_round_trips_through_json(tiny_config):
    path, _ = tiny_config()
    spec = list(expand(load_config(path)))[1]
    assert TrialSpec.from_json(spec.to_json()) == spec
    assert spec.label == "resnet18 l1norm 30%"


def test_trial_duration_estimate_follows_the_measured_trials():
    from sweep_service.coordinator import estimate_epoch_seconds

    assert estimate_epoch_seconds([], 0.5) == 0.0
    # only the baseline known: proportional to the share of filters kept
    assert estimate_epoch_seconds([(1.0, 20.0)], 0.3) == pytest.approx(6.0)
    # a model whose time barely shrinks with pruning (as mobilenet_v2's)
    flat = [(1.0, 20.0), (0.7, 19.0)]
    assert estimate_epoch_seconds(flat, 0.3) == pytest.approx(17.67, abs=0.01)
    assert estimate_epoch_seconds([(1.0, 20.0), (0.5, 2.0)], 0.01) == 0.0  # never negative


def test_the_last_trials_are_chosen_so_that_the_slots_finish_together():
    from sweep_service.coordinator import pick_next

    # One slot free, the other busy for 1 s more; trials of 2, 2 and 3 s. Longest first ends
    # at 5 s (3 here; 2 there at 1 s; 2 at 3 s), a 2-second trial first at 4 s (2 here; 3
    # there at 1 s; 2 here at 2 s).
    assert pick_next([2.0, 2.0, 3.0], [1.0]) in (0, 1)
    # Where longest first is as good, it stays: the longest.
    assert pick_next([5.0, 4.0, 3.0], [4.0]) == 0
    assert pick_next([4.0, 9.0, 1.0], [0.0, 0.0]) == 1  # three free slots
