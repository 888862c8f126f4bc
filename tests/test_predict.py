"""fastdeit.Predictor (fastdeit.inference): predictions equal the model's own forward, DALI and PIL agree, bad files
are skipped, bad arguments fail before any work, uint8 pixels are normalised with the model's mean/std; the CUDA
paths (graphs, padded last batch, bf16, pinned copies) on a GPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fastdeit
from fastdeit.cuda_graphs import GraphPool
from fastdeit.data import DataWarning, dali_available
from fastdeit.inference import Embeddings, Predictions, collect_images, imagenet_labels, read_labels
from tests.graph_helpers import eager_capture

skimage_data = pytest.importorskip("skimage.data")

needs_dali = pytest.mark.skipif(not dali_available(), reason="DALI is not importable")
DECODERS = [pytest.param("dali", marks=needs_dali), "pil"]
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # camera is grayscale: decoders must make it RGB


def tiny_model(num_classes: int = 10, distilled: bool = False) -> fastdeit.VisionTransformer:
    """A 2-block DeiT on 64x64 images: the real preprocessing at a size the CPU runs in milliseconds."""
    torch.manual_seed(0)
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    arch = dict(img_size=64, patch_size=16, depth=2, embed_dim=64, num_heads=2, backend="torch")
    return fastdeit.create_model(name, num_classes=num_classes, **arch)


def write_photos(folder: Path) -> list[Path]:
    """scikit-image's sample photos as JPEG, plus one PNG; returns the paths in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.jpg", quality=90)
        paths.append(folder / f"{name}.jpg")
    Image.fromarray(skimage_data.colorwheel()).save(folder / "colorwheel.png")
    paths.append(folder / "colorwheel.png")
    return sorted(paths)


