"""Every registered model builds with a 10-class head and runs at its smallest input."""
from __future__ import annotations

import pytest
import torch
import torchvision

from model_zoo import (
    UnknownModelError,
    WeightsUnavailableError,
    create_model,
    list_models,
    model_info,
)
from model_zoo._registry import weights_file

REFERENCE_MODELS = {"resnet50", "vgg16", "mobilenet_v2", "densenet121", "efficientnet_b0", "googlenet", "alexnet"}


def test_registry_holds_the_reference_models_and_a_small_one():
    assert REFERENCE_MODELS | {"resnet18"} <= set(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet50"]


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError, match="unknown model 'lenet'.*resnet50"):
        model_info("lenet")


@pytest.mark.parametrize("name", list_models())
def test_model_builds_for_ten_classes_at_min_input(name):
    info = model_info(name)
    model = create_model(name, weights="none").eval()
    assert model.get_submodule(info.classifier).out_features == 10
    assert isinstance(model.get_submodule(info.first_conv), torch.nn.Conv2d)
    with torch.no_grad():
        out = model(torch.rand(2, 3, info.min_input_size, info.min_input_size))
    assert out.shape == (2, 10)


def test_missing_imagenet_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("resnet18", weights="imagenet", weights_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights: none" in message


def test_cached_imagenet_weights_load_through_torchvision_api(tmp_path):
    reference = torchvision.models.resnet18()
    target = weights_file("resnet18", tmp_path)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = create_model("resnet18", weights="imagenet", weights_dir=tmp_path)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 10


def test_googlenet_drops_aux_heads_from_pretrained_weights(tmp_path):
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    target = weights_file("googlenet", tmp_path)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = create_model("googlenet", weights="imagenet", weights_dir=tmp_path)
    assert torch.equal(model.conv1.conv.weight, reference.conv1.conv.weight)
    assert model.aux1 is None
