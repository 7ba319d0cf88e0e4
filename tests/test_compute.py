"""Compute formats: parsing, training and evaluating in each, and racing them for the fastest."""
from __future__ import annotations

import math
import time

import pytest
import torch

from model_zoo import create_model
from sweep_service.compute import (
    CHOICES,
    CONTENDER_MARGIN,
    FP32,
    RACES_LOST_TO_DROP,
    Compute,
    FormatRace,
    FormatShortlist,
    bf16_supported_on_cpu,
    candidates,
    contenders,
)
from sweep_service.training import evaluate, train

CPU = torch.device("cpu")
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def batches(n: int = 4, size: int = 32):
    """Noise plus a colour per class: learnable within a few steps."""
    generator = torch.Generator().manual_seed(0)
    colours = 2 * torch.randn(10, 3, 1, 1, generator=generator)
    labels = [torch.randint(0, 10, (size,), generator=generator) for _ in range(n)]
    return [(torch.randn(size, 3, 32, 32, generator=generator) + colours[y], y) for y in labels]


def test_names_round_trip_and_unknown_names_are_refused():
    assert [Compute.parse(name).name for name in CHOICES] == list(CHOICES)
    assert Compute.parse("bf16-channels-last") == Compute("bf16", channels_last=True)
    with pytest.raises(ValueError, match="choose auto or one of"):
        Compute.parse("int8")


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="needs a GPU"):
        Compute.parse("fp16").check(CPU)


@pytest.mark.parametrize("compute", [c.name for c in candidates(CPU)])
def test_training_in_each_cpu_candidate_learns_and_evaluates_in_fp32(compute):
    chosen = Compute.parse(compute)
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none")
    data = batches()
    first, last = (train(model, data, epochs=epochs, optimizer_settings=SGD, device=CPU,
                         steps_per_epoch=len(data), compute=chosen) for epochs in (1, 4))
    assert last < first / 2
    assert model.conv1.weight.dtype == torch.float32
    assert model.conv1.weight.is_contiguous(memory_format=chosen.memory_format)
    assert evaluate(model, data, CPU, chosen) > 0.3  # chance: 0.1


def test_a_race_trains_every_step_and_hands_the_rest_to_the_fastest_timed_candidate():
    entrants = candidates(CPU)
    race = FormatRace(entrants)
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", weights="none")
    data = batches(n=2 * len(entrants) + 2, size=16)
    first_conv = model.features[0][0].weight.detach().clone()
    loss = train(model, data, epochs=1, optimizer_settings=SGD, device=CPU, steps_per_epoch=len(data),
                 compute=race)
    assert math.isfinite(loss) and not race.racing
    assert not torch.equal(model.features[0][0].weight, first_conv)  # the race's steps trained it
    assert set(race.timings) == {c.name for c in entrants}  # each candidate timed once
    assert race.timings[race.winner.name] == min(race.timings.values())
    assert model.features[0][0].weight.is_contiguous(memory_format=race.winner.memory_format)


def test_a_race_trains_the_same_steps_whatever_the_timings_and_survives_a_short_run():
    entrants = [Compute("fp32", channels_last=True), Compute("bf16", channels_last=True), FP32]
    steps, winners = [], []
    for seconds in ([1.0, 0.5, 9.0, 9.0, 0.6, 0.4], [1.0, 0.5, 0.3, 0.2, 9.0, 9.0]):
        race, seen = FormatRace(entrants), []
        for s in seconds:  # each candidate: warm-up, then timed
            seen.append(race.current.name)
            race.record(s)
        assert not race.racing and race.current == race.winner
        steps.append(seen)
        winners.append(race.winner)
    # a slow warm-up does not skip a timed step: a rerun trains the same formats in turn
    assert steps[0] == steps[1] == [c.name for c in entrants for _ in range(2)]
    assert winners == [FP32, Compute("bf16", channels_last=True)]
    short = FormatRace(entrants)
    short.record(0.5)  # the first warm-up; the run ends before any timed step
    assert short.racing and short.winner == entrants[0]


def test_bf16_is_a_candidate_exactly_where_the_cpu_has_it():
    assert (Compute("bf16", channels_last=True) in candidates(CPU)) == bf16_supported_on_cpu()
    assert candidates(CPU)[0] == Compute("fp32", channels_last=True) and candidates(CPU)[-1] == FP32


