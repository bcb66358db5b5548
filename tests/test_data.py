"Tests of diffexplore.data beyond the notebook: real data sizes, ranges, splits, file errors."
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffexplore.data import (ArrayDataModule, DigitsDataModule, FashionMNISTDataModule, ImageFolderDataModule, MNISTLoader,
                              CIFAR10Loader, CIFAR10_FILES, datamodule_from_name, read_idx, read_cifar_batch, to_model_range)
from diffexplore.core import instantiate_from_config

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
HAVE_FASHION = all((FASHION_ROOT / f).is_file() for f in
                   ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST idx files not in {FASHION_ROOT} (apt-get install dataset-fashion-mnist)")


def _check_batch(batch, channels, size):
    x, y = batch["jpg"], batch["cls"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (channels, size, size) and y.shape == (x.shape[0],)
    assert x.min() >= -1 and x.max() <= 1


def test_digits_counts_shapes_ranges():
    dm = DigitsDataModule(batch_size=100)
    dm.setup("fit")
    x = torch.cat([dm.train_images(), dm.val_images()])
    y = torch.cat([dm.train_labels(), dm.val_labels()])
    assert x.shape == (1797, 1, 8, 8) and len(y) == 1797
    assert (dm.channels, dm.image_size, dm.num_classes, dm.class_names) == (1, 8, 10, [str(i) for i in range(10)])
    assert x.min().item() == -1.0 and x.max().item() == 1.0          # pixels 0 and 16 exactly
    assert set(torch.unique(x * 8).tolist()) <= set(range(-8, 9))     # the 17 grey levels p/8 - 1
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert len(dm.val_images()) == 359
    batches = list(dm.train_dataloader())
    assert len(batches) == 1438 // 100                               # drop_last
    for b in batches: _check_batch(b, 1, 8)
    assert 0.70 < dm.data_std() < 0.80


def test_digits_split_and_shuffle_deterministic():
    a, b, c = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    assert torch.equal(a.val_labels(), b.val_labels()) and not torch.equal(a.val_labels(), c.val_labels())
    ba, bb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert torch.equal(ba["jpg"], bb["jpg"]) and torch.equal(ba["cls"], bb["cls"])
    # train and val never share an image index: together they are the whole set, once
    assert len(a.train_images()) + len(a.val_images()) == 1797


def test_digits_pad_and_resize():
    pad = DigitsDataModule(image_size=16)
    x = pad.train_images()
    assert x.shape[-2:] == (16, 16)
    assert torch.all(x[..., :4, :] == -1) and torch.all(x[..., -4:, :] == -1)  # background border
    assert torch.equal(x[..., 4:12, 4:12], DigitsDataModule().train_images())
    rs = DigitsDataModule(image_size=32, resize_mode="bilinear").train_images()
    assert rs.shape[-1] == 32 and rs.min() >= -1 and rs.max() <= 1


def test_batch_larger_than_data_is_named():
    dm = ArrayDataModule(np.zeros((10, 4, 4), dtype=np.uint8), batch_size=64)
    with pytest.raises(ValueError, match="batch_size=64"): dm.train_dataloader()


@needs_fashion
def test_fashion_mnist_full():
    dm = FashionMNISTDataModule(batch_size=256)
    dm.setup("fit")
    assert dm.train_images().shape == (60000, 1, 28, 28) and dm.val_images().shape == (10000, 1, 28, 28)
    assert torch.bincount(dm.train_labels()).tolist() == [6000] * 10
    assert torch.bincount(dm.val_labels()).tolist() == [1000] * 10
    assert dm.train_images().min().item() == -1.0 and dm.train_images().max().item() == 1.0
    assert dm.num_classes == 10 and dm.class_names[0] == "T-shirt/top" and dm.class_names[9] == "Ankle boot"
    _check_batch(next(iter(dm.train_dataloader())), 1, 28)
    assert len(dm.train_dataloader()) == 60000 // 256


@needs_fashion
def test_fashion_mnist_pad_and_subset():
    dm = FashionMNISTDataModule(pad_to_32=True, subset=500)
    x = dm.train_images()
    assert x.shape == (500, 1, 32, 32) and dm.val_images().shape == (10000, 1, 32, 32)
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)
    full = read_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz")
    assert torch.equal(x[:, 0, 2:30, 2:30], to_model_range(full[:500]))  # the first 500, unchanged inside the pad


def test_fashion_missing_root_message(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e: FashionMNISTDataModule(root=str(root)).setup()
    msg = str(e.value)
    assert str(root) in msg and "apt-get install dataset-fashion-mnist" in msg and "root=" in msg
    assert "train-images-idx3-ubyte.gz" in msg
    with pytest.raises(FileNotFoundError): FashionMNISTDataModule(root=str(root)).prepare_data()


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # says 5 values, holds 3
    with pytest.raises(ValueError, match="bad-idx1-ubyte"): read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"): read_idx(bad)
    good = tmp_path / "good-idx1-ubyte"
    good.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03")
    assert read_idx(good).tolist() == [1, 2, 3]


def _write_pngs(folder: Path, n: int, value: int, size=(12, 10), mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n): Image.new(mode, size, value if mode == "L" else (value, value, value)).save(folder / f"img{i}.png")


def test_image_folder_labelled(tmp_path):
    _write_pngs(tmp_path / "b_class", 5, 255)
    _write_pngs(tmp_path / "a_class", 3, 0)
    dm = ImageFolderDataModule(tmp_path, image_size=8, channels=1, val_fraction=0.25, batch_size=2)
    dm.setup()
    assert dm.class_names == ["a_class", "b_class"] and dm.num_classes == 2
    x, y = torch.cat([dm.train_images(), dm.val_images()]), torch.cat([dm.train_labels(), dm.val_labels()])
    assert x.shape == (8, 1, 8, 8) and torch.bincount(y).tolist() == [3, 5]
    assert torch.all(x[y == 0] == -1) and torch.all(x[y == 1] == 1)   # black → −1, white → +1, label by sorted name
    _check_batch(next(iter(dm.train_dataloader())), 1, 8)


def test_image_folder_flat_is_unlabelled_rgb(tmp_path):
    _write_pngs(tmp_path, 4, 128, mode="RGB")
    dm = ImageFolderDataModule(tmp_path, image_size=6, channels=3, val_fraction=0)
    assert dm.num_classes is None and dm.class_names is None
    assert dm.train_images().shape == (4, 3, 6, 6) and torch.all(dm.train_labels() == 0)


def test_image_folder_corrupt_file_named_at_setup(tmp_path):
    _write_pngs(tmp_path / "ok", 3, 10)
    (tmp_path / "ok" / "corrupt.png").write_bytes(b"\x89PNG but not really")
    dm = ImageFolderDataModule(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="corrupt.png"): dm.setup("fit")


def test_image_folder_empty_and_missing(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)): ImageFolderDataModule(tmp_path, image_size=8).setup()
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"): ImageFolderDataModule(tmp_path, image_size=8).setup()
    with pytest.raises(FileNotFoundError, match="missing_dir"): ImageFolderDataModule(tmp_path / "missing_dir", image_size=8).setup()
    with pytest.raises(ValueError, match="channels=2"): ImageFolderDataModule(tmp_path, image_size=8, channels=2)


def test_arrays_layouts_and_ranges():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (20, 3, 8, 8)).astype(np.uint8)
    a = ArrayDataModule(nchw, labels=np.arange(20) % 5, val_fraction=0.2, batch_size=4)
    b = ArrayDataModule(nchw.transpose(0, 2, 3, 1), labels=np.arange(20) % 5, channels_last=True, val_fraction=0.2, batch_size=4)
    assert torch.equal(a.train_images(), b.train_images())
    assert (a.channels, a.image_size, a.num_classes) == (3, 8, 5)
    f = ArrayDataModule(torch.rand(6, 8, 8) * 2 - 1, value_range=(-1, 1), val_fraction=0)
    assert f.channels == 1 and f.train_images().min() >= -1 and f.train_images().max() <= 1
    _check_batch(next(iter(a.train_dataloader())), 3, 8)


