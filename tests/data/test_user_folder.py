"""A user's folder of real photos with every awkward kind of file, through both decoders, train and eval loaders.

Every file is either decoded right (its class, RGB, the right size, the pixels it holds) or skipped with a warning
naming it; nothing is silently wrong. An empty class folder is refused in the train split (it would be a dead
class) and kept, with a warning, in an eval split (the numbering of the classes must not shift).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import png16_bytes, to_16_bit
from PIL import Image

from fastdeit.data import (
    PAD_LABEL,
    DataWarning,
    LoaderConfig,
    build_loader,
    build_predict_loader,
    choose_backend,
    dali_available,
    scan_image_folder,
)

skimage_data = pytest.importorskip("skimage.data")

SIZE = 48
BACKENDS = ["pil", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="needs DALI"))]
BAD = {"truncated.jpg": "truncated JPEG", "notes.txt": "not an image type"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """root/<class>/<file> and, for each file that can be decoded, the (H, W, 3) uint8 pixels it holds."""
    root = tmp_path_factory.mktemp("user_folder")
    rng = np.random.default_rng(0)
    astronaut, coffee, rocket = skimage_data.astronaut()[::2, ::2], skimage_data.coffee(), skimage_data.rocket()
    camera, moon = skimage_data.camera()[::2, ::2], skimage_data.moon()
    hubble = skimage_data.hubble_deep_field()[:300, :400]
    expected: dict[str, np.ndarray] = {}

    def save(path: str, pixels: np.ndarray, image: Image.Image | bytes, **kw) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, bytes):
            (root / path).write_bytes(image)
        else:
            image.save(root / path, **kw)
        expected[path] = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)

    save("people/astronaut.jpg", astronaut, Image.fromarray(astronaut), quality=95)
    save("people/camera_gray.jpg", camera, Image.fromarray(camera), quality=95)
    save("people/tiny_10x10.png", astronaut[100:110, 100:110], Image.fromarray(astronaut[100:110, 100:110]))
    alpha = np.linspace(0, 255, coffee.shape[1], dtype=np.uint8)[None].repeat(coffee.shape[0], 0)
    save("objects/coffee_rgba.png", coffee, Image.fromarray(np.dstack([coffee, alpha])))  # alpha is dropped
    save("objects/rocket_cmyk.jpg", rocket, Image.fromarray(rocket).convert("CMYK"), quality=95)
    save("space/moon_16bit.png", moon, Image.fromarray(to_16_bit(moon, rng)))
    save("space/hubble_48bit.png", hubble, png16_bytes(to_16_bit(hubble, rng)))
    jpeg = (root / "people/astronaut.jpg").read_bytes()
    (root / "objects/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "space/notes.txt").write_text("not an image")
    assert Image.open(root / "objects/rocket_cmyk.jpg").mode == "CMYK"
    assert Image.open(root / "space/moon_16bit.png").mode == "I;16"
    return root, expected


def _files(root: Path) -> list[str]:
    """The image files the loaders index, in their order (classes sorted, files sorted)."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix != ".txt")


def _names(record: pytest.WarningsRecorder) -> str:
    return "\n".join(str(r.message) for r in record if issubclass(r.category, DataWarning))


def _twins(root: Path, expected: dict[str, np.ndarray], files: list[str], where: Path) -> list[Path]:
    """For each file, a clean 8-bit RGB PNG of the pixels it must decode to (black for the unreadable ones)."""
    twins = []
    for i, path in enumerate(files):
        rel = str(Path(path).relative_to(root))
        Image.fromarray(expected.get(rel, np.zeros((8, 8, 3), np.uint8))).save(where / f"{i}.png")
        twins.append(where / f"{i}.png")
    return twins