def test_a_trial_races_only_the_formats_its_baseline_found_close():
    from types import SimpleNamespace

    from sweep_service.trial import _compute_for

    auto, explicit = SimpleNamespace(compute="auto"), SimpleNamespace(compute="fp32-channels-last")
    assert _compute_for(explicit, CPU, known=["fp32"]) == Compute("fp32", channels_last=True)
    assert _compute_for(auto, CPU, known=["fp32-channels-last"]) == Compute("fp32", channels_last=True)
    close = _compute_for(auto, CPU, known=["fp32-channels-last", "fp32"])
    assert isinstance(close, FormatRace) and close.entrants == [Compute("fp32", channels_last=True), FP32]
    # only what this worker can run: a GPU baseline's fp16 is dropped
    assert _compute_for(auto, CPU, known=["fp16", "fp32"]) == FP32
    baseline = _compute_for(auto, CPU, known=[])
    assert isinstance(baseline, FormatRace) and baseline.entrants == candidates(CPU)
    assert _compute_for(auto, CPU, known=["fp16"]).entrants == candidates(CPU)  # measured on a GPU worker
    with pytest.raises(ValueError, match="needs a GPU"):
        _compute_for(SimpleNamespace(compute="fp16"), CPU, known=[])


def test_contenders_are_the_formats_close_to_the_fastest_fastest_first():
    timings = {"fp32-channels-last": 0.36, "bf16-channels-last": 0.35, "fp32": 0.50}
    assert contenders(timings) == ["bf16-channels-last", "fp32-channels-last"]
    assert contenders({"fp32": 1.0, "fp32-channels-last": 1.0 + CONTENDER_MARGIN}) == ["fp32", "fp32-channels-last"]
    assert contenders({"fp32-channels-last": 0.24, "fp32": 0.41, "bf16-channels-last": 0.55}) == ["fp32-channels-last"]
    # a pruned trial's race narrows its model's formats: what fell behind stays out
    still = contenders({"fp32": 0.20, "fp32-channels-last": 0.18, "bf16-channels-last": 0.30},
                       among=["fp32", "fp32-channels-last", "bf16-channels-last"])
    assert still == ["fp32-channels-last", "fp32"]
    assert contenders({"fp32": 0.20, "fp32-channels-last": 0.18}, among=["fp32-channels-last", "bf16-channels-last"]) \
        == ["fp32-channels-last"]
    assert contenders({"fp32": 0.20}, among=["bf16-channels-last"]) == ["fp32"]  # never an empty list


def test_a_shortlist_drops_a_close_format_once_it_has_lost_enough_races_in_a_row():
    shortlist = FormatShortlist()
    # the baseline's race: fp32 is out of reach, fp32 channels-last close enough to race on
    shortlist.note_race({"bf16-channels-last": 0.20, "fp32-channels-last": 0.23, "fp32": 0.40})
    assert shortlist.formats == ["bf16-channels-last", "fp32-channels-last"]
    # close each time, but always behind: out after its last allowed loss
    for lost in range(2, RACES_LOST_TO_DROP + 1):
        shortlist.note_race({"bf16-channels-last": 0.10, "fp32-channels-last": 0.12})
        expected = ["bf16-channels-last"] + (["fp32-channels-last"] if lost < RACES_LOST_TO_DROP else [])
        assert shortlist.formats == expected, lost
    assert shortlist.races_lost == {"bf16-channels-last": 0, "fp32-channels-last": RACES_LOST_TO_DROP, "fp32": 1}


def test_a_win_ends_a_formats_losing_streak():
    shortlist = FormatShortlist()
    for _ in range(RACES_LOST_TO_DROP - 1):
        shortlist.note_race({"fp32": 0.20, "fp32-channels-last": 0.22})
    shortlist.note_race({"fp32": 0.20, "fp32-channels-last": 0.19})  # faster at these shapes
    assert shortlist.races_lost == {"fp32": 1, "fp32-channels-last": 0}
    shortlist.note_race({"fp32": 0.20, "fp32-channels-last": 0.21})
    assert shortlist.formats == ["fp32", "fp32-channels-last"]


def test_a_shortlist_is_never_empty_and_a_fixed_choice_replaces_it():
    shortlist = FormatShortlist(formats=["fp32-channels-last"],
                                races_lost={"fp32": 0, "fp32-channels-last": RACES_LOST_TO_DROP - 1})
    # a trial dispatched before fp32 fell out of reach reports a race that fp32 won: the one
    # format left stays, though this was its last allowed loss
    shortlist.note_race({"fp32": 0.10, "fp32-channels-last": 0.12})
    assert shortlist.formats == ["fp32-channels-last"]
    shortlist.note_choice("fp32")
    assert shortlist.formats == ["fp32"]


def test_a_cpu_race_times_work_not_waiting_for_a_core():
    race = FormatRace([FP32], CPU)
    start = race.clock()
    time.sleep(0.3)  # as a step preempted by another process
    waited = race.clock() - start
    start = race.clock()
    sum(i * i for i in range(2_000_000))
    worked = race.clock() - start
    assert waited < 0.05 and worked > waited
