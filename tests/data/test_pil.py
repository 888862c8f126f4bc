"""The PIL decoder: every pixel format to 8-bit RGB as DALI decodes it (16-bit images included)."""

import io

import numpy as np
import pytest
from image_helpers import png16_bytes, to_16_bit
from PIL import Image

from fastdeit.data import dali_available
from fastdeit.data.pil import decode, to_rgb

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def camera_16() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's camera photo (512x512 gray) and a 16-bit version of it with real low bits."""
    camera = skimage_data.camera()
    return camera, to_16_bit(camera, np.random.default_rng(0))


def test_16_bit_gray_is_scaled_not_clipped(camera_16):
    """Pillow's own convert("RGB") clips 16-bit values to 255: the photo came out solid white."""
    camera, pixels = camera_16
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    rgb = np.asarray(decode(buf.getvalue()))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, np.repeat(camera[..., None], 3, axis=-1))  # round(v / 257) of v8 * 257 + noise


def test_to_rgb_every_integer_mode_alike(camera_16):
    camera, pixels = camera_16
    expected = np.repeat(camera[..., None], 3, axis=-1)
    little = Image.fromarray(pixels)
    big = Image.frombytes("I;16B", little.size, pixels.astype(">u2").tobytes())
    wide = little.convert("I")  # how Pillow opens some 16-bit files (PPM, older PNG readers)
    assert (little.mode, big.mode, wide.mode) == ("I;16", "I;16B", "I")
    for img in (little, big, wide):
        assert np.array_equal(np.asarray(to_rgb(img)), expected), img.mode
    with pytest.raises(ValueError, match="beyond 16 bits"):
        to_rgb(Image.fromarray(np.full((4, 4), 70_000, dtype=np.int32)))
    with pytest.raises(ValueError, match="float pixels"):
        to_rgb(Image.fromarray(np.zeros((4, 4), dtype=np.float32)))


@pytest.mark.skipif(not dali_available(), reason="needs DALI")
@pytest.mark.parametrize("kind", ["gray", "rgb48"])
def test_16_bit_png_decodes_like_dali(camera_16, kind):
    """A real 16-bit PNG (gray I;16, or 48-bit RGB, which Pillow reads as its high bytes): PIL and DALI agree."""
    from fastdeit.data.dali import _probe_pipeline, _single

    camera, gray = camera_16
    photo = skimage_data.astronaut()
    pixels = gray if kind == "gray" else to_16_bit(photo, np.random.default_rng(1))
    data = png16_bytes(pixels)
    pipe = _probe_pipeline(
        source=_single(np.frombuffer(data, np.uint8)), on_gpu=False, exif_orientation=False, device_id=None
    )
    pipe.build()
    dali = np.asarray(pipe.run()[0].as_tensor())[0]
    pil = np.asarray(decode(data))
    source = np.repeat(camera[..., None], 3, axis=-1) if kind == "gray" else photo
    assert np.array_equal(dali, source)  # DALI: round(v / 257)
    assert np.abs(pil.astype(int) - dali).max() <= 1  # PIL: the same, or the high byte (v >> 8) for 48-bit RGB