def add_bad_files(folder: Path) -> dict[str, str]:
    """A truncated JPEG, a text file named .jpg and a non-image extension; returns path -> expected reason part."""
    jpeg = (folder / "coffee.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n")
    (folder / "readme.txt").write_text("photos\n")
    return {
        str(folder / "truncated.jpg"): "truncated",
        str(folder / "notes.jpg"): "not an image",
        str(folder / "readme.txt"): "not an image type",
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"))


def full_probs(preds: Predictions, num_classes: int) -> torch.Tensor:
    """(N, num_classes) probabilities from top-k predictions with k = num_classes."""
    return torch.zeros(len(preds), num_classes).scatter_(1, preds.indices, preds.probs)


# --- labels ------------------------------------------------------------------------------------------------------


def test_imagenet_labels():
    names = imagenet_labels()
    assert len(names) == 1000
    assert names[:3] == ("tench", "goldfish", "great white shark")
    assert names[207] == "golden retriever" and names[999] == "toilet tissue"
    assert len(set(names)) == 998  # 'crane' (bird, machine) and 'maillot' repeat, as in the source list


def test_read_labels_skips_comments_and_blank_lines(tmp_path):
    (tmp_path / "labels.txt").write_text("# my classes\ncat\n\ndog \n")
    assert read_labels(tmp_path / "labels.txt") == ("cat", "dog")


def test_labels_that_rename_the_model_classes_warn_and_reordered_ones_are_refused():
    """Before, labels given with a model that records other class names replaced them silently."""
    model = tiny_model(num_classes=3)
    model.config = model.config.replace(class_names=("cat", "cup", "person"))
    with pytest.warns(UserWarning, match=r"using \['x', 'y', 'z'\] in place of the model's \['cat', 'cup', 'person'\]"):
        predictor = fastdeit.Predictor(model, device="cpu", labels=["x", "y", "z"])
    assert predictor.label_names == ("x", "y", "z")
    with pytest.raises(ValueError, match="another order: class 0 is 'cat' in the model, 'person' in the labels"):
        fastdeit.Predictor(model, device="cpu", labels=["person", "cat", "cup"])
    many = tiny_model(num_classes=12)
    many.config = many.config.replace(class_names=tuple(f"c{i}" for i in range(12)))
    with pytest.warns(UserWarning, match=r"using \['n0', 'n1', 'n2', 'n3', 'n4', \.\.\. \(12 names\)\] in place"):
        fastdeit.Predictor(many, device="cpu", labels=[f"n{i}" for i in range(12)])


def test_default_topk_is_at_most_the_class_count():
    """predict() with no topk: 5 classes, or all of a model with fewer (before: ValueError, topk=5 out of range)."""
    x = torch.randn(2, 3, 64, 64)
    assert fastdeit.Predictor(tiny_model(num_classes=3), device="cpu").predict(x).indices.shape == (2, 3)
    assert fastdeit.Predictor(tiny_model(num_classes=10), device="cpu").predict(x).indices.shape == (2, 5)


# --- predictions equal the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("distilled", [False, True])
def test_tensor_predictions_equal_model_forward(distilled):
    model = tiny_model(distilled=distilled)
    reference = copy.deepcopy(model).eval()
    x = torch.randn(5, 3, 64, 64)
    predictor = fastdeit.Predictor(model, device="cpu", batch_size=2)  # batches of 2, 2 and 1
    preds = predictor.predict(x, topk=3)
    with torch.no_grad():
        probs, indices = reference(x).softmax(-1).topk(3)
        features = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert torch.equal(preds.indices, indices)
    # Only the channels-last layout of the patch-embedding conv differs: fp32 rounding.
    torch.testing.assert_close(preds.probs, probs, rtol=1e-5, atol=1e-6)
    assert preds.sources == [0, 1, 2, 3, 4]
    embeddings = predictor.embed(x)
    assert isinstance(embeddings, Embeddings) and len(embeddings) == 5
    torch.testing.assert_close(embeddings.features, features, rtol=1e-5, atol=1e-5)
    assert embeddings.sources == [0, 1, 2, 3, 4] and embeddings.report.images == 5


def test_result_type_and_report():
    predictor = fastdeit.Predictor(tiny_model(num_classes=1000), device="cpu")
    preds = predictor.predict(torch.randn(3, 3, 64, 64), topk=2)
    assert len(preds) == 3 and preds.indices.shape == (3, 2) and preds.probs.dtype == torch.float32
    first = preds[0]
    assert first.source == 0 and len(first.indices) == 2 and first.probs[0] >= first.probs[1]
    assert first.labels == tuple(imagenet_labels()[i] for i in first.indices)  # 1000 classes: ImageNet names
    assert [p.source for p in preds] == [0, 1, 2]
    report = preds.report
    assert report.images == 3 and report.skipped == {} and report.dtype == "fp32" and not report.cuda_graphs
    assert report.batch_size == 4  # 3 images: the next power of two, not the CPU default of 32
    assert report.images_per_second > 0 and "images/s" in report.summary()


def test_no_labels_for_other_class_counts_unless_given(tmp_path):
    assert fastdeit.Predictor(tiny_model(), device="cpu").predict(torch.randn(1, 3, 64, 64))[0].labels is None
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(10)))
    predictor = fastdeit.Predictor(tiny_model(), device="cpu", labels=tmp_path / "labels.txt")
    pred = predictor.predict(torch.randn(1, 3, 64, 64), topk=2)[0]
    assert pred.labels == tuple(f"class {i}" for i in pred.indices)


# --- files -------------------------------------------------------------------------------------------------------


def test_files_dali_cpu_and_pil_agree(photos):
    """Both decoders run the same eval transform; only their bicubic resamplers differ (by ~0.006 mean abs in
    normalized pixels here), which moves the probabilities by < 1e-3 and the features' cosine by < 1e-4."""
    if not dali_available():
        pytest.skip("DALI is not importable")
    model = tiny_model()
    dali = fastdeit.Predictor(model, device="cpu", decoder="dali")
    pil = fastdeit.Predictor(model, device="cpu", decoder="pil")
    a, b = dali.predict(photos, topk=10), pil.predict(photos, topk=10)
    assert a.sources == b.sources == [str(p) for p in photos]
    assert torch.equal(a.indices[:, 0], b.indices[:, 0])
    torch.testing.assert_close(full_probs(a, 10), full_probs(b, 10), rtol=0, atol=1e-2)
    assert F.cosine_similarity(dali.embed(photos).features, pil.embed(photos).features).min() > 0.999
    assert a.report.decoder == "DALI on the CPU" and b.report.decoder.startswith("PIL")


