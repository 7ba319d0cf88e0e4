"""The CIFAR-10 loader reads the generated files; the synthetic set is learnable."""
from __future__ import annotations

import pickle
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10

from sweep_service.worker import data


def test_synthetic_set_is_written_in_cifar10_format(data_root):
    base = data_root / data.SYNTHETIC_DIR / "cifar-10-batches-py"
    assert sorted(p.name for p in base.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
        "data_batch_5", "test_batch"]
    with open(base / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype.name == "uint8" and entry["data"].shape[1] == 3072


def test_loader_reads_it_into_memory_with_every_class(data_root):
    splits = data.load("synthetic", str(data_root))
    assert splits.train.images.shape == (data.SYNTHETIC_TRAIN, 3, 32, 32)
    assert splits.test.images.dtype == torch.uint8
    assert set(splits.train.labels.tolist()) == set(range(10))
    assert "synthetic" in splits.name


def test_batches_augment_normalise_and_resize(data_root):
    splits = data.load("synthetic", str(data_root))
    subset = data.subset(splits.train, 300, seed=1)
    assert len(subset.labels) == 300
    batches = data.TensorBatches(subset, batch_size=128, image_size=64, shuffle=True, augment=True, seed=0)
    shapes = [(x.shape, y.shape) for x, y in batches]
    assert len(batches) == 3 and shapes[0] == ((128, 3, 64, 64), (128,)) and shapes[-1][0][0] == 44
    x, _ = next(iter(data.TensorBatches(subset, batch_size=300)))
    assert abs(float(x.mean())) < 1.0 and 0.3 < float(x.std()) < 3.0
    first = next(iter(data.TensorBatches(subset, batch_size=64, augment=True, seed=5)))[0]
    again = next(iter(data.TensorBatches(subset, batch_size=64, augment=True, seed=5)))[0]
    assert torch.equal(first, again)


def test_synthetic_classes_are_separable(data_root):
    """A nearest-class-mean classifier on raw pixels beats chance: there is signal."""
    splits = data.load("synthetic", str(data_root))
    train = splits.train.images.float().flatten(1)
    means = torch.stack([train[splits.train.labels == k].mean(0) for k in range(10)])
    test = splits.test.images.float().flatten(1)
    predicted = torch.cdist(test, means).argmin(1)
    assert (predicted == splits.test.labels).float().mean() > 0.2


def test_unavailable_cifar10_explains_where_to_put_it(tmp_path, monkeypatch):
    def offline(self):
        raise URLError("no route to host")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.prepare("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(info.value) and "dataset: synthetic" in str(info.value)


def test_crop_flip_takes_a_window_of_the_padded_image_mirrored_at_random():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = data._random_crop_flip(images, torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)  # the same draws, in the same order
    dy, dx = (torch.randint(0, 9, (64,), generator=draws) for _ in range(2))
    flip = torch.rand(64, generator=draws) < 0.5
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(64):
        window = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window), f"image {i}"
    assert out.dtype == torch.uint8 and 0 < int(flip.sum()) < 64
