"""The DALI loader on CPU pipelines (device_id=None); the GPU test runs only where CUDA is present."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from fastdeit.data import PAD_LABEL, DataWarning, LoaderConfig, RandAugmentConfig, scan_image_folder  # noqa: E402
from fastdeit.data.dali import DaliLoader  # noqa: E402
from fastdeit.data.pil import PilLoader  # noqa: E402

IMG = 32
BATCH = 8
PLACE = ("mode", "device", "rank", "world_size")  # the loader's arguments next to its LoaderConfig


def loader(files, labels, cls=DaliLoader, **kw):
    place = {k: kw.pop(k) for k in PLACE if k in kw}
    settings = {"img_size": IMG, "batch_size": BATCH, "num_threads": 2, "read_threads": 2, "rand_augment": None, **kw}
    return cls(files, labels, LoaderConfig(**settings), **place)


@pytest.fixture(scope="module")
def index(image_folder: Path):
    return scan_image_folder(image_folder)


@pytest.fixture(scope="module")
def ids(index):
    """Each sample's label is its own index, so the labels a loader yields name the samples it read."""
    return np.arange(len(index.files))


@pytest.fixture(scope="module")
def train_pair(index, ids):
    """Two independent train loaders with RandAugment and the same settings (one pipeline build each)."""
    kw = {"mode": "train", "seed": 11, "rand_augment": RandAugmentConfig()}
    return loader(index.files, ids, **kw), loader(index.files, ids, **kw)


def collect(it):
    return [(x.clone(), y.clone()) for x, y in it]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_train_batches_shape_dtype_and_range(train_pair, index):
    ld, _ = train_pair
    assert len(ld) == len(index.files) // BATCH
    batches = collect(ld)
    assert len(batches) == len(ld)
    images, labels = batches[0]
    assert images.shape == (BATCH, 3, IMG, IMG) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert labels.shape == (BATCH,) and labels.dtype == torch.int64
    allimg = torch.cat([b[0] for b in batches])
    # (0 - 0.485) / 0.229 = -2.118 ... (1 - 0.406) / 0.225 = 2.64: the normalized range
    assert allimg.min() >= -2.12 and allimg.max() <= 2.65
    assert -1.0 < allimg.mean() < 1.0 and allimg.std() > 0.3
    seen = torch.cat([b[1] for b in batches]).tolist()
    assert len(set(seen)) == len(seen)  # drop_last epoch without repeats: each sample at most once


def test_train_deterministic_across_instances_and_epochs(train_pair):
    a, b = train_pair
    a.set_epoch(0)
    b.set_epoch(0)
    first = collect(a)
    assert same(first, collect(b))  # a fresh loader with the same seed
    assert same(first, collect(a))  # the same loader, same epoch again
    a.set_epoch(1)
    other = collect(a)
    assert [y.tolist() for _, y in other] != [y.tolist() for _, y in first]  # another order
    assert not torch.equal(other[0][0], first[0][0])


def test_resume_mid_epoch_is_exact(train_pair):
    a, b = train_pair
    a.set_epoch(3)
    full = collect(a)
    b.set_epoch(3, start_step=2)
    assert same(collect(b), full[2:])


def test_abandoned_epoch_does_not_leak_into_the_next(train_pair):
    a, _ = train_pair
    a.set_epoch(5)
    full = collect(a)
    it = iter(a)
    next(it)
    it.close()
    assert same(collect(a), full)


@pytest.mark.parametrize("aug", [{}, {"crop_scale": (0.3, 0.6), "hflip": 0.8}], ids=["deit", "scale0.3-0.6_hflip0.8"])
def test_train_without_rand_augment_matches_pil(index, ids, aug):
    """Same plan and crop/flip choices: the backends differ only by their bicubic resampling.

    The DALI graph recomputes the crop window from the crop scale: another scale must reach it too.
    """
    kw = {"mode": "train", "seed": 3, "rand_augment": None, **aug}
    dali, pil = collect(loader(index.files, ids, **kw)), collect(loader(index.files, ids, cls=PilLoader, **kw))
    assert [y.tolist() for _, y in dali] == [y.tolist() for _, y in pil]
    diff = torch.cat([(x[0] - y[0]).abs().flatten() for x, y in zip(dali, pil, strict=True)])
    assert diff.max() < 0.1 and diff.mean() < 0.01


def test_eval_transform_matches_pil(index, ids):
    kw = {"mode": "eval", "crop_pct": 0.875}
    dali, pil = collect(loader(index.files, ids, **kw)), collect(loader(index.files, ids, cls=PilLoader, **kw))
    assert [y.tolist() for _, y in dali] == [y.tolist() for _, y in pil]
    diff = torch.cat([(x[0] - y[0]).abs().flatten() for x, y in zip(dali, pil, strict=True)])
    # one gray level is 1 / (255 * 0.229) = 0.017 in normalized units
    print(f"DALI vs PIL eval transform: max abs diff {diff.max():.4f}, mean {diff.mean():.5f} (normalized units)")
    assert diff.max() < 0.2 and diff.mean() < 0.01