def test_arrays_errors_name_the_parameter():
    with pytest.raises(ValueError, match="images.shape"): ArrayDataModule(np.zeros((2, 3, 4, 5)))
    with pytest.raises(TypeError, match="images.dtype"): ArrayDataModule(np.zeros((2, 4, 4), dtype=complex))
    with pytest.raises(ValueError, match="value_range"): ArrayDataModule(np.full((2, 4, 4), 300))
    with pytest.raises(ValueError, match="NaN"): ArrayDataModule(np.full((2, 4, 4), np.nan), value_range=(0, 1))
    with pytest.raises(ValueError, match="labels must be >= 0"): ArrayDataModule(np.zeros((2, 4, 4)), labels=np.array([0, -1]))
    with pytest.raises(ValueError, match="class_names"): ArrayDataModule(np.zeros((2, 4, 4)), labels=np.array([0, 2]), class_names=["a", "b"])


def test_registry():
    assert isinstance(datamodule_from_name("digits"), DigitsDataModule)
    assert isinstance(datamodule_from_name("fashion_mnist"), FashionMNISTDataModule)
    assert isinstance(datamodule_from_name("arrays", images=np.zeros((4, 4, 4))), ArrayDataModule)
    with pytest.raises(ValueError, match="digits"): datamodule_from_name("imagenet")
    assert datamodule_from_name("mnist", batch_size=2).name == "mnist" and datamodule_from_name("cifar10", batch_size=2).name == "cifar10"
    assert repr(DigitsDataModule(batch_size=7)).startswith("DigitsDataModule(batch_size=7")



