"""Host-side sampling of every random choice the train transform makes, shared by the DALI and PIL backends.

Each batch's random numbers come from a generator seeded by (seed, epoch, rank, step), and are fed
to the decoder next to the encoded images: the DALI graph itself draws nothing at random. So a
batch is a pure function of those four numbers and the file contents, which is what makes resuming
mid-epoch exact without replaying, and lets both backends apply the same crops, flips and RandAugment
choices.

The transform follows DeiT's (timm's `create_transform` with `auto_augment="rand-m9-mstd0.5-inc1"`):
random-resized-crop (area scale 0.08-1 by default, ratio 3/4-4/3, timm's 10-attempt sampler and its
center-crop fallback), horizontal flip with p=0.5 by default, then RandAugment: `num_ops` operations
drawn with replacement from the 15 "increasing" ops, each applied with probability `prob` at a
magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10]. The crop scale and the flip
probability are settings of the loaders (timm's `scale` and `hflip`); the uniforms drawn per batch do
not depend on them, so changing them changes how the same draws are used, not the draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastdeit.data.common import DataConfigError, check_non_negative_int, check_probability, is_number

DEIT_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # DeiT's RandAugment policy, in timm's syntax
CROP_SCALE = (0.08, 1.0)  # DeiT's default area range; loaders take others (`crop_scale`)
HFLIP = 0.5  # DeiT's default flip probability; loaders take others (`hflip`)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10

# timm's `_RAND_INCREASING_TRANSFORMS`: the strength of every op grows with the magnitude.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "translate_x",
    "translate_y",
    "shear_x",
    "shear_y",
    "rotate",
    "brightness",
    "contrast",
    "color",
    "sharpness",
    "posterize",
    "solarize",
    "solarize_add",
    "invert",
    "equalize",
    "auto_contrast",
)
# Op index fed for "this op was not applied" (the per-op probability); both backends treat it as identity.
SKIP_OP = len(RAND_AUGMENT_OPS)
_MAX_LEVEL = 10.0
_TRANSLATE_FRACTION = 0.45
_SIGNED_OPS = frozenset({"translate_x", "translate_y", "shear_x", "shear_y", "rotate"})
_ENHANCE_OPS = frozenset({"brightness", "contrast", "color", "sharpness"})


@dataclass(frozen=True)
class RandAugmentConfig:
    """RandAugment settings; the defaults are DeiT's `rand-m9-mstd0.5-inc1`.

    Attributes:
        num_ops: operations applied per image (timm `n`).
        magnitude: mean strength on timm's 0-10 scale (`m`).
        magnitude_std: standard deviation of the per-op strength (`mstd`).
        prob: probability that each drawn op is applied (timm's fixed 0.5).
    """

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    prob: float = 0.5

    def __post_init__(self) -> None:
        check_non_negative_int("RandAugmentConfig.num_ops", self.num_ops)
        if not (is_number(self.magnitude) and 0.0 <= self.magnitude <= _MAX_LEVEL):
            raise DataConfigError("RandAugmentConfig.magnitude", "a number in [0, 10]", self.magnitude)
        if not (is_number(self.magnitude_std) and self.magnitude_std >= 0.0):
            raise DataConfigError("RandAugmentConfig.magnitude_std", "a number >= 0", self.magnitude_std)
        check_probability("RandAugmentConfig.prob", self.prob)

    @classmethod
    def from_timm(cls, spec: str) -> RandAugmentConfig:
        """Parse a timm string such as "rand-m9-mstd0.5-inc1" (only the "increasing" op set exists here)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand-', got {spec!r}")
        fields = {"mstd": "magnitude_std", "inc": "increasing", "m": "magnitude", "n": "num_ops", "p": "prob"}
        values: dict[str, float] = {}
        for part in parts[1:]:
            key = next((k for k in fields if part.startswith(k)), None)  # "mstd" before "m"
            if key is None:
                raise ValueError(f"unsupported RandAugment option {part!r} in {spec!r} (known: m, n, mstd, p, inc)")
            try:
                values[fields[key]] = float(part[len(key) :])
            except ValueError:
                raise ValueError(f"RandAugment option {part!r} in {spec!r} has no number") from None
        if not values.pop("increasing", 0):
            raise ValueError(f"only the increasing op set is implemented: add '-inc1' to {spec!r}")
        if "num_ops" in values:
            if not values["num_ops"].is_integer():
                raise ValueError(f"the op count n in {spec!r} must be a whole number")
            values["num_ops"] = int(values["num_ops"])
        return cls(**values)

    def to_timm(self) -> str:
        """The timm spec string of these settings (from_timm's inverse): "rand-m9-n2-mstd0.5-inc1" for DeiT's."""
        prob = "" if self.prob == 0.5 else f"-p{self.prob:g}"  # 0.5 is timm's default and only choice before 'p'
        return f"rand-m{self.magnitude:g}-n{self.num_ops}-mstd{self.magnitude_std:g}{prob}-inc1"

    @classmethod
    def parse(cls, spec: RandAugmentConfig | str | bool | None) -> RandAugmentConfig | None:
        """The RandAugment settings `spec` names; None for no RandAugment. Every loader setting goes through this.

        `spec`: a RandAugmentConfig; a timm string ("rand-m9-mstd0.5-inc1"); True for DeiT's policy; "none", "",
        False or None for none. Raises DataConfigError (field "rand_augment") naming what is wrong.
        """
        if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
            return None
        if spec is True:
            return cls()
        if isinstance(spec, RandAugmentConfig):
            return spec
        expected = "'none', a timm RandAugment spec such as 'rand-m9-mstd0.5-inc1', a bool or a RandAugmentConfig"
        if not isinstance(spec, str):
            raise DataConfigError("rand_augment", expected, spec)
        try:
            return cls.from_timm(spec)
        except ValueError as err:
            raise DataConfigError("rand_augment", f"{expected} ({err})", spec) from None


@dataclass(frozen=True)
class TrainAugParams:
    """Random choices for a batch of `n` train images.

    Attributes:
        crop: (n, 4, CROP_ATTEMPTS) float32 uniforms in [0, 1): per attempt, the area fraction, the
            log aspect ratio, and the top and left position, mapped by `crop_window`.
        flip: (n,) int32, 1 to mirror horizontally.
        ra_ops: (n, num_ops) int32 indices into RAND_AUGMENT_OPS, or SKIP_OP.
        ra_params: (n, num_ops, 2) float32 op arguments: a (x, y) vector for translations (pixels)
            and shears, else the scalar argument in [..., 0] (see `_op_argument`).
    """

    crop: np.ndarray
    flip: np.ndarray
    ra_ops: np.ndarray
    ra_params: np.ndarray


def check_crop_scale(crop_scale: tuple[float, float]) -> tuple[float, float]:
    """`crop_scale` as a (lo, hi) pair of floats; DataConfigError unless 0 < lo <= hi <= 1."""
    expected = "two numbers (lo, hi) with 0 < lo <= hi <= 1 (fractions of the image area)"
    try:
        lo, hi = crop_scale
    except (TypeError, ValueError):
        raise DataConfigError("crop_scale", expected, crop_scale) from None
    if not (is_number(lo) and is_number(hi) and 0.0 < lo <= hi <= 1.0):  # the comparisons also reject NaN
        raise DataConfigError("crop_scale", expected, crop_scale)
    return float(lo), float(hi)


def _op_argument(name: str, level: float, negate: bool, img_size: int) -> tuple[float, float]:
    """timm's level-to-argument mapping for the increasing ops, as a (x, y) pair."""
    frac = level / _MAX_LEVEL
    sign = -1.0 if negate and name in _SIGNED_OPS | _ENHANCE_OPS else 1.0
    if name == "translate_x":
        return sign * frac * _TRANSLATE_FRACTION * img_size, 0.0
    if name == "translate_y":
        return 0.0, sign * frac * _TRANSLATE_FRACTION * img_size
    if name == "shear_x":
        return sign * frac * 0.3, 0.0
    if name == "shear_y":
        return 0.0, sign * frac * 0.3
    if name == "rotate":
        return sign * frac * 30.0, 0.0
    if name in _ENHANCE_OPS:
        return max(0.1, 1.0 + sign * frac * 0.9), 0.0
    if name == "posterize":
        return float(4 - int(frac * 4)), 0.0  # bits kept
    if name == "solarize":
        return float(256 - int(frac * 256)), 0.0  # pixels >= threshold are inverted
    if name == "solarize_add":
        return float(int(frac * 110)), 0.0  # added to pixels < 128
    return 0.0, 0.0


def sample_train_params(
    rng: np.random.Generator, n: int, img_size: int, rand_augment: RandAugmentConfig | None, hflip: float
) -> TrainAugParams:
    """Draw the random choices for `n` train images (see TrainAugParams); each is mirrored with probability `hflip`.

    `rng` is consumed the same way whatever `hflip` is: the crops and RandAugment choices do not depend on it.
    """
    crop = rng.random((n, 4, CROP_ATTEMPTS), dtype=np.float32)
    flip = (rng.random(n) < hflip).astype(np.int32)  # uniforms in [0, 1): never for 0, always for 1
    num_ops = rand_augment.num_ops if rand_augment else 0
    ra_ops = np.full((n, num_ops), SKIP_OP, dtype=np.int32)
    ra_params = np.zeros((n, num_ops, 2), dtype=np.float32)
    if rand_augment and num_ops:
        chosen = rng.integers(0, len(RAND_AUGMENT_OPS), size=(n, num_ops))
        applied = rng.random((n, num_ops)) < rand_augment.prob
        levels = np.clip(rng.normal(rand_augment.magnitude, rand_augment.magnitude_std, (n, num_ops)), 0, _MAX_LEVEL)
        negate = rng.random((n, num_ops)) < 0.5
        for i in range(n):
            for j in range(num_ops):
                if applied[i, j]:
                    name = RAND_AUGMENT_OPS[chosen[i, j]]
                    ra_ops[i, j] = chosen[i, j]
                    ra_params[i, j] = _op_argument(name, float(levels[i, j]), bool(negate[i, j]), img_size)
    return TrainAugParams(crop, flip, ra_ops, ra_params)


def crop_window(u: np.ndarray, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """timm's RandomResizedCrop window (top, left, crop_height, crop_width) from the uniforms `u` (4, attempts).

    Up to `attempts` tries of a random area fraction in `scale` (lo, hi; see check_crop_scale) and a
    log-uniform aspect ratio in CROP_RATIO; the first that fits is placed at a uniformly random
    position. If none fits, the largest center crop with the aspect ratio clamped to CROP_RATIO. The
    DALI graph computes the same thing with its arithmetic operators, in float32.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for k in range(u.shape[1]):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(u[0, k]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(u[1, k]))
        w = math.floor(math.sqrt(target * aspect) + 0.5)
        h = math.floor(math.sqrt(target / aspect) + 0.5)
        if 1 <= w <= width and 1 <= h <= height:
            top = min(math.floor(float(u[2, k]) * (height - h + 1)), height - h)
            left = min(math.floor(float(u[3, k]) * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, math.floor(width / CROP_RATIO[0] + 0.5)
    elif in_ratio > CROP_RATIO[1]:
        w, h = math.floor(height * CROP_RATIO[1] + 0.5), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
