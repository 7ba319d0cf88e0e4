"""A trial's deployable variants, made by the real exporter and quantizer and run in ONNX
Runtime: the fp32 file computes what the torch model computes at any batch size, int8 is
executed with int8 operators in about a quarter of the bytes, fp16 in half, and a model
that cannot be exported gives errors, not an exception."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from model_zoo import create_model
from sweep_service.worker.runtime import INPUT_NAME, session
from sweep_service.worker.variants import FP16, FP32, INT8, convert_fp16, export_onnx, make_variants, quantize_int8


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet18", weights="none").eval()


@pytest.fixture(scope="module")
def fp32_file(resnet) -> bytes:
    return export_onnx(resnet, 32)


def _batches(n: int, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(n)]


def test_exported_file_computes_what_the_model_computes_at_any_batch_size(resnet, fp32_file):
    runner = session(fp32_file, threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = resnet(x).numpy()
        np.testing.assert_allclose(runner.run(None, {INPUT_NAME: x.numpy()})[0], expected, rtol=1e-3, atol=1e-4)
    # one self-contained file: the weights are inside, not in a `.data` file beside it
    model = onnx.load_from_string(fp32_file)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_int8_is_quantized_per_channel_and_a_quarter_to_a_third_of_the_bytes(fp32_file):
    int8 = quantize_int8(fp32_file, [x.numpy() for x, _ in _batches(2)])
    ops = [node.op_type for node in onnx.load_from_string(int8).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    weights = [t for t in onnx.load_from_string(int8).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and any(len(t.dims) == 4 for t in weights)  # conv weights stored as int8
    assert 0.2 < len(int8) / len(fp32_file) < 0.35
    fp16 = convert_fp16(fp32_file)
    assert 0.45 < len(fp16) / len(fp32_file) < 0.55
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    assert session(int8, 1).run(None, {INPUT_NAME: x})[0].shape == (3, 10)  # float32 in, logits out


def test_make_variants_evaluates_each_format_on_the_test_set(resnet):
    test = _batches(2, seed=1)
    variants = make_variants(resnet, [FP32, INT8, FP16], image_size=32, calibration=_batches(2),
                             test_batches=test, threads=1)
    assert [v.format for v in variants] == [FP32, FP16, INT8]
    with torch.no_grad():
        torch_accuracy = sum(int((resnet(x).argmax(1) == y).sum()) for x, y in test) / 32
    by_format = {v.format: v for v in variants}
    assert by_format[FP32].accuracy == pytest.approx(torch_accuracy)
    for v in variants:
        assert v.error is None and v.runtime.startswith("onnxruntime ") and v.seconds > 0
        assert 0 < v.compressed_bytes < v.size_bytes == len(v.data)
    assert make_variants(resnet, [FP32], image_size=32, calibration=[], test_batches=test,
                         threads=1)[0].size_bytes == by_format[FP32].size_bytes


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export cannot trace it."""

    def forward(self, x):
        return x.flatten(1)[:, :10] if x.sum() > 0 else -x.flatten(1)[:, :10]


def test_a_model_that_cannot_be_exported_gives_each_variant_its_error():
    variants = make_variants(DataDependent(), [FP32, INT8], image_size=32, calibration=_batches(1),
                             test_batches=_batches(1), threads=1)
    assert [v.format for v in variants] == [FP32, INT8]
    for v in variants:
        assert v.data is None and v.accuracy is None and v.error.startswith("ONNX export failed: ")
