"""What `round_to: 8` does to a pruned model's latency on a CPU, in one run.

For each model and rate, L1Norm prunes the same model twice with `grouping: dependency`,
`allocation: uniform`: as the rate gives (`round_to: 1`) and keeping a multiple of 8
channels per group (`round_to: 8`). Each pruned model and the unpruned one are exported to
ONNX (fp32, and int8 by the service's static quantization), and all of them are timed
together at batch 1 on one thread with the measurement stage's protocol (warm-up, then
rounds in which every model takes its turn), in one process. Printed per model and rate:
the distinct channel counts the pruned layers keep, the parameters, the latency of each
format and its ratio to the unpruned model's, and round_to 8 against round_to 1.

    python benchmarks/channel_rounding.py [--models resnet18 mobilenet_v2] [--rates 0.3 0.5 0.6]

The weights are random (no data is needed): latency depends on the shapes, not on the
values. Figures from this machine are in docs/edge.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo import create_model  # noqa: E402
from sweep_service.coordinator.config import LayerSelection  # noqa: E402
from sweep_service.plugins import load_plugins  # noqa: E402
from sweep_service.quiet import quiet_nni, silence_libraries  # noqa: E402
from sweep_service.worker.groups import channel_groups  # noqa: E402
from sweep_service.worker.latency import time_models  # noqa: E402
from sweep_service.worker.pruning import Choice, plan_pruning, prune_and_verify, select_layers  # noqa: E402
from sweep_service.worker.variants import export_onnx, quantize_int8  # noqa: E402

IMAGE_SIZE = 32
PROTOCOL = dict(threads=1, batch_sizes=[1], warmup=10, rounds=10, runs=20, image_size=IMAGE_SIZE)


def pruned(model: torch.nn.Module, name: str, rate: float, round_to: int) -> tuple[torch.nn.Module, list[int]]:
    """`model` pruned by L1Norm at `rate` and sped up; the distinct channel counts kept."""
    model = copy.deepcopy(model)
    layers = select_layers(model, name, LayerSelection().model_dump())
    groups = channel_groups(model, layers, IMAGE_SIZE)
    scores = load_plugins()["l1norm"].create().scores(model, layers, None)
    plan = plan_pruning(model, groups, Choice(scores=scores), layers, rate, "dependency", "uniform", round_to)
    with quiet_nni():
        prune_and_verify(model, groups, plan, IMAGE_SIZE)
    kept = sorted({model.get_submodule(layer).weight.shape[0] for layer in layers})
    return model.eval(), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.3, 0.5, 0.6])
    args = parser.parse_args()
    silence_libraries()
    torch.manual_seed(0)
    calibration = [torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE).numpy() for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="channel-rounding-") as folder:
        run(args, calibration, Path(folder))


def run(args: argparse.Namespace, calibration: list, folder: Path) -> None:
    """Prune, export and time every model, its files in `folder`; print the table."""
    paths: dict[str, str] = {}
    rows: list[tuple[str, float, int, list[int], int]] = []

    def save(label: str, model: torch.nn.Module) -> None:
        fp32 = export_onnx(model, IMAGE_SIZE)
        for fmt, data in (("fp32", fp32), ("int8", quantize_int8(fp32, calibration))):
            paths[f"{label} {fmt}"] = str(folder / f"{len(paths)}.onnx")
            Path(paths[f"{label} {fmt}"]).write_bytes(data)

    for name in args.models:
        model = create_model(name, weights="none").eval()
        save(f"{name} 0 1", model)
        rows.append((name, 0.0, 1, [], sum(p.numel() for p in model.parameters())))
        for rate in args.rates:
            for round_to in (1, 8):
                small, kept = pruned(model, name, rate, round_to)
                save(f"{name} {rate} {round_to}", small)
                rows.append((name, rate, round_to, kept, sum(p.numel() for p in small.parameters())))
    print(f"timing {len(paths)} models together (batch 1, 1 thread, {PROTOCOL['rounds']} rounds) ...", flush=True)
    figures = time_models(paths, **PROTOCOL)
    ms = {label: by_batch[1]["latency_ms"] for label, by_batch in figures.items()}

    print(f"\n{'model':13} {'rate':>5} {'round_to':>8}  {'params':>10}  {'fp32 ms':>8} {'vs base':>7} "
          f"{'int8 ms':>8} {'vs base':>7}  {'8 vs 1':>11}  channels kept")
    for name, rate, round_to, kept, params in rows:
        cells = []
        for fmt in ("fp32", "int8"):
            latency = ms[f"{name} {rate if rate else 0} {round_to} {fmt}"]
            cells.append(f"{latency:8.3f} {latency / ms[f'{name} 0 1 {fmt}']:6.2f}x")
        gain = ""
        if round_to == 8:
            gain = " ".join(f"{ms[f'{name} {rate} 1 {fmt}'] / ms[f'{name} {rate} 8 {fmt}']:4.1f}x" for fmt in ("fp32",
                                                                                                          "int8"))
        kept_text = ", ".join(map(str, kept[:10])) + (" ..." if len(kept) > 10 else "") if kept else "unpruned"
        print(f"{name:13} {rate:5.0%} {round_to:8d}  {params:10,d}  {cells[0]} {cells[1]}  {gain:>11}  {kept_text}")
    print("\n'8 vs 1': how many times faster round_to 8 runs than round_to 1 at the same rate (fp32, int8).")


if __name__ == "__main__":
    main()