@pytest.mark.parametrize("decoder", DECODERS)
def test_file_predictions_equal_tensor_predictions(photos, decoder):
    """A folder gives what the model gives on the loader's own batches."""
    from fastdeit.data import LoaderConfig, build_predict_loader

    model = tiny_model()
    predictor = fastdeit.Predictor(model, device="cpu", decoder=decoder)
    preds = predictor.predict(photos[0].parent, topk=3)
    config = LoaderConfig(img_size=64, batch_size=4, backend=decoder)
    images = torch.cat([x for x, _ in build_predict_loader(photos, config)])
    expected = predictor.predict(images, topk=3)
    assert torch.equal(preds.indices, expected.indices)
    torch.testing.assert_close(preds.probs, expected.probs)


@pytest.mark.parametrize("decoder", DECODERS)
def test_corrupt_files_are_skipped_and_named(tmp_path, decoder):
    good = write_photos(tmp_path / "photos")
    bad = add_bad_files(tmp_path / "photos")
    predictor = fastdeit.Predictor(tiny_model(), device="cpu", decoder=decoder)
    with pytest.warns(DataWarning) as record:
        preds = predictor.predict(tmp_path / "photos", topk=1)
    assert preds.sources == [str(p) for p in good]
    assert sorted(preds.report.skipped) == sorted(bad)
    for path, reason in bad.items():
        assert reason in preds.report.skipped[path]
        assert any(Path(path).name in str(w.message) for w in record)
    assert f"skipped 3 of {len(good) + 3} files" in preds.report.summary()


def test_collect_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/2.jpg", "a/b/1.PNG", "a/0.webp", ".hidden/x.jpg", "a/.DS_Store", "a/data.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "named.dat").write_bytes(b"")
    with pytest.warns(DataWarning, match="data.csv"):
        files = collect_images([tmp_path / "a", tmp_path / "named.dat"])
    # Sorted walk, files before sub-folders' files as os.walk goes; a named file is kept whatever its extension.
    assert files == [str(tmp_path / p) for p in ("a/0.webp", "a/2.jpg", "a/b/1.PNG", "named.dat")]
    assert list(files.skipped) == [str(tmp_path / "a/data.csv")]