# --- sgm's toy loaders: MNIST-format idx files and CIFAR-10 python batches, written small here ---
import gzip, pickle, struct


def write_idx(path, array, gz=True):
    "An idx file of uint8 `array` (MNIST's format: 0, 0, 0x08, ndim, then each dim as a big-endian uint32)."
    a = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_mnist(root, n_train=10, n_test=4, seed=0, gz=True):
    "A tiny MNIST-format folder: images[i] is filled with the value 20·i (so order and scaling can be read back), labels i % 10."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte{sfx}", np.stack([np.full((28, 28), (20 * i) % 256) for i in range(n)]), gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz)
    return root


def write_cifar(root, per_batch=2, str_keys=False):
    "A tiny CIFAR-10 folder: data_batch_1..5 and test_batch; image i of batch j is flat colour (R, G, B) = (10·j, 20·i, 200)."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    for j, name in enumerate(CIFAR10_FILES):
        data = np.stack([np.repeat(np.array([10 * j, (20 * i) % 256, 200], np.uint8), 1024) for i in range(per_batch)])
        d = {"data": data, "labels": [(j + i) % 10 for i in range(per_batch)]}
        with open(root / name, "wb") as f: pickle.dump(d if str_keys else {k.encode(): v for k, v in d.items()}, f)
    return root


def test_mnist_loader_reads_idx_files_as_sgm_batches(tmp_path):
    root = write_mnist(tmp_path / "m")
    dm = MNISTLoader(batch_size=4, root=str(root), shuffle=False)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b["cls"]) for b in batches] == [4, 4, 2]                 # sgm's DataLoader keeps the last short batch
    x = torch.cat([b["jpg"] for b in batches])
    _check_batch(batches[0], 1, 28)
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([20 * i / 127.5 - 1 for i in range(10)]))   # p/127.5 − 1, file order
    assert torch.equal(torch.cat([b["cls"] for b in batches]), torch.arange(10))
    assert (dm.channels, dm.image_size, dm.num_classes, len(dm.val_images())) == (1, 28, 10, 4)


