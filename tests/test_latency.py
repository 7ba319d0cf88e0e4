"""The measuring protocol: its statistics (pure), the grouping and comparison the stage
relies on (pure), and a real run in fresh processes on two small exported models."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from seed_db import EDGE_NODE, seed_sweep, seed_variants

from model_zoo import create_model
from sweep_service.coordinator.measurement import (
    FASTER,
    SAME,
    SLOWER,
    agreement,
    agreement_line,
    compare_latency,
    groups,
)
from sweep_service.coordinator.store import MEASUREMENT_FIELDS, ResultStore
from sweep_service.worker.latency import MeasuringNode, node_identity, summarize, usable_cpus
from sweep_service.worker.variants import export_onnx, quantize_int8


def test_summary_of_timed_calls():
    samples = [i / 1000 for i in range(1, 101)]  # 1 ... 100 ms
    figures = summarize(samples, round_medians=[0.040, 0.050, 0.060])
    assert figures["latency_ms"] == pytest.approx(50.5)
    assert figures["latency_p10_ms"] == pytest.approx(10.9)
    assert figures["latency_p90_ms"] == pytest.approx(90.1)
    assert figures["round_spread"] == pytest.approx(0.4)  # (60 - 40) / 50
    assert figures["round_medians_ms"] == pytest.approx([40, 50, 60])


def test_a_difference_counts_when_nine_rounds_of_ten_agree():
    baseline = {"round_medians_json": json.dumps([1.0] * 10)}
    slower_in = lambda n: {"round_medians_json": json.dumps([1.1] * n + [0.9] * (10 - n))}  # noqa: E731
    assert compare_latency(slower_in(10), baseline) == compare_latency(slower_in(9), baseline) == SLOWER
    assert compare_latency(slower_in(8), baseline) == compare_latency(slower_in(2), baseline) == SAME
    assert compare_latency(slower_in(1), baseline) == compare_latency(slower_in(0), baseline) == FASTER
    assert compare_latency(baseline, baseline) == SAME


def test_a_run_is_compared_with_the_last_one_of_its_node_and_protocol(tmp_path):
    sweep_id = seed_sweep(tmp_path / "r.db", output_dir=tmp_path / "out")
    seed_variants(tmp_path / "r.db", sweep_id, tmp_path / "out" / "models")  # run 1 on EDGE_NODE
    store = ResultStore(tmp_path / "r.db")
    first = store.measurements(sweep_id)
    protocol = json.loads(store.measurement_runs(sweep_id)[0]["protocol_json"])

    def again(change, node=EDGE_NODE, **protocol_changes) -> int:
        run_id = store.begin_measurement(sweep_id, {**protocol, **protocol_changes}, "edge")
        store.record_measurements(run_id, [
            {**{k: m[k] for k in MEASUREMENT_FIELDS}, **node, "latency_ms": m["latency_ms"] * (1 + change(m))}
            for m in first])
        store.end_measurement(run_id, "finished", seconds=1.0, variants=len(first))
        return run_id

    moved = {m["variant_id"] for m in first if m["format"] == "fp32" and m["kind"] == "baseline"}
    def drift(m) -> float:
        return 0.2 if m["variant_id"] in moved else -0.01

    second = again(drift)
    found = agreement(store, sweep_id, second)
    assert found.earlier_run == 1 and len(found.changes) == len(first)
    assert found.within == len(first) - 2 * len(moved)  # batch sizes 1 and 8
    assert {m["variant_id"] for m, _ in found.changes[:2 * len(moved)]} == moved
    assert all(c == pytest.approx(0.2) for _, c in found.changes[:2 * len(moved)])
    line = agreement_line(found)
    assert line.startswith(f"against measurement run 1 (same node and protocol): {found.within} of {len(first)} "
                           "within 10%; most moved: ") and " baseline fp32 batch " in line and "+20%" in line

    elsewhere = again(lambda m: 0.5, node={**EDGE_NODE, "node_host": "edge-2"})
    assert agreement(store, sweep_id, elsewhere) is None  # no earlier run on edge-2
    other_protocol = again(lambda m: 0.5, rounds=30)
    assert agreement(store, sweep_id, other_protocol) is None
    latest = again(drift)  # as the run before it on this node, with this protocol
    assert agreement(store, sweep_id, latest).earlier_run == second  # skips the other node's and protocol's runs
    assert agreement(store, sweep_id, latest).within == len(first)


def test_groups_keep_a_model_whole_and_respect_the_size_limit():
    variants = [{"model": m, "size_bytes": size} for m, size in
                [("a", 40), ("a", 10), ("b", 30), ("c", 90), ("c", 20), ("d", 5)]]
    packed = groups(variants, limit=100)
    assert [[v["model"] for v in g] for g in packed] == [["a", "a", "b"], ["c", "c"], ["d"]]
    assert groups(variants, limit=10**9) == [variants]


def test_node_identity_names_host_and_cpu():
    node = node_identity()
    assert node["node_host"] and node["cpu_model"] and node["cpu_arch"]
    assert 0 < node["cpus"] == usable_cpus() <= os.cpu_count()


@pytest.fixture(scope="module")
def two_models() -> dict[str, bytes]:
    torch.manual_seed(0)
    fp32 = export_onnx(create_model("resnet18", weights="none").eval(), 32)
    return {"fp32": fp32, "int8": quantize_int8(fp32, [torch.randn(8, 3, 32, 32).numpy()])}


def test_protocol_runs_in_fresh_processes(two_models):
    protocol = dict(threads=1, batch_sizes=[1, 4], warmup=2, rounds=4, runs=5, image_size=32)
    abandoned = Path(tempfile.mkdtemp(prefix=f"{MeasuringNode.PREFIX}{2**22 + 1}-"))  # above Linux's pid_max
    (abandoned / "0.onnx").write_bytes(two_models["fp32"])
    node = MeasuringNode()
    assert not abandoned.exists()  # a killed stage's files go when the next one starts
    for name, data in two_models.items():
        node.receive(name, data)
    answer = node.measure(protocol, parallel=2)
    assert not any(node.folder.iterdir())  # a group's files go once it is measured
    node.close()
    assert not node.folder.exists()
    assert set(answer["models"]) == {"fp32", "int8"} and answer["node"]["cpu_model"]
    for by_batch in answer["models"].values():
        assert set(by_batch) == {1, 4}
        for figures in by_batch.values():
            assert 0 < figures["latency_p10_ms"] <= figures["latency_ms"] <= figures["latency_p90_ms"]
            assert len(figures["round_medians_ms"]) == 4
            # a fresh process: the interpreter, numpy and ONNX Runtime, then the model
            assert 40 < figures["peak_rss_mb"] < 600
    peaks = {name: by_batch[1]["peak_rss_mb"] for name, by_batch in answer["models"].items()}
    assert peaks["int8"] < peaks["fp32"]  # 11 MB of int8 weights against 45 MB of float32


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, `cpus: 1.5`
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # cgroup v1, `cpus: 1`
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_usable_cpus_counts_a_containers_quota_in_cgroup_v1_and_v2(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = float(len(os.sched_getaffinity(0)))
    assert usable_cpus(tmp_path) == (min(affinity, expected) if expected else affinity)
