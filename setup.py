"""fastdeit: fast DeiT (Data-efficient Image Transformers) with Triton kernels and DALI data loading.

`kernels/` is installed as `fastdeit.kernels` (PyPI already has an unrelated package named `kernels`,
so no top-level module of that name is ever installed), and `benchmarks/` as `fastdeit.benchmarks`
so that `fastdeit bench` can run the suites from an installed package.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "fastdeit" / "_version.py").read_text(), version)

packages = find_packages(include=["fastdeit", "fastdeit.*"])

setup(
    name="fastdeit",
    version=version["__version__"],
    description="Fast DeiT: Triton fused kernels, DALI data pipelines, distillation training and inference.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages + ["fastdeit.kernels", "fastdeit.benchmarks"],
    package_dir={"fastdeit.kernels": "kernels", "fastdeit.benchmarks": "benchmarks"},
    package_data={"fastdeit": ["data/imagenet_classes.txt"], "fastdeit.benchmarks": ["*.md"]},
    install_requires=[
        "torch>=2.4",
        "triton; platform_system == 'Linux'",
        "numpy",
        "safetensors",
        "tqdm",
        "pyyaml",
        "pillow",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "demo": ["scikit-learn", "nvidia-dali-cuda130"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
        "bench": ["pytest-benchmark", "matplotlib", "xformers"],
        "test": [
            "pytest",
            "hypothesis",
            "transformers",
            "scikit-learn",
            "scikit-image",
            "nvidia-dali-cuda130",
            "pytest-benchmark",
            "matplotlib",
            "onnx",
            "onnxruntime",
            "onnxscript",
        ],
        "timm": ["timm"],
    },
    entry_points={"console_scripts": ["fastdeit=fastdeit.cli:main"]},
)
