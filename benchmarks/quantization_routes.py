"""Which int8 route the service ships: ONNX Runtime static quantization against torch.ao's
FX-mode quantization, on two models, in one run.

For each model (trained briefly from scratch on the synthetic CIFAR-10-format set, so the
run is offline), both routes quantize the same trained model with the same calibration
batches; then every variant is timed at batch 1 on one thread with the service's protocol
(warm-up, then rounds in which all variants take turns) in this one process, and
evaluated on the same test images. Printed: accuracy, file size, batch-1 latency (median
[p10-p90]) and the speed-up over the route's own fp32.

    python benchmarks/quantization_routes.py [--models resnet18 mobilenet_v2] [--data-root data]

The FX route stands on two deprecated stacks (torch.ao.quantization and, to save the model,
TorchScript): the warnings it raised and whether its model survives torch.save/torch.load
are printed too. Numbers from this machine are in docs/edge.md.
"""
from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo import create_model, model_info  # noqa: E402
from sweep_service.quiet import silence_libraries  # noqa: E402
from sweep_service.worker import data as datasets  # noqa: E402
from sweep_service.worker.latency import summarize  # noqa: E402
from sweep_service.worker.runtime import INPUT_NAME, session  # noqa: E402
from sweep_service.worker.training import train  # noqa: E402
from sweep_service.worker.variants import export_onnx, quantize_int8  # noqa: E402

WARMUP, ROUNDS, RUNS = 10, 10, 20
CALIBRATION_BATCHES, BATCH = 8, 32
OPTIMIZER = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def trained(name: str, splits, args) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, weights="none")
    batches = datasets.TensorBatches(datasets.subset(splits.train, args.train_subset, 0), batch_size=64,
                                     shuffle=True, augment=True)
    train(model, batches, epochs=args.epochs, optimizer_settings=OPTIMIZER, device=torch.device("cpu"))
    return model.eval()


