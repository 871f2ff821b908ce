"""Data sets as in-memory tensors, and a seeded batch iterator that slices them.

Every split is one float tensor of standardized images (N, C, H, W) and one label tensor (N,).
With dataset.variable_length, the rows past each image's length are NaN: model=seq's padding.
Batches are slices of a seeded permutation: no DataLoader, no per-sample Python.
"""

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normexp.errors import ConfigError
from normexp.config.schema import DatasetConfig

# Raw IDX file stems shared by MNIST and Fashion-MNIST (each may also end in .gz).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where Debian's dataset-fashion-mnist package installs the raw files; used when root is null.
KNOWN_LOCAL_ROOTS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, standardized
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str  # where the images came from: a folder of files, a download URL, or a library function

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # (C, H, W)

    def move_to(self, device: torch.device) -> None:
        """Every split onto `device`, in place (Batches over them follow): on a GPU, batches are then
        slices of device memory, with no host-to-device copy per batch."""
        for split in (self.train, self.val, self.test):
            split.x, split.y = split.x.to(device), split.y.to(device)


class Batches:
    """Iterates over (x, y) slices of a split; a new seeded permutation each pass when shuffling.

    Pass k uses the generator seeded with `seed + k`, so two runs with the same seed see the same
    batches in the same order.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0):
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.passes = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.passes)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        order = order.to(self.split.x.device)  # (n,); the permutation itself is drawn on the CPU: seeded alike everywhere
        self.passes += 1
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.split.x[index], self.split.y[index]


def load(cfg: DatasetConfig, seed: int) -> DataSplits:
    """Load `cfg.name` as standardized tensors split into train / val / test (seeded)."""
    if cfg.name == "digits":
        images, labels = _digits()
        pool, test = _split_off(images, labels, cfg.test_fraction, seed)
        source = DIGITS_SOURCE
    elif cfg.name == "cifar10":
        pool, test, source = _torchvision_dataset(cfg)
    else:
        pool, test, source = _idx_dataset(cfg)
    train, val = _split_off(*pool, cfg.val_fraction, seed + 1)
    train = _subset(train, cfg, seed + 2)
    standardize = _standardizer(cfg)
    splits = [Split(standardize(x), torch.from_numpy(y.astype(np.int64))) for x, y in (train, val, test)]
    for name, split in zip(("train", "val", "test"), splits):
        if not len(split):
            raise ConfigError(f"the {name} split of {cfg.name} is empty; raise dataset.val_fraction (or "
                              "test_fraction, fraction, train_size) so that every split keeps some images")
    if cfg.variable_length:
        for index, split in enumerate(splits):
            _pad_rows(split.x, cfg.min_length, seed + 3 + index)
    num_classes = int(max(int(s.y.max()) for s in splits)) + 1
    return DataSplits(*splits, num_classes=num_classes, source=source)


def _standardizer(cfg: DatasetConfig):
    mean = torch.tensor(list(cfg.mean), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.std), dtype=torch.float32).view(1, -1, 1, 1)

    def standardize(images: np.ndarray) -> torch.Tensor:  # (N, C, H, W) raw pixel values
        # astype copies: the raw arrays are shared
        return (torch.from_numpy(images.astype(np.float32)) / cfg.max_value - mean) / std

    return standardize


def _pad_rows(x: torch.Tensor, min_length: int, seed: int) -> None:
    """Cut each image (N, C, H, W) in place to a random number of rows, uniform in min_length..H and
    seeded (an image keeps its length every epoch); the rows after it become NaN, the padding that
    model=seq masks. NaN rather than a separate mask keeps batches plain (x, y)."""
    height = x.shape[2]
    if min_length > height:  # >= 1: its domain (normexp.config.schema)
        raise ConfigError(f"dataset.min_length={min_length} must be in 1..{height} (the image height); "
                          f"e.g. dataset.min_length={height // 2}")
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, height + 1, (len(x),), generator=generator)  # (N,)
    padded = torch.arange(height) >= lengths[:, None]  # (N, H): True past each image's length
    x.masked_fill_(padded[:, None, :, None], float("nan"))


def _split_off(images, labels, fraction: float, seed: int):
    """Split (images, labels) into (kept, held_out) with `fraction` held out, seeded."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_held = int(round(fraction * len(labels)))
    held, kept = order[:n_held], order[n_held:]
    return (images[kept], labels[kept]), (images[held], labels[held])


def _subset(train, cfg: DatasetConfig, seed: int):
    images, labels = train
    n = len(labels)
    if cfg.train_size is not None:
        if not 1 <= cfg.train_size <= n:
            raise ConfigError(
                f"dataset.train_size={cfg.train_size} is out of range; the {cfg.name} training split "
                f"has {n} images: use 1..{n}, or null for all"
            )
        keep = cfg.train_size
    else:
        keep = max(1, int(round(cfg.fraction * n)))
    order = np.random.default_rng(seed).permutation(n)[:keep]
    return images[order], labels[order]


