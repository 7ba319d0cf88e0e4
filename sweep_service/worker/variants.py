"""A trial's deployable variants: its model exported to ONNX, and post-training copies of
that file in fewer bits, each evaluated on the test set in ONNX Runtime, the runtime it
ships in.

- fp32: `torch.onnx.export` with `dynamo=True`, the supported exporter (the TorchScript
  exporter, `dynamo=False`, is 10-35x faster but deprecated), with a dynamic batch
  dimension, as one self-contained file.
- fp16: ONNX Runtime's float16 converter, inputs and outputs kept float32. Half the file;
  on CPUs ONNX Runtime converts the weights back to float32 when it loads the model, so it
  runs no faster than fp32 there (docs/edge.md).
- int8: ONNX Runtime static quantization (QDQ; int8 weights per output channel, uint8
  activations, MinMax ranges from a few training batches), which ONNX Runtime executes
  with int8 kernels. The classifier, the layer that computes the logits, stays float: it is
  tiny, and quantizing it cost briefly trained resnet18 models 1-3 points of accuracy that
  keeping it recovered (docs/edge.md). Chosen over torch.ao's FX quantization (deprecated, slower, and its
  models cannot be reloaded with torch.load): benchmarks/quantization_routes.py and
  docs/edge.md.

No variant retrains anything. A variant that cannot be made is returned with its error;
the trial itself stays completed.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from sweep_service.worker.runtime import FORMATS, FP16, FP32, INPUT_NAME, INT8, OUTPUT_NAME, runtime_name, session

# The level `gzip` and zip use by default: the size a user sees after compressing the file.
COMPRESSION_LEVEL = 6


@dataclass
class Variant:
    """One variant as the worker hands it back; the coordinator saves `data` and records the rest."""

    format: str
    runtime: str = ""  # e.g. "onnxruntime 1.32.0"
    data: bytes | None = None  # the .onnx file
    accuracy: float | None = None  # top-1 on the trial's test set, in `runtime`
    compressed_bytes: int | None = None  # `data` deflated at COMPRESSION_LEVEL
    seconds: float = 0.0  # to make and evaluate it
    error: str | None = None

    @property
    def size_bytes(self) -> int | None:
        return len(self.data) if self.data is not None else None


def export_onnx(model: nn.Module, image_size: int) -> bytes:
    """The model (in eval mode, on the CPU) as an ONNX file with a dynamic batch dimension."""
    example = torch.zeros(1, 3, image_size, image_size)
    with _quiet():
        program = torch.onnx.export(model.eval(), (example,), dynamo=True, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto.SerializeToString()


def convert_fp16(fp32: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        converted = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    return converted.SerializeToString()


def quantize_int8(fp32: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """Static int8 quantization of `fp32`, its activation ranges calibrated on `calibration`
    (float32 NCHW batches)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="sweep-int8-") as folder, _quiet():
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        # Shape inference and graph optimisation first, as ONNX Runtime's quantizer advises.
        quant_pre_process(onnx.load_from_string(fp32), prepared)
        graph = onnx.load(prepared).graph
        logits = {output.name for output in graph.output}
        classifier = [node.name for node in graph.node if logits & set(node.output) and node.name]
        quantize_static(prepared, quantized, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=classifier)
        return quantized.read_bytes()


def accuracy(model: bytes, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], threads: int) -> float:
    """Top-1 accuracy of an ONNX model on `batches`, run in ONNX Runtime."""
    runner = session(model, threads)
    correct = total = 0
    for inputs, labels in batches:
        logits = runner.run(None, {INPUT_NAME: inputs.numpy()})[0]
        correct += int((logits.argmax(axis=1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total if total else float("nan")


def make_variants(model: nn.Module, formats: Iterable[str], *, image_size: int,
                  calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], threads: int) -> list[Variant]:
    """Each of `formats`, evaluated on `test_batches`. The model is exported to fp32 in any
    case: the other formats are made from that file. `calibration`: training batches for
    int8's activation ranges."""
    formats = [f for f in FORMATS if f in formats]
    runtime = runtime_name()
    start = time.perf_counter()
    try:
        fp32 = export_onnx(model, image_size)
    except Exception as exc:
        error = f"ONNX export failed: {_error(exc)}"
        return [Variant(f, runtime, error=error, seconds=time.perf_counter() - start) for f in formats]
    makers = {FP32: lambda: fp32, FP16: lambda: convert_fp16(fp32),
              INT8: lambda: quantize_int8(fp32, [x.numpy() for x, _ in calibration])}
    variants = []
    for name in formats:
        if variants:  # the first variant's time includes the export
            start = time.perf_counter()
        try:
            data = makers[name]()
            variants.append(Variant(name, runtime, data, accuracy=accuracy(data, test_batches, threads),
                                    compressed_bytes=len(zlib.compress(data, COMPRESSION_LEVEL))))
        except Exception as exc:
            variants.append(Variant(name, runtime, error=f"{name} variant failed: {_error(exc)}"))
        variants[-1].seconds = time.perf_counter() - start
    return variants


def _error(exc: Exception) -> str:
    tail = "".join(traceback.format_exception(exc)[-2:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"


@contextlib.contextmanager
def _quiet():
    """The exporter and the quantizer print progress and advice; keep it out of the logs."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "root")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
