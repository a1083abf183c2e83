"""What a test checks of a written picture: its kind from the file name, a valid PNG, and
that it is not blank."""

import re
from pathlib import Path

import numpy as np
from PIL import Image


def kind(path) -> str:
    """`samples_261124-...-baseline.png` -> `samples`, `prior_03_sky.png` -> `prior`."""
    return re.sub(r"(_\d.*)?\.png$", "", Path(path).name)


def picture(path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def not_blank(path) -> np.ndarray:
    pixels = picture(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 5, f"{path} is blank"
    return pixels
