"""CIFAR-10 data: real (torchvision download) or synthetic (same on-disk format).

Both are read by torchvision's CIFAR10 class into uint8 tensors kept in memory; batches
are augmented as whole tensors (random crop with padding, horizontal flip), which is
several times faster than per-image PIL transforms on a CPU. The loaded set is cached
per process, so a warm Ray worker reads it once for all its trials.
"""
from __future__ import annotations

import functools
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from sweep_service.dataset_info import SYNTHETIC_TEST, SYNTHETIC_TRAIN, describe

CIFAR_DIR = "cifar-10-batches-py"
SYNTHETIC_DIR = "synthetic-cifar10"
SYNTHETIC_VERSION = 1
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# ImageNet statistics: the pretrained models expect them, and CIFAR-10's are close.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class DatasetUnavailableError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8, N x 3 x 32 x 32
    labels: torch.Tensor  # int64, N


@dataclass(frozen=True)
class DataSplits:
    name: str  # what the results say they were measured on
    train: ImageSet
    test: ImageSet


@functools.cache
def cifar10_reader(dataset: str) -> type:
    """torchvision's CIFAR10 class, or for `synthetic` one that reads the files the project
    generated: the on-disk format is the same, but the md5 sums of the official archive do
    not apply (with no md5, torchvision checks that the file exists).

    torchvision is imported here, not with this module: its import takes over a second, and
    the coordinator, which only prepares the data, does not need it for synthetic data."""
    from torchvision.datasets import CIFAR10

    if dataset != "synthetic":
        return CIFAR10

    class GeneratedCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return GeneratedCIFAR10


def dataset_root(dataset: str, data_root: str | Path) -> Path:
    return Path(data_root) / (SYNTHETIC_DIR if dataset == "synthetic" else "")


def prepare(dataset: str, data_root: str | Path) -> Path:
    """Make sure the data set is on disk under `data_root` (generate or download it once,
    under a file lock so that workers sharing a volume do not race)."""
    root = dataset_root(dataset, data_root)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".prepare.lock")):
        if dataset == "synthetic":
            marker = root / "SYNTHETIC.json"
            if not marker.is_file() or json.loads(marker.read_text()).get("version") != SYNTHETIC_VERSION:
                write_synthetic_cifar10(root)
        else:
            reader = cifar10_reader(dataset)  # outside the try: not a download failure
            try:
                reader(str(root), train=True, download=True)
                reader(str(root), train=False, download=True)
            except Exception as exc:
                raise DatasetUnavailableError(
                    f"CIFAR-10 is not in {root / CIFAR_DIR} and could not be downloaded "
                    f"({type(exc).__name__}: {exc}). Extract cifar-10-python.tar.gz into {root} "
                    "(so that it holds cifar-10-batches-py/), or use `dataset: synthetic` for an "
                    "offline run."
                ) from exc
    return root


