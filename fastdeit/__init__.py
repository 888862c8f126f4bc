"""fastdeit: fast DeiT models, fused Triton kernels, DALI data pipelines, distillation training."""

from fastdeit._version import __version__