def test_mnist_loader_shuffles_each_epoch_and_finds_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz=False)                   # torchvision's layout under sgm's root ".data/"
    dm = MNISTLoader(batch_size=10, root=str(tmp_path), seed=1)
    loader = dm.train_dataloader()
    e0 = next(iter(loader))["cls"].tolist(); loader.sampler.set_epoch(1); e1 = next(iter(loader))["cls"].tolist()
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1 and e0 != list(range(10))


def test_mnist_loader_workers_and_prefetch(tmp_path):
    root = write_mnist(tmp_path)
    assert MNISTLoader(batch_size=2, num_workers=1, prefetch_factor=3, root=str(root)).train_dataloader().prefetch_factor == 3
    assert MNISTLoader(batch_size=2, num_workers=0, prefetch_factor=3, root=str(root)).train_dataloader().num_workers == 0   # no workers: unused
    with pytest.raises(ValueError, match="prefetch_factor=0"): MNISTLoader(batch_size=2, prefetch_factor=0)
    with pytest.raises(ValueError, match="shuffle='no'"): MNISTLoader(batch_size=2, shuffle="no")


def test_mnist_loader_missing_files_one_line(tmp_path):
    write_mnist(tmp_path); (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as e: MNISTLoader(batch_size=2, root=str(tmp_path)).setup()
    msg = str(e.value)
    assert "\n" not in msg and f"root={str(tmp_path)!r}" in msg and "data.params.root=" in msg and "MNIST/raw" in msg


def test_sgm_paths_build_our_loaders(tmp_path):
    root = write_mnist(tmp_path / "m")
    dm = instantiate_from_config({"target": "sgm.data.mnist.MNISTLoader", "params": {"batch_size": 3, "num_workers": 0, "root": str(root)}})
    assert type(dm) is MNISTLoader and dm.batch_size == 3
    c = instantiate_from_config({"target": "sgm.data.cifar10.CIFAR10Loader", "params": {"batch_size": 3, "root": str(write_cifar(tmp_path / "c"))}})
    assert type(c) is CIFAR10Loader


@needs_fashion
def test_fashion_mnist_files_stand_in_for_mnist():
    dm = MNISTLoader(batch_size=512, root=str(FASHION_ROOT))
    dm.setup()
    assert len(dm.train_images()) == 60000 and len(dm.val_images()) == 10000
    assert torch.equal(dm.train_labels(), FashionMNISTDataModule().train_labels())
    assert len(dm.train_dataloader()) == 118                                # 60000 / 512, the short last batch kept


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10_loader_reads_python_batches(tmp_path, str_keys):
    write_cifar(tmp_path / "cifar-10-batches-py", str_keys=str_keys)
    dm = CIFAR10Loader(batch_size=4, root=str(tmp_path), shuffle=False)     # torchvision's layout: root/cifar-10-batches-py
    b = next(iter(dm.train_dataloader()))
    _check_batch(b, 3, 32)
    px = ((b["jpg"][:, :, 5, 7] + 1) * 127.5).round().to(torch.int64)
    assert px.tolist() == [[0, 0, 200], [0, 20, 200], [10, 0, 200], [10, 20, 200]]   # R, G, B planes; batches 1 and 2 in order
    assert b["cls"].tolist() == [0, 1, 1, 2]
    assert len(dm.train_images()) == 10 and dm.val_labels().tolist() == [5, 6] and dm.num_classes == 10
    assert [len(x["cls"]) for x in dm.train_dataloader()] == [4, 4, 2]


def test_cifar10_loader_errors(tmp_path):
    root = write_cifar(tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as e: CIFAR10Loader(batch_size=2, root=str(root)).setup()
    assert "\n" not in str(e.value) and f"root={str(root)!r}" in str(e.value) and "data.params.root=" in str(e.value)
    write_cifar(root)
    with open(root / "data_batch_3", "wb") as f: pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 python batch.*data uint8 \\(2, 100\\)"): CIFAR10Loader(batch_size=2, root=str(root)).setup()
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"): read_cifar_batch(tmp_path / "nope.txt") if (tmp_path / "nope.txt").write_text("x") else None