@functools.lru_cache(maxsize=2)
def load(dataset: str, data_root: str) -> DataSplits:
    """Read the data set into memory (once per process)."""
    root = prepare(dataset, data_root)
    reader = cifar10_reader(dataset)
    splits = []
    for train in (True, False):
        ds = reader(str(root), train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        splits.append(ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return DataSplits(describe(dataset), *splits)


def subset(images: ImageSet, size: int | None, seed: int) -> ImageSet:
    """A class-stratified-by-chance random subset (the same for every trial of a seed)."""
    if size is None or size >= len(images.labels):
        return images
    index = torch.randperm(len(images.labels), generator=torch.Generator().manual_seed(seed))[:size]
    return ImageSet(images.images[index], images.labels[index])


class TensorBatches:
    """Iterates (inputs, labels) batches from an in-memory ImageSet.

    Augmentation runs on whole batches: a random 32x32 crop of the zero-padded image
    (padding 4) and a random horizontal flip, then normalisation and, if the model needs
    larger inputs, bilinear resizing.

    Every random draw (each epoch's order, each batch's crops and flips) comes from
    `generator`, so an epoch stopped after some batches continues exactly from the epoch's
    order, the batch reached and the generator's state (`batches(order, start)`).
    """

    def __init__(self, data: ImageSet, *, batch_size: int, image_size: int = 32,
                 shuffle: bool = False, augment: bool = False, seed: int = 0,
                 max_batches: int | None = None, min_batch: int = 1):
        self.data = data
        self.batch_size = batch_size
        self.min_batch = min_batch  # a last batch with fewer images is left out
        self.image_size = image_size
        self.shuffle = shuffle
        self.augment = augment
        self.max_batches = max_batches
        self.generator = torch.Generator().manual_seed(seed)
        # (x / 255 - mean) / std as one multiply-add on the uint8 pixels
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self._scale = 1 / (255 * std)
        self._shift = -torch.tensor(MEAN).view(1, 3, 1, 1) / std

    def __len__(self) -> int:
        images = len(self.data.labels)
        n = images // self.batch_size + (images % self.batch_size >= self.min_batch)
        return min(n, self.max_batches) if self.max_batches else n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.epoch_order())

    def epoch_order(self) -> torch.Tensor:
        """The order in which an epoch visits the images: drawn afresh when shuffling."""
        n = len(self.data.labels)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def batches(self, order: torch.Tensor, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch in `order`, from batch `start` on. A batch's random draws
        are taken when it is requested, so stopping after a batch leaves the generator where
        the next batch begins."""
        for b in range(start, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._transform(self.data.images[index]), self.data.labels[index]

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment:  # on the uint8 pixels: a quarter of the bytes to move
            images = _random_crop_flip(images, self.generator)
        x = torch.addcmul(self._shift, images.float(), self._scale)
        if self.image_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return x


def _random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per image: a random h x w window of the zero-padded image, mirrored with p = 0.5.
    One gather from the flattened padded images, by each output pixel's flat index, which
    moves each pixel once (gathering rows, then columns, moves them twice)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).view(b, c, -1)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = (torch.arange(h)[None, :] + dy[:, None]) * (w + 2 * pad)
    index = (rows[:, :, None] + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, index).view(b, c, h, w)


def write_synthetic_cifar10(root: str | Path, *, n_train: int = SYNTHETIC_TRAIN,
                            n_test: int = SYNTHETIC_TEST, seed: int = 0) -> Path:
    """Write a learnable stand-in for CIFAR-10 in its own on-disk format.

    Each class has a smooth colour field and an oriented stripe texture of its own;
    every image is its class's pattern, randomly shifted and scaled in contrast, plus
    noise and a distractor pattern from another class. A small CNN learns it well above
    chance within an epoch but not perfectly, so pruning damage shows.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    prototypes = []
    for k in range(10):
        angle = np.pi * k / 10
        freq = 3 + (k % 4) * 1.5
        stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        colour = rng.uniform(0.2, 0.8, size=3)
        blob = np.exp(-((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2) / 0.08)
        prototypes.append(colour[:, None, None] * (0.6 + 0.4 * blob) + 0.25 * stripes[None])
    prototypes = np.stack(prototypes).astype(np.float32)  # 10 x 3 x 48 x 48

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.integers(0, 10, size=n)
        distractors = (labels + rng.integers(1, 10, size=n)) % 10
        oy, ox = rng.integers(0, 17, size=(2, n))
        images = np.empty((n, 3, 32, 32), dtype=np.float32)
        for i in range(n):
            main = prototypes[labels[i], :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
            other = prototypes[distractors[i], :, ox[i]:ox[i] + 32, oy[i]:oy[i] + 32]
            images[i] = main * rng.uniform(0.6, 1.2) + 0.45 * other
        images += rng.normal(0, 0.22, size=images.shape).astype(np.float32)
        pixels = np.clip(images * 200 + 20, 0, 255).astype(np.uint8)
        return pixels.reshape(n, 3072), labels.tolist()

    base = Path(root) / CIFAR_DIR
    base.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make(n_train)
    parts = np.array_split(np.arange(n_train), 5)
    for i, part in enumerate(parts, start=1):
        _write_batch(base / f"data_batch_{i}", f"training batch {i} of 5", train_x[part],
                     [train_y[j] for j in part])
    test_x, test_y = make(n_test)
    _write_batch(base / "test_batch", "testing batch 1 of 1", test_x, test_y)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": len(parts[0]),
                     "num_vis": 3072}, f)
    (Path(root) / "SYNTHETIC.json").write_text(json.dumps(
        {"version": SYNTHETIC_VERSION, "seed": seed, "train": n_train, "test": n_test}))
    return Path(root)


def _write_batch(path: Path, label: str, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as f:
        pickle.dump({"batch_label": label, "labels": labels, "data": data,
                     "filenames": [f"synthetic_{i:05d}.png" for i in range(len(labels))]}, f)