def _check_pixels(images: torch.Tensor, reference: torch.Tensor, names: list[str]) -> None:
    """Each row shows the pixels of its file: the mean error to its clean twin stays within JPEG's loss."""
    for name, row, ref in zip(names, images, reference, strict=True):
        error = (row - ref).abs().mean().item()
        assert error < 0.05, f"{name}: mean error {error:.3f} vs its pixels (JPEG's loss is < 0.02)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_loader_decodes_every_file_right_or_names_it(folder, backend: str, tmp_path: Path):
    root, expected = folder
    config = LoaderConfig(img_size=SIZE, batch_size=4, backend=backend, num_threads=2)
    with pytest.warns(DataWarning) as record:
        loader, info = build_loader(root, split="val", config=config)
        images, labels = (torch.cat(t) for t in zip(*loader, strict=True))
    warned = _names(record)
    assert "notes.txt (extension '.txt' is not an image type)" in warned
    assert f"{root / 'objects/truncated.jpg'} (truncated JPEG" in warned
    assert info.class_names == ("objects", "people", "space") and info.backend == backend
    assert images.shape[1:] == (3, SIZE, SIZE)

    files = _files(root)
    twins = _twins(root, expected, files, tmp_path)
    reference = torch.cat([x for x, _ in build_predict_loader(twins, config.replace(exif_orientation=False))])
    rels = [str(Path(path).relative_to(root)) for path in files]
    good = [i for i, rel in enumerate(rels) if rel in expected]
    assert [rels[i] for i in range(len(rels)) if i not in good] == ["objects/truncated.jpg"]
    assert labels[len(rels) :].eq(PAD_LABEL).all() and labels[rels.index("objects/truncated.jpg")] == PAD_LABEL
    assert [labels[i].item() for i in good] == [info.class_names.index(rels[i].split("/")[0]) for i in good]
    _check_pixels(images[good], reference[good], [rels[i] for i in good])


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_loader_decodes_every_file_or_names_it(folder, backend: str, tmp_path: Path):
    """The train transform on whole images (crop scale 1, no flip, no RandAugment), rows traced to their files."""
    root, expected = folder
    with pytest.warns(DataWarning, match="notes.txt"):
        index = scan_image_folder(root)
    ids = np.arange(len(index.files))  # each row's target names the file it shows
    config = LoaderConfig(
        img_size=SIZE, batch_size=len(ids), rand_augment=None, crop_scale=(1.0, 1.0), hflip=0.0, num_threads=2
    )
    cls = choose_backend(backend, "cpu", "train")
    with pytest.warns(DataWarning, match=f"{root / 'objects/truncated.jpg'} \\(truncated JPEG"):
        ((images, shown),) = list(cls(index.files, ids, config, mode="train"))
    twins = _twins(root, expected, list(index.files), tmp_path)
    ((reference, order),) = list(cls([str(t) for t in twins], ids, config, mode="train"))
    rels = [str(Path(path).relative_to(root)) for path in index.files]
    truncated = rels.index("objects/truncated.jpg")
    assert images.shape == (len(ids), 3, SIZE, SIZE) and sorted(set(shown.tolist())) == sorted(set(ids) - {truncated})
    rows = {f: row for row, f in enumerate(order.tolist())}
    _check_pixels(images, reference[[rows[f] for f in shown.tolist()]], [rels[f] for f in shown.tolist()])


def test_empty_class_folder(folder, tmp_path: Path):
    """Train refuses it, naming it (5 classes with 4 trained, before); val keeps the numbering and warns."""
    root = tmp_path / "with_empty"
    for split in ("train", "val"):
        shutil.copytree(folder[0], root / split)
        (root / split / "nothing_here").mkdir()
    config = LoaderConfig(img_size=SIZE, batch_size=2, backend="pil")
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="hold no image: 'nothing_here'. .*dead class"):
        build_loader(root, split="train", config=config)
    with pytest.warns(DataWarning) as record:
        _, info = build_loader(root, split="val", config=config)
    assert "1 of the 4 classes have no image" in _names(record) and "'nothing_here'" in _names(record)
    assert info.class_names == ("nothing_here", "objects", "people", "space")  # as train's folders number them
    shutil.rmtree(root / "train" / "space")  # a val class the train split lacks: an error, not a shifted label
    with pytest.raises(ValueError, match=r"\['space'\] .* not in the class list it is labelled with"):
        build_loader(root, split="val", config=config)
