"""Small image folders written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_helpers import NUM_CLASSES, PER_CLASS, write_image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/c0..c2/*: 12 images per class, mostly JPEG, some PNG and upper-case extensions."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(NUM_CLASSES):
        (root / f"c{c}").mkdir()
        for i in range(PER_CLASS):
            if i % 5 == 4:
                write_image(root / f"c{c}" / f"{i:02d}.png", rng, "PNG")
            else:
                write_image(root / f"c{c}" / f"{i:02d}.{'JPG' if i % 5 == 3 else 'jpg'}", rng)
    return root
