import math

import numpy as np
import pytest

from fastdeit.data.augment import (
    CROP_ATTEMPTS,
    CROP_RATIO,
    CROP_SCALE,
    RAND_AUGMENT_OPS,
    SKIP_OP,
    RandAugmentConfig,
    check_crop_scale,
    crop_window,
    sample_train_params,
)
from fastdeit.data.common import DataConfigError, check_probability


@pytest.mark.parametrize("scale", [CROP_SCALE, (0.35, 1.0), (0.25, 0.25)])
def test_crop_window_bounds_area_and_ratio(scale):
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(8, 300, 2))
        top, left, ch, cw = crop_window(rng.random((4, CROP_ATTEMPTS)), h, w, scale)
        assert 0 <= top <= h - ch and 0 <= left <= w - cw and 1 <= ch <= h and 1 <= cw <= w


@pytest.mark.parametrize("scale", [(0.08, 0.5), (0.35, 0.5), (0.25, 0.25)])
def test_crop_window_area_and_ratio_follow_scale(scale):
    """On a square image a crop of at most half its area always fits: the first attempt's area is in `scale`."""
    rng = np.random.default_rng(1)
    side, (lo, hi) = 200, scale
    for _ in range(300):
        _, _, ch, cw = crop_window(rng.random((4, CROP_ATTEMPTS)), side, side, scale)
        slack = (ch + cw) / 2 + 1  # each side is rounded to the nearest pixel
        assert lo * side**2 - slack <= ch * cw <= hi * side**2 + slack
        assert CROP_RATIO[0] - 0.02 <= cw / ch <= CROP_RATIO[1] + 0.02


def test_crop_window_first_attempt_by_hand():
    u = np.full((4, CROP_ATTEMPTS), 0.5)
    # area (0.08 + 0.92 * 0.5) * 200 * 300 = 32400, ratio exp(0) = 1 -> 180 x 180; top 0; left at the far right
    u[:, 0] = [0.5, 0.5, 0.0, 1.0 - 1e-9]
    assert crop_window(u, 200, 300, CROP_SCALE) == (0, 120, 180, 180)
    u[:, 0] = [0.0, 0.5, 0.0, 0.0]  # area 0.08 * 60000 = 4800 -> round(69.28) = 69, top-left corner
    assert crop_window(u, 200, 300, CROP_SCALE) == (0, 0, 69, 69)
    assert crop_window(u, 200, 300, (0.35, 1.0)) == (0, 0, 145, 145)  # area 0.35 * 60000 -> round(144.91)
    u[:, 0] = [1.0, 0.5, 0.0, 0.0]  # area 60000 -> 245 x 245 does not fit: the second attempt (all 0.5) is used
    side = math.floor(math.sqrt(0.54 * 60000) + 0.5)
    assert crop_window(u, 200, 300, CROP_SCALE) == ((200 - side + 1) // 2, (300 - side + 1) // 2, side, side)
    assert crop_window(u, 200, 300, (0.5, 0.5))[2:] == (173, 173)  # area 0.5 * 60000 fits: round(173.21)


def test_crop_window_fallback_is_centered_clamped_ratio():
    u = np.zeros((4, CROP_ATTEMPTS))
    u[0] = 1.0  # whole area, but ratio 3/4 on a 1:5 strip never fits
    assert crop_window(u, 20, 100, CROP_SCALE) == (0, (100 - 27) // 2, 20, 27)  # width round(20 * 4/3) = 27
    assert crop_window(u, 100, 20, CROP_SCALE) == ((100 - 27) // 2, 0, 27, 20)  # height round(20 / (3/4)) = 27


def test_sample_train_params_shapes_and_probabilities():
    rng = np.random.default_rng(0)
    p = sample_train_params(rng, 4000, 224, RandAugmentConfig(), 0.5)
    assert p.crop.shape == (4000, 4, CROP_ATTEMPTS) and p.crop.dtype == np.float32
    assert p.flip.shape == (4000,) and abs(p.flip.mean() - 0.5) < 0.03
    assert p.ra_ops.shape == (4000, 2) and p.ra_params.shape == (4000, 2, 2)
    assert abs((p.ra_ops == SKIP_OP).mean() - 0.5) < 0.03
    rotations = p.ra_params[p.ra_ops == RAND_AUGMENT_OPS.index("rotate")][:, 0]
    assert 0.9 * 27 < np.abs(rotations).mean() < 1.1 * 27 and (rotations < 0).any() and (rotations > 0).any()
    posterize = p.ra_params[p.ra_ops == RAND_AUGMENT_OPS.index("posterize")][:, 0]
    assert set(posterize.tolist()) <= {0.0, 1.0, 2.0}  # 4 - int(0.4 * level), level ~ N(9, 0.5)
    none = sample_train_params(rng, 3, 224, None, 0.5)
    assert none.ra_ops.shape == (3, 0)


def test_hflip_probability_changes_only_the_flips():
    draws = {p: sample_train_params(np.random.default_rng(5), 1000, 224, RandAugmentConfig(), p) for p in (0, 0.2, 1)}
    assert not draws[0].flip.any() and draws[1].flip.all() and abs(draws[0.2].flip.mean() - 0.2) < 0.04
    for p in (0.2, 1):  # the same crops and RandAugment choices: a batch depends on hflip only through its flips
        for name in ("crop", "ra_ops", "ra_params"):
            assert np.array_equal(getattr(draws[p], name), getattr(draws[0], name))


def test_crop_scale_and_hflip_are_validated():
    assert check_crop_scale([0.35, 1]) == (0.35, 1.0) and check_probability("hflip", 1) == 1.0
    for bad in [(0.0, 1.0), (0.5, 0.2), (0.1, 1.5), (float("nan"), 1.0), (0.5,), "0.5", 0.5, (True, 1.0)]:
        with pytest.raises(DataConfigError, match="crop_scale: expected two numbers \\(lo, hi\\) with 0 < lo <= hi"):
            check_crop_scale(bad)
    for bad in [-0.1, 1.5, float("nan"), "0.5", None]:
        with pytest.raises(DataConfigError, match="hflip: expected a probability in \\[0, 1\\]"):
            check_probability("hflip", bad)


def test_rand_augment_config_from_timm():
    assert RandAugmentConfig.from_timm("rand-m9-mstd0.5-inc1") == RandAugmentConfig()
    assert RandAugmentConfig.from_timm("rand-m7-n3-inc1") == RandAugmentConfig(num_ops=3, magnitude=7.0)
    with pytest.raises(ValueError, match="increasing op set"):
        RandAugmentConfig.from_timm("rand-m9-mstd0.5")
    with pytest.raises(ValueError, match="unsupported RandAugment option 'w0'"):
        RandAugmentConfig.from_timm("rand-m9-w0-inc1")
    with pytest.raises(DataConfigError, match="RandAugmentConfig.magnitude: expected a number in \\[0, 10\\], got 11"):
        RandAugmentConfig(magnitude=11)


def test_pil_posterize_at_full_magnitude_keeps_zero_bits():
    """rand-m9-mstd0.5 reaches magnitude 10, where posterize keeps 0 bits: black, as in DALI; never a crash."""
    import numpy as np
    from PIL import Image

    from fastdeit.data.pil import _posterize

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.asarray(_posterize(img, 0.0)).max() == 0
    assert (np.asarray(_posterize(img, 4.0)) % 16 == 0).all()
    assert np.array_equal(np.asarray(_posterize(img, 8.0)), np.asarray(img))
