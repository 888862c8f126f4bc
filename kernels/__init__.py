"""Triton kernels for the DeiT block, installed as `fastdeit.kernels`."""