@pytest.mark.parametrize("world", [1, 2, 5])
def test_eval_every_sample_once_across_ranks(index, ids, world):
    n = len(index.files)
    seen, lengths = [], set()
    for rank in range(world):
        ld = loader(index.files, ids, mode="eval", rank=rank, world_size=world)
        batches = collect(ld)
        lengths.add(len(batches))
        assert all(x.shape == (BATCH, 3, IMG, IMG) for x, _ in batches)  # padded to full batches
        labels = torch.cat([y for _, y in batches])
        seen += labels[labels != PAD_LABEL].tolist()
    assert len(lengths) == 1  # same number of batches on every rank
    assert sorted(seen) == list(range(n))


def test_train_ddp_ranks_disjoint_and_repeated_aug_spread(index, ids):
    world = 3

    def read(rank, **kw):
        return torch.cat(
            [y for _, y in collect(loader(index.files, ids, mode="train", rank=rank, world_size=world, **kw))]
        )

    plain = [set(read(r).tolist()) for r in range(world)]
    assert all(not (plain[i] & plain[j]) for i in range(world) for j in range(i + 1, world))
    repeated = [read(r, repeated_aug=3) for r in range(world)]
    for labels in repeated:
        assert len(set(labels.tolist())) == len(labels)  # a rank never gets two copies of a sample
    counts = np.bincount(torch.cat(repeated).numpy(), minlength=len(ids))
    assert set(counts.tolist()) <= {0, 3}  # every sample read is read on all three ranks


def test_predict_order_and_short_last_batch(index):
    files = list(index.files[:11])
    batches = collect(loader(files, None, mode="predict"))
    assert [y.tolist() for _, y in batches] == [list(range(8)), [8, 9, 10]]
    assert batches[1][0].shape == (3, 3, IMG, IMG)


@pytest.fixture(scope="module")
def damaged(index, tmp_path_factory):
    """Copies of the folder's files with one truncated JPEG and one the decoder rejects (header and end intact)."""
    root = tmp_path_factory.mktemp("damaged")
    files = []
    for i, src in enumerate(index.files):
        dst = root / f"{i:03d}{Path(src).suffix}"
        shutil.copy(src, dst)
        files.append(str(dst))
    jpegs = [f for f in files if f.lower().endswith(".jpg")]
    truncated, rejected = jpegs[1], jpegs[6]
    data = Path(truncated).read_bytes()
    Path(truncated).write_bytes(data[: len(data) // 2])
    data = Path(rejected).read_bytes()
    Path(rejected).write_bytes(data[:400] + bytes(len(data) - 402) + b"\xff\xd9")
    return files, files.index(truncated), files.index(rejected)


@pytest.mark.parametrize("cls", [DaliLoader, PilLoader])
def test_damaged_files_do_not_stop_an_epoch(damaged, cls):
    files, truncated, rejected = damaged
    ids = np.arange(len(files))
    for mode in ("train", "eval", "predict"):
        ld = loader(files, ids, cls=cls, mode=mode, seed=1)
        with pytest.warns(DataWarning) as record:
            batches = collect(ld)
        messages = [str(r.message) for r in record if issubclass(r.category, DataWarning)]
        assert all(" unreadable image file(s) " in m for m in messages)
        named = "\n".join(messages)  # each file once; DALI's rejections at once, the others at the epoch's end
        assert named.count(files[truncated]) == 1 and named.count(files[rejected]) == 1
        assert f"{files[truncated]} (truncated JPEG" in named
        decoder = "DALI could not decode it: " if cls is DaliLoader else "PIL could not decode it: "
        assert f"{files[rejected]} ({decoder}" in named  # DALI's own error lines name no file: this one does
        assert set(ld.skipped_files) == {files[truncated], files[rejected]}
        labels = torch.cat([y for _, y in batches]).tolist()
        assert truncated not in labels and rejected not in labels
        if mode == "train":
            assert len(batches) == len(ld) and all(len(y) == BATCH for _, y in batches)
        elif mode == "eval":
            assert sorted(v for v in labels if v != PAD_LABEL) == sorted(set(range(len(files))) - {truncated, rejected})
        else:
            assert labels == [i for i in range(len(files)) if i not in (truncated, rejected)]
        # A resumed loader that has not met the bad files yet yields what the first one did.
        fresh = loader(files, ids, cls=cls, mode=mode, seed=1)
        fresh.set_epoch(0, start_step=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            assert same(collect(fresh), batches[1:])


@pytest.mark.gpu
def test_gpu_pipelines_match_cpu(index, ids):
    for kw in ({"mode": "eval"}, {"mode": "train", "seed": 2, "rand_augment": None}):
        cpu = collect(loader(index.files, ids, **kw))
        gpu = collect(loader(index.files, ids, device="cuda", **kw))
        assert gpu[0][0].device.type == "cuda" and gpu[0][1].device.type == "cuda"
        assert [y.tolist() for _, y in cpu] == [y.cpu().tolist() for _, y in gpu]
        diff = torch.cat([(x[0] - y[0].cpu()).abs().flatten() for x, y in zip(cpu, gpu, strict=True)])
        assert diff.mean() < 0.02  # nvJPEG and libjpeg-turbo differ by an IDCT rounding
    ra = collect(loader(index.files, ids, device="cuda", mode="train", rand_augment=RandAugmentConfig()))
    assert len(ra) == len(ids) // BATCH and torch.isfinite(torch.cat([x for x, _ in ra])).all()
