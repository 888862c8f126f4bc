"""Constants shared across fastdeit (ImageNet normalisation as used by DeiT and timm)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # DeiT's eval resize: shorter side to img_size / 0.875, then center crop