DIGITS_SOURCE = "sklearn.datasets.load_digits"


@functools.lru_cache(maxsize=1)  # the runs of a sweep or a search read it once per process
def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.reshape(-1, 1, 8, 8).astype(np.float32), digits.target
    images.flags.writeable = labels.flags.writeable = False  # shared by the process's runs; splits copy
    return images, labels


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): big-endian header, then uint8 data; a truncated or
    damaged file is refused (a download cut short)."""
    fix = "download it again, or point dataset.root at a folder of intact files"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:  # gzip's refusals of a damaged or truncated archive
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}: {error}); {fix}") from None
    if len(raw) < 4 or raw[0] * 256 + raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()}); {fix}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    header, size = 4 + 4 * ndim, int(np.prod(shape))
    if len(raw) != header + size:
        raise ConfigError(f"{path} is truncated or damaged: its header says shape {shape} ({size} bytes of data) "
                          f"but it holds {len(raw) - header}; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_idx_folder(folder: Path):
    """((train_images, train_labels), (test_images, test_labels)) from a folder of IDX files. Read once
    per process while the files stay the same: a sweep's or a search's runs share the arrays, which are
    read-only (every split is a copy)."""
    files = [_find_idx(folder, stem) for pair in IDX_FILES.values() for stem in pair]
    return _read_idx_files(tuple((path, (stat := path.stat()).st_mtime_ns, stat.st_size) for path in files))


@functools.lru_cache(maxsize=2)
def _read_idx_files(stamped: tuple[tuple[Path, int, int], ...]):
    """`stamped`: (path, mtime, size) of train images, train labels, test images, test labels."""
    splits = []
    for (images_path, *_), (labels_path, *_) in zip(stamped[::2], stamped[1::2]):
        images, labels = read_idx(images_path)[:, None], read_idx(labels_path).astype(np.int64)  # (N, 1, 28, 28), (N,)
        if len(images) != len(labels):
            raise ConfigError(f"{images_path} holds {len(images)} images but {labels_path.name} {len(labels)} "
                              "labels; download them again, or point dataset.root at a folder of intact files")
        images.flags.writeable = labels.flags.writeable = False
        splits.append((images, labels))
    return tuple(splits)


def _has_idx_files(folder: Path) -> bool:
    return all(_find_idx(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def _idx_dataset(cfg: DatasetConfig):
    if cfg.root is not None:
        root = Path(cfg.root)
        if not _has_idx_files(root):
            raise ConfigError(
                f"dataset.root={cfg.root} does not hold the {cfg.name} IDX files "
                f"({', '.join(s for pair in IDX_FILES.values() for s in pair)}, optionally .gz); "
                "point dataset.root at the folder that has them"
            )
        return *_read_idx_folder(root), str(root.resolve())
    known = KNOWN_LOCAL_ROOTS.get(cfg.name)
    if known is not None and _has_idx_files(known):
        return *_read_idx_folder(known), str(known)
    return _torchvision_dataset(cfg)


def _torchvision_dataset(cfg: DatasetConfig):
    import torchvision.datasets as tvd

    dataset_class = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    folder = Path(cfg.download_dir).expanduser()
    try:
        train = dataset_class(str(folder), train=True, download=True)
        test = dataset_class(str(folder), train=False, download=True)
    except (OSError, RuntimeError) as error:  # offline: urllib's URLError is an OSError
        local = KNOWN_LOCAL_ROOTS.get(cfg.name)
        looked = f"{folder}" + (f" and {local}" if local else "")
        other = ("pass dataset.root=<folder with the raw IDX files>" if "root" in cfg else  # cifar10 has no root
                 f"copy torchvision's extracted folder (cifar-10-batches-py) into dataset.download_dir={folder}")
        raise ConfigError(
            f"dataset '{cfg.name}' is not available offline: looked in {looked} and the download failed "
            f"({type(error).__name__}). Download it once while online, or {other}"
        ) from None
    # The URL torchvision downloaded from: CIFAR-10 has one; MNIST-like sets name their mirrors.
    url = getattr(dataset_class, "url", None) or dataset_class.mirrors[0]
    return *((_channels_first(d.data), np.asarray(d.targets, dtype=np.int64)) for d in (train, test)), url


def _channels_first(data) -> np.ndarray:
    data = np.asarray(data)
    # MNIST-like (N, H, W) -> (N, 1, H, W); CIFAR-10 (N, H, W, C) -> (N, C, H, W)
    return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