def quantize_fx(model: torch.nn.Module, classifier: str,
                calibration: list[torch.Tensor]) -> tuple[torch.nn.Module, list[str]]:
    """torch.ao FX graph mode static int8 (x86 backend), calibrated on `calibration`, the
    `classifier` module kept float as the service keeps it in ONNX Runtime; returns the
    converted model and the warnings raised."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapping = get_default_qconfig_mapping("x86").set_module_name(classifier, None)
        prepared = prepare_fx(copy.deepcopy(model), mapping, (calibration[0][:1],))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
        converted = convert_fx(prepared)
    return converted, sorted({f"{w.category.__name__}: {' '.join(str(w.message).split())[:90]}" for w in caught})


def torchscript(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The FX model saved the only way that reloads: traced and frozen TorchScript."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(model, example).eval())
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer)
    return buffer.getvalue()


def reloads_with_torch_load(model: torch.nn.Module) -> str:
    buffer = io.BytesIO()
    try:
        torch.save(model, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=False)
        return "yes"
    except Exception as exc:
        return f"no ({type(exc).__name__}: {str(exc).splitlines()[0][:70]})"


def ort(runner):
    """An ONNX Runtime session called like a torch model."""
    return lambda x: torch.from_numpy(runner.run(None, {INPUT_NAME: x.numpy()})[0])


def accuracy(predict, test: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((predict(x).argmax(1) == y).sum()) for x, y in test)
    return correct / sum(len(y) for _, y in test)


def interleaved_latency(calls: dict[str, callable]) -> dict[str, dict]:
    """The service's protocol (sweep_service.worker.latency), in this process."""
    names = list(calls)
    for name in names:
        for _ in range(WARMUP):
            calls[name]()
    samples = {n: [] for n in names}
    medians = {n: [] for n in names}
    for r in range(ROUNDS):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times = []
            for _ in range(RUNS):
                start = time.perf_counter()
                calls[name]()
                times.append(time.perf_counter() - start)
            samples[name] += times
            medians[name].append(statistics.median(times))
    return {n: summarize(samples[n], medians[n]) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--train-subset", type=int, default=3000)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    silence_libraries()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = datasets.load("synthetic", str(datasets.prepare("synthetic", args.data_root)))
    test = list(datasets.TensorBatches(datasets.subset(splits.test, args.test_subset, 1), batch_size=250))
    calibration = [x for x, _ in datasets.TensorBatches(datasets.subset(splits.train, args.train_subset, 0),
                                                        batch_size=BATCH, max_batches=CALIBRATION_BATCHES)]
    rows, calls, notes = [], {}, []
    x1 = torch.randn(1, 3, 32, 32)
    for name in args.models:
        model = trained(name, splits, args)
        torch.set_num_threads(1)
        start = time.perf_counter()
        fp32 = export_onnx(model, 32)
        export_seconds = time.perf_counter() - start
        int8 = quantize_int8(fp32, [x.numpy() for x in calibration])
        ort_seconds = time.perf_counter() - start - export_seconds
        start = time.perf_counter()
        fx, caught = quantize_fx(model, model_info(name).classifier, calibration)
        fx_seconds = time.perf_counter() - start
        scripted = torchscript(fx, x1)
        fx_ts = torch.jit.load(io.BytesIO(scripted))
        sessions = {fmt: session(data, 1) for fmt, data in (("fp32", fp32), ("int8", int8))}
        state = io.BytesIO()
        torch.save(model.state_dict(), state)
        variants = {  # route: (predict, file bytes, seconds to make it from the trained model)
            "torch eager fp32": (model, len(state.getvalue()), None),
            "ONNX Runtime fp32": (ort(sessions["fp32"]), len(fp32), export_seconds),
            "ONNX Runtime int8": (ort(sessions["int8"]), len(int8), ort_seconds),
            "torch.ao FX int8": (fx, len(scripted), fx_seconds),
            "torch.ao FX int8, TorchScript": (fx_ts, len(scripted), fx_seconds),
        }
        with torch.inference_mode():
            for route, (predict, size, seconds) in variants.items():
                rows.append(dict(model=name, route=route, accuracy=accuracy(predict, test), mb=size / 1e6,
                                 seconds=seconds))
                calls[f"{name}/{route}"] = (lambda p=predict: p(x1))
        notes.append(f"{name}: the FX model reloads with torch.load: {reloads_with_torch_load(fx)}; "
                     "torch.ao warned:\n  " + ("\n  ".join(caught) or "nothing"))
    with torch.inference_mode():
        timed = interleaved_latency(calls)
    print(f"\nbatch 1, 1 thread, {ROUNDS} rounds x {RUNS} calls interleaved across all variants; "
          f"{args.test_subset} synthetic test images; {CALIBRATION_BATCHES} calibration batches of {BATCH}\n")
    print(f"{'model':<14} {'route':<31} {'accuracy':>8} {'MB':>7} {'make s':>10}  "
          f"{'latency ms [p10-p90]':<22} {'vs fp32':>7}")
    for row in rows:
        figures = timed[f"{row['model']}/{row['route']}"]
        own = "torch eager fp32" if row["route"].startswith("torch") else "ONNX Runtime fp32"
        reference = timed[f"{row['model']}/{own}"]["latency_ms"]
        seconds = f"{row['seconds']:.2f}" if row["seconds"] is not None else "-"
        print(f"{row['model']:<14} {row['route']:<31} {row['accuracy']:>8.1%} {row['mb']:>7.2f} {seconds:>10}  "
              f"{figures['latency_ms']:.3f} [{figures['latency_p10_ms']:.3f}-{figures['latency_p90_ms']:.3f}]"
              f"{'':<2} {reference / figures['latency_ms']:>6.2f}x")
    print("\n(make s: ONNX fp32 = export, ONNX int8 = quantization of the export, FX int8 = prepare, calibrate "
          "and convert; vs fp32: speed-up over the same runtime's fp32, FX int8 against torch eager fp32)")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