def test_collect_images_names_unsupported_image_formats(tmp_path):
    """GIF/HEIC/SVG files, named or in a folder, are left out as images of an unsupported format (before: named
    files went on to be called "not an image"; in folders, "not an image type"); other files keep their reasons."""
    for name in ("dir/a.gif", "dir/b.HEIC", "dir/c.jpg", "dir/d.csv", "e.svg", "f.dat", "g.jfif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.warns(DataWarning, match=r"a\.gif \(\.gif is not a supported image format; supported: \.bmp, \.jpeg"):
        files = collect_images([tmp_path / "dir", tmp_path / "e.svg", tmp_path / "f.dat", tmp_path / "g.jfif"])
    assert files == [str(tmp_path / p) for p in ("dir/c.jpg", "f.dat", "g.jfif")]  # .jfif: a JPEG, decodable
    supported = "is not a supported image format; supported: .bmp, .jpeg, .jpg, .pbm, .pgm, .png, .pnm, .ppm, .tif"
    assert files.skipped == {
        str(tmp_path / "dir/a.gif"): f".gif {supported}, .tiff, .webp",
        str(tmp_path / "dir/b.HEIC"): f".heic {supported}, .tiff, .webp",
        str(tmp_path / "dir/d.csv"): "extension '.csv' is not an image type",
        str(tmp_path / "e.svg"): f".svg {supported}, .tiff, .webp",
    }


def test_every_file_unreadable_gives_empty_results(tmp_path):
    (tmp_path / "x.jpg").write_text("text")
    predictor = fastdeit.Predictor(tiny_model(), device="cpu", decoder="pil")
    with pytest.warns(DataWarning):
        preds = predictor.predict(tmp_path, topk=2)
    assert len(preds) == 0 and preds.indices.shape == (0, 2) and list(preds.report.skipped) == [str(tmp_path / "x.jpg")]
    with pytest.warns(DataWarning):
        embeddings = predictor.embed(tmp_path)
    assert embeddings.features.shape == (0, 64) and embeddings.sources == []


# --- bad input ---------------------------------------------------------------------------------------------------


def test_errors_before_any_work(tmp_path):
    model = tiny_model()
    predictor = fastdeit.Predictor(model, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files in"):
        predictor.predict(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predictor.predict(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"topk must be an integer in \[1, 10\]"):
        predictor.predict(torch.randn(1, 3, 64, 64), topk=11)
    with pytest.raises(ValueError, match=r"shape \(B, 3, 64, 64\)"):
        predictor.predict(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown model"):
        fastdeit.Predictor("deit_huge_patch16_224", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a model name nor a save_pretrained folder"):
        fastdeit.Predictor(str(tmp_path / "no_such_folder"), device="cpu")
    with pytest.raises(ValueError, match="labels has 3 names but the model has 10 classes"):
        fastdeit.Predictor(model, device="cpu", labels=["a", "b", "c"])
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="labels.txt' has 2 names but the model has 10 classes"):
        fastdeit.Predictor(model, device="cpu", labels=tmp_path / "labels.txt")
    with pytest.raises(ValueError, match="batch_size"):
        fastdeit.Predictor(model, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        fastdeit.Predictor(model, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="decoder"):
        fastdeit.Predictor(model, device="cpu", decoder="opencv")
    with pytest.raises(ValueError, match="no classifier head"):
        fastdeit.Predictor(tiny_model(num_classes=0), device="cpu").predict(torch.randn(1, 3, 64, 64))


def test_checkpoint_of_another_class_count(tmp_path):
    fastdeit.save_pretrained(tiny_model(num_classes=10), tmp_path / "ten")
    fastdeit.save_pretrained(tiny_model(num_classes=1000), tmp_path / "thousand")
    with pytest.raises(ValueError, match="head for 10 classes but the model has 1000"):
        fastdeit.Predictor(tmp_path / "thousand", checkpoint=tmp_path / "ten", device="cpu")
    with pytest.raises(ValueError, match="num_classes=5 but the model has 10 classes"):
        fastdeit.Predictor(tmp_path / "ten", num_classes=5, device="cpu")
    assert fastdeit.Predictor(tmp_path / "ten", device="cpu").num_classes == 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error on a machine without CUDA")
def test_cuda_asked_for_without_a_gpu():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        fastdeit.Predictor(tiny_model(), device="cuda")


def test_graph_path_pads_the_last_batch():
    """The CUDA-graph path of the Predictor on the CPU, with graphs replayed eagerly: every replay runs the full
    captured batch, the short last batch is padded with the previous batch's rows, and those are dropped."""
    model = tiny_model()
    reference = fastdeit.Predictor(copy.deepcopy(model), device="cpu")
    predictor = fastdeit.Predictor(copy.deepcopy(model), device="cpu", batch_size=4)
    replays: list[int] = []
    predictor.cuda_graphs = True
    predictor._graphs = GraphPool(predictor._step, (3, 64, 64), "cpu", capture_fn=eager_capture(replays))
    x = torch.randn(7, 3, 64, 64)
    preds, expected = predictor.predict(x, topk=10), reference.predict(x, topk=10)
    assert replays == [4, 4] and len(preds) == 7 and preds.sources == list(range(7))
    torch.testing.assert_close(full_probs(preds, 10), full_probs(expected, 10))
    torch.testing.assert_close(predictor.embed(x).features, reference.embed(x).features)
    assert sorted(predictor._graphs.graphs) == [(4, False), (4, True)]  # one graph per batch and output kind


# --- tensor input ------------------------------------------------------------------------------------------------


def test_uint8_pixels_are_normalised_with_the_model_mean_and_std():
    """uint8 (B, 3, S, S) pixels give what the same images preprocessed by hand give (before: a ValueError)."""
    model = tiny_model()
    predictor = fastdeit.Predictor(model, device="cpu", batch_size=2)
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    by_hand = (pixels.float() / 255 - mean) / std
    got, expected = predictor.predict(pixels, topk=10), predictor.predict(by_hand, topk=10)
    torch.testing.assert_close(full_probs(got, 10), full_probs(expected, 10))
    torch.testing.assert_close(predictor.embed(pixels).features, predictor.embed(by_hand).features)


def test_float_tensors_of_other_dtypes_are_cast():
    """Preprocessed images in bf16 or fp64 run on an fp32 Predictor as the same values in fp32."""
    predictor = fastdeit.Predictor(tiny_model(), device="cpu")
    x = torch.randn(2, 3, 64, 64).to(torch.bfloat16)
    expected = predictor.embed(x.float()).features
    torch.testing.assert_close(predictor.embed(x).features, expected)
    torch.testing.assert_close(predictor.embed(x.double()).features, expected)


def test_tensor_input_errors_name_expected_and_given():
    predictor = fastdeit.Predictor(tiny_model(), device="cpu")
    with pytest.raises(TypeError, match=r"float \(preprocessed.*or uint8 \(RGB pixels 0..255\), got torch.int64"):
        predictor.predict(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got \(2, 64, 64, 3\): this looks channels-last.*permute\(0, 3, 1, 2\)"):
        predictor.predict(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        predictor.embed(torch.zeros(0, 3, 64, 64))


# --- GPU paths ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["tensor", *DECODERS])
def test_cuda_graphs_equal_eager_with_padded_last_batch(photos, decoder):
    """7 inputs in batches of 4: the graph replays the 3-image last batch padded to 4; results equal eager."""
    model = tiny_model()
    inputs = torch.randn(7, 3, 64, 64) if decoder == "tensor" else [*photos, photos[0]]
    kwargs = dict(device="cuda", dtype="fp32", batch_size=4) | ({} if decoder == "tensor" else {"decoder": decoder})
    graphed = fastdeit.Predictor(copy.deepcopy(model), cuda_graphs=True, **kwargs)
    eager = fastdeit.Predictor(copy.deepcopy(model), cuda_graphs=False, **kwargs)
    a, b = graphed.predict(inputs, topk=10), eager.predict(inputs, topk=10)
    assert a.report.cuda_graphs and not b.report.cuda_graphs and a.report.batch_size == 4 and len(a) == 7
    assert a.sources == b.sources
    # The same kernels on the same inputs: equal up to the order of floating-point reductions.
    torch.testing.assert_close(full_probs(a, 10), full_probs(b, 10))
    torch.testing.assert_close(graphed.embed(inputs).features, eager.embed(inputs).features)
    # The graphs are reused: another call captures nothing new.
    graphs = dict(graphed._graphs.graphs)
    graphed.predict(inputs, topk=3)
    assert graphed._graphs.graphs.keys() == graphs.keys()
    assert all(graphed._graphs.graphs[k] is g for k, g in graphs.items())


@pytest.mark.gpu
def test_bf16_close_to_fp32_and_on_the_right_device():
    model = tiny_model()
    x = torch.randn(16, 3, 64, 64)
    bf16 = fastdeit.Predictor(copy.deepcopy(model), device="cuda")  # dtype auto: bf16 on CUDA
    fp32 = fastdeit.Predictor(copy.deepcopy(model), device="cuda", dtype="fp32")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = bf16.embed(x).features, fp32.embed(x).features
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    # bf16 keeps 8 bits of mantissa: a 2-block model stays within a few percent of fp32.
    assert F.cosine_similarity(a, b).min() > 0.99


@pytest.mark.gpu
def test_batch_probe_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDEIT_CACHE_DIR", str(tmp_path))
    predictor = fastdeit.Predictor(tiny_model(), device="cuda")
    preds = predictor.predict(torch.randn(100, 3, 64, 64), topk=1)
    assert preds.report.batch_size == 128  # 100 images: the next power of two, below the probed maximum
    cache = json.loads((tmp_path / "predict_batch_sizes.json").read_text())
    (entry,) = cache.values()
    assert entry["batch"] == fastdeit.inference.predictor.MAX_BATCH  # a 2-block model at 64x64 fits at the cap
    again = fastdeit.Predictor(tiny_model(), device="cuda")
    assert again._probe_batch_size() == entry["batch"]


@pytest.mark.gpu
def test_images_per_second_and_timings_on_gpu(photos):
    predictor = fastdeit.Predictor(tiny_model(), device="cuda", batch_size=4)
    preds = predictor.predict(photos * 4, topk=1)
    report = preds.report
    assert report.images == len(photos) * 4 and report.wait_seconds >= 0 and report.model_seconds > 0
    expected = "DALI on the GPU (nvJPEG)" if dali_available() else "PIL on the CPU (DALI is not importable)"
    assert report.decoder == expected
    assert np.isfinite(report.images_per_second)
