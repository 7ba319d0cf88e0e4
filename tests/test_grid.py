"""Grid expansion is deterministic and keys identify what determines a result."""
from __future__ import annotations

import dataclasses
import json

from sweep_service.coordinator.config import load_config
from sweep_service.coordinator.grid import expand
from sweep_service.spec import TrialSpec
from tests.conftest import REPO


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


def test_each_seed_has_its_own_baseline_and_widening_the_seeds_keeps_the_sweep(tiny_config):
    path, _ = tiny_config(models=["resnet18", "mobilenet_v2"])
    one = list(expand(load_config(path)))
    path3, _ = tiny_config(models=["resnet18", "mobilenet_v2"], repeats=3)
    three = list(expand(load_config(path3)))
    assert len(three) == 3 * len(one) == 2 * 3 * (1 + 2 * 2)
    baselines = {(s.model, s.seed): s for s in three if s.kind == "baseline"}
    assert sorted(baselines) == [(m, seed) for m in ("mobilenet_v2", "resnet18") for seed in (0, 1, 2)]
    for spec in three:
        if spec.kind == "pruned":
            assert spec.baseline_key == baselines[(spec.model, spec.seed)].key
    # Seed 0 is the one-seed sweep: same trials, same keys, same sweep.
    assert [s.key for s in three if s.seed == 0] == [s.key for s in one]
    assert load_config(path3).sweep_id() == load_config(path).sweep_id()
    assert len({s.key for s in three}) == len(three)


def test_grouping_and_allocation_are_part_of_a_trials_identity(tiny_config):
    path, _ = tiny_config()
    base = list(expand(load_config(path)))
    assert {(s.grouping, s.allocation) for s in base} == {("dependency", "uniform")}  # the defaults
    for change in ({"grouping": "layer"}, {"allocation": "global"}):
        changed, _ = tiny_config(**change)
        assert {s.key for s in expand(load_config(changed))}.isdisjoint(s.key for s in base), change
    # a spec recorded before these fields existed pruned each layer on its own
    recorded = json.loads(base[1].to_json())
    del recorded["grouping"], recorded["allocation"]
    old = TrialSpec.from_json(json.dumps(recorded))
    assert (old.grouping, old.allocation) == ("layer", "uniform")


def test_round_to_is_part_of_a_pruned_trials_identity_and_no_other_key_moves(tiny_config):
    path, _ = tiny_config()
    base = {s.label: s for s in expand(load_config(path))}
    base_sweep = load_config(path).sweep_id()
    rounded_path, _ = tiny_config(round_to=8)  # the same file, rewritten
    rounded = {s.label: s for s in expand(load_config(rounded_path))}
    for label, spec in rounded.items():
        if spec.kind == "baseline":  # a baseline removes nothing: the sweeps share it
            assert spec.round_to == 1 and spec.key == base[label].key
        else:
            assert spec.round_to == 8 and spec.key != base[label].key
    # at its default the field is left out of the key, as it was before it existed
    assert "round_to" not in next(s for s in base.values() if s.kind == "pruned").identity()
    assert load_config(rounded_path).sweep_id() != base_sweep


def test_spec_round_trips_through_json(tiny_config):
    path, _ = tiny_config()
    spec = list(expand(load_config(path)))[1]
    assert TrialSpec.from_json(spec.to_json()) == spec
    assert spec.label == "resnet18 l1norm 30%"


def test_from_json_tolerates_fields_added_or_removed_since_a_row_was_written(tiny_config):
    path, _ = tiny_config()
    spec = list(expand(load_config(path)))[1]
    recorded = json.loads(spec.to_json())
    recorded["field_of_a_later_version"] = 1
    recorded["latency_runs"] = 20  # a field of an earlier version
    del recorded["quantize"]  # a row written before this field existed
    back = TrialSpec.from_json(json.dumps(recorded))
    assert back.key == spec.key and back.quantize == TrialSpec.quantize


def test_every_field_is_declared_part_of_the_identity_or_not():
    marked = {f.name: f.metadata.get("identity") for f in dataclasses.fields(TrialSpec)}
    assert None not in marked.values(), [name for name, v in marked.items() if v is None]
    assert {name for name, v in marked.items() if not v} == {"data_root", "weights_dir", "cpus", "gpus",
                                                              "quantize"}


# Keys of the smoke config's trials, pinned: a change here changes which recorded trials a
# re-run finds. Change them only with KEY_VERSION, on purpose (3: `grouping` and
# `allocation` joined the identity, and channels are chosen per group by default).
PINNED = {
    ("baseline", "resnet18", "none", 0.0): "cc25e75c9d893048",
    ("pruned", "resnet18", "l1norm", 0.3): "c40609dc4e842620",
    ("pruned", "mobilenet_v2", "fpgm", 0.6): "f7e6d4ccbd1a57bd",
}
PINNED_SWEEP_ID = "smoke-7c247886"


def test_known_keys_are_pinned():
    config = load_config(REPO / "configs" / "smoke.yaml")
    keys = {(s.kind, s.model, s.pruner, s.rate): s.key for s in expand(config)}
    assert {k: keys[k] for k in PINNED} == PINNED
    assert config.sweep_id() == PINNED_SWEEP_ID
