"""CifarBinary on a miniature CIFAR-10 folder written in the real files' format (Python-2 pickles)."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import vislab.data.cifar as cifar_module
from vislab.data.cifar import CIFAR10_CLASSES, CifarBinary, load_cifar10_split


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes, as the official batches were written (numpy's
    array payload included), so loading needs ``encoding="latin1"`` exactly like the real files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump(path: Path, obj) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def make_mini_cifar(root: Path, *, per_batch: int = 10, seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """``ROOT/cifar-10-batches-py`` with 5 train batches and a test batch of ``per_batch`` images each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    _dump(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                    b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(y) for y in rng.permutation(np.arange(per_batch) % 10)]  # every class present
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                              b"filenames": [f"img_{k}.png".encode() for k in range(per_batch)]})
        written[name] = (data, labels)
    return written


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, make_mini_cifar(root)


def test_reader_matches_torchvision_on_the_same_files(mini, monkeypatch):
    root, _ = mini
    # torchvision would refuse the miniature files (md5); bypass only its checksum to use it as reference
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for split in ("train", "test"):
        ref = torchvision.datasets.CIFAR10(str(root), train=split == "train")
        images, labels, names = load_cifar10_split(root, split)
        assert images.dtype == torch.uint8 and images.shape == (len(ref), 3, 32, 32)
        assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))  # ref is HWC
        assert labels.tolist() == ref.targets
        assert list(names) == ref.classes == list(CIFAR10_CLASSES)


def test_binary_filter_relabel_and_pixels(mini):
    root, written = mini
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    ds = CifarBinary(root, "train", classes=("automobile", "Airplane"), image_size=32)
    expected = [i for i, y in enumerate(labels) if y in (0, 1)]
    assert len(ds) == len(expected) == 10  # one of each class per batch of 10
    assert ds.class_names == ("automobile", "airplane") and ds.cifar_ids == (1, 0)
    for j, i in enumerate(expected):
        img, y = ds[j]
        assert y == (1 if labels[i] == 0 else 0)  # automobile -> 0, airplane -> 1
        assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
        # planes R, G, B of 1024 row-major values each
        torch.testing.assert_close(img, torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255)
    assert ds.labels.tolist() == [ds[j][1] for j in range(len(ds))]


def test_test_split_resize_and_transform(mini):
    root, written = mini
    ds = CifarBinary(root, "test", image_size=48, transform=lambda x: x.float() * 2)
    assert len(ds) == 2
    img, _ = ds[0]
    assert img.shape == (3, 48, 48)
    assert ds.raw(0).dtype == torch.uint8  # the transform receives uint8
    torch.testing.assert_close(img, ds.raw(0).float() * 2)
    # a constant image stays constant through the resize
    ds.images[0] = 77
    assert torch.equal(ds.raw(0), torch.full((3, 48, 48), 77, dtype=torch.uint8))


def test_limit_is_balanced_and_seeded(tmp_path):
    make_mini_cifar(tmp_path, per_batch=40)  # 4 airplanes and 4 automobiles per batch -> 20 + 20
    full = CifarBinary(tmp_path, classes=("airplane", "automobile"), image_size=32)
    assert len(full) == 40
    a = CifarBinary(tmp_path, image_size=32, limit=7, seed=1)
    b = CifarBinary(tmp_path, image_size=32, limit=7, seed=1)
    c = CifarBinary(tmp_path, image_size=32, limit=7, seed=2)
    assert len(a) == 7 and sorted(a.labels.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    # every kept image is one of the full set's images with the same label
    rows = {bytes(img.numpy().tobytes()): int(y) for img, y in zip(full.images, full.labels)}
    assert all(rows[bytes(img.numpy().tobytes())] == int(y) for img, y in zip(a.images, a.labels))
    assert len(CifarBinary(tmp_path, image_size=32, limit=1000)) == 40  # a cap, not a requirement


def test_root_may_be_the_batches_folder_itself(mini):
    root, _ = mini
    assert len(CifarBinary(root / "cifar-10-batches-py", "test", image_size=32)) == 2


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"looked in .*cifar-10-batches-py.*Pass --download.*--root"):
        CifarBinary(tmp_path)
    make_mini_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        CifarBinary(tmp_path, "train")
    assert len(CifarBinary(tmp_path, "test", image_size=32)) == 2  # the test split is complete


def test_download_goes_through_torchvision_only_when_files_are_missing(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            make_mini_cifar(Path(root))

    monkeypatch.setattr(cifar_module, "_TV", FakeCIFAR10)
    ds = CifarBinary(tmp_path, "test", image_size=32, download=True)
    assert calls == [(str(tmp_path), False, True)] and len(ds) == 2
    CifarBinary(tmp_path, "test", image_size=32, download=True)  # present now: no second download
    assert len(calls) == 1


def test_bad_arguments(mini):
    root, _ = mini
    with pytest.raises(ValueError, match=r"unknown CIFAR-10 class name.*'plane'.*valid names: airplane"):
        CifarBinary(root, classes=("plane", "automobile"))
    with pytest.raises(TypeError, match="classes must be a sequence of two CIFAR-10 class names.*'airplane'"):
        CifarBinary(root, classes="airplane")
    with pytest.raises(ValueError, match=r"two different CIFAR-10 classes, got \['cat', 'cat'\]"):
        CifarBinary(root, classes=("cat", "cat"))
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        CifarBinary(root, "val")
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        CifarBinary(root, image_size=0)
    with pytest.raises(ValueError, match="limit must be a positive int or None, got -3"):
        CifarBinary(root, limit=-3)


def test_corrupt_batch_is_a_clear_error(tmp_path):
    make_mini_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", bad)
    expected = r"expected 'data' of shape \[N, 3072\] with N = len\(labels\) = 2, got \(2, 100\)"
    with pytest.raises(ValueError, match=expected):
        load_cifar10_split(tmp_path, "test")


def test_scan_before_the_run(tmp_path):
    from vislab.data.cifar import scan_cifar10
    from vislab.errors import UserError

    make_mini_cifar(tmp_path)
    scan_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    good = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UserError, match=r"data_batch_3 is not a CIFAR-10 batch: it does not unpickle") as err:
        scan_cifar10(tmp_path)
    assert "\n" not in str(err.value)
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR-10 batch"):
        scan_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="CIFAR-10 train data not found.*missing data_batch_3"):
        scan_cifar10(tmp_path)
    scan_cifar10(tmp_path, ("test",))
