import gzip

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from normexp import data
from normexp.errors import ConfigError
from tests.conftest import CONF_DIR


def dataset_cfg(dataset: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "dataset" / f"{dataset}.yaml"), overrides)


def write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    """A tiny MNIST-like folder: 60 train + 20 test 28x28 images; the test images gzipped."""
    rng = np.random.default_rng(0)
    for stem, n, gz in (("train", 60, False), ("t10k", 20, True)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images, gz)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return tmp_path


def test_digits_splits_are_disjoint_standardized_and_seeded():
    cfg = dataset_cfg("digits")
    splits = data.load(cfg, seed=0)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == round(0.15 * 1797)
    assert abs(float(splits.train.x.mean())) < 0.1 and abs(float(splits.train.x.std()) - 1) < 0.1
    rows = {tuple(x.flatten().tolist()) for s in (splits.train, splits.val, splits.test) for x in s.x}
    assert len(rows) > 1700  # no image shared between splits (digits has a few exact duplicates)
    again, other = data.load(cfg, seed=0), data.load(cfg, seed=1)
    assert torch.equal(again.val.y, splits.val.y)
    assert not torch.equal(other.val.y, splits.val.y)


def test_subset_by_fraction_and_by_size():
    full = len(data.load(dataset_cfg("digits"), 0).train)
    assert len(data.load(dataset_cfg("digits", fraction=0.1), 0).train) == round(0.1 * full)
    assert len(data.load(dataset_cfg("digits", train_size=100), 0).train) == 100


def test_a_train_size_beyond_the_split_is_refused():
    with pytest.raises(ConfigError, match="dataset.train_size=5000 is out of range"):
        data.load(dataset_cfg("digits", train_size=5000), 0)


def test_local_idx_folder_plain_and_gzipped(idx_folder):
    splits = data.load(dataset_cfg("mnist", root=str(idx_folder), val_fraction=0.25), seed=0)
    assert splits.input_shape == (1, 28, 28)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 15, 20)
    assert splits.test.y.tolist() == [i % 10 for i in range(20)]  # test order kept
    raw = data.read_idx(idx_folder / "train-images-idx3-ubyte")
    expected = (torch.as_tensor(raw[:, None], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert any(torch.allclose(splits.train.x[0], img) for img in expected)


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"is truncated or damaged: its header says shape \(60, 28, 28\) \(47040 bytes of data\) but it holds 47000"),
    ("extra", r"its header says shape \(60, 28, 28\) \(47040 bytes of data\) but it holds 47041"),
    ("gzip", r"t10k-images-idx3-ubyte.gz cannot be read \(EOFError"),
    ("header", r"is not an IDX file of unsigned bytes \(header 0000\)"),
])
def test_a_damaged_idx_file_is_refused_naming_it(idx_folder, damage, message):
    plain, packed = idx_folder / "train-images-idx3-ubyte", idx_folder / "t10k-images-idx3-ubyte.gz"
    raw = plain.read_bytes()
    if damage == "truncate":
        plain.write_bytes(raw[:-40])       # a download cut short
    elif damage == "extra":
        plain.write_bytes(raw + b"\0")
    elif damage == "gzip":
        packed.write_bytes(packed.read_bytes()[:-100])
    else:
        plain.write_bytes(raw[:2])
    with pytest.raises(ConfigError, match=message + ".*download it again"):
        data.load(dataset_cfg("mnist", root=str(idx_folder)), 0)


def test_images_and_labels_of_different_lengths_are_refused(idx_folder):
    write_idx(idx_folder / "train-labels-idx1-ubyte", np.arange(59) % 10, gz=False)
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte holds 60 images but train-labels-idx1-ubyte 59"):
        data.load(dataset_cfg("mnist", root=str(idx_folder)), 0)


@pytest.mark.parametrize("overrides, message", [
    ({"val_fraction": 1e-4}, "the val split of digits is empty"),
])
def test_fractions_out_of_range_or_leaving_a_split_empty_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        data.load(dataset_cfg("digits", **overrides), 0)


def test_missing_files_name_the_dataset_the_folder_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=f"dataset.root={tmp_path} does not hold the mnist IDX files"):
        data.load(dataset_cfg("mnist", root=str(tmp_path)), 0)


def test_a_failed_download_is_one_clear_error(tmp_path):
    # The download fails whether or not the machine is online: its folder is a file.
    (tmp_path / "cifar").write_text("not a folder")
    cfg = dataset_cfg("cifar10", download_dir=str(tmp_path / "cifar"))
    with pytest.raises(ConfigError, match="dataset 'cifar10' is not available offline: looked in"):
        data.load(cfg, 0)


def test_batches_drop_last_and_reshuffle_per_pass_with_a_seed():
    split = data.Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    batches = data.Batches(split, batch_size=4, shuffle=True, drop_last=True, seed=3)
    first, second = [y.tolist() for _, y in batches], [y.tolist() for _, y in batches]
    assert len(batches) == 2 and [len(b) for b in first] == [4, 4]
    assert first != second
    replay = data.Batches(split, batch_size=4, shuffle=True, drop_last=True, seed=3)
    assert [y.tolist() for _, y in replay] == first
    in_order = data.Batches(split, batch_size=4, shuffle=False, drop_last=False)
    assert [y.tolist() for _, y in in_order] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.skipif(not data.KNOWN_LOCAL_ROOTS["fashion_mnist"].exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_is_found_in_debians_folder():
    splits = data.load(dataset_cfg("fashion_mnist", train_size=500), 0)
    assert len(splits.train) == 500 and len(splits.test) == 10000 and splits.num_classes == 10


def test_variable_length_pads_each_image_with_nan_rows_seeded():
    cfg = dataset_cfg("digits", variable_length=True, min_length=3)
    splits = data.load(cfg, seed=0)
    for split in (splits.train, splits.val, splits.test):
        padded_rows = split.x.isnan().all(dim=(1, 3))  # (N, H): a row is padding as a whole
        assert torch.equal(split.x.isnan().any(dim=(1, 3)), padded_rows)
        lengths = (~padded_rows).sum(dim=1)  # (N,)
        # Padding is a suffix: the kept rows come first.
        assert torch.equal(padded_rows, torch.arange(8) >= lengths[:, None])
        assert lengths.min() == 3 and lengths.max() == 8
    again = data.load(cfg, seed=0)
    assert torch.equal(again.train.x.isnan(), splits.train.x.isnan())  # the same lengths every time
    kept = ~splits.train.x.isnan()
    plain = data.load(dataset_cfg("digits"), seed=0)
    assert torch.equal(splits.train.x[kept], plain.train.x[kept]) and not plain.train.x.isnan().any()


def test_min_length_beyond_the_image_is_refused():
    with pytest.raises(ConfigError, match=r"dataset.min_length=9 must be in 1..8 \(the image height\)"):
        data.load(dataset_cfg("digits", variable_length=True, min_length=9), 0)
