"""ONNX Runtime as the service runs every exported model: on the CPU, on a set number of
threads, one operator at a time. Imports neither torch nor onnxruntime until asked, so that
a process measuring a model's memory holds only what serving it needs."""
from __future__ import annotations

from pathlib import Path

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# The formats a model ships in (sweep_service.worker.variants), in the order they are made.
FP32, FP16, INT8 = "fp32", "fp16", "int8"
FORMATS = (FP32, FP16, INT8)


def runtime_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def session(model: bytes | str | Path, threads: int):
    """An ONNX Runtime CPU session of `model` (the file's bytes or its path) on `threads`
    threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
