"""The HTML page rendered in headless Chromium (Debian's chromium; skipped with the reason
when absent) and its screenshot checked (`slow`; also `make report-check`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segaudit.report.html import find_chromium, screenshot


@pytest.mark.slow  # also `make report-check`
def test_page_renders_in_headless_chromium(reported, tmp_path):
    if find_chromium() is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (Debian) to run this check")
    shot = np.asarray(Image.open(screenshot(reported["page"], tmp_path / "page.png", 1200, 1600)).convert("RGB"))
    assert shot.shape[:2] == (1600, 1200)
    assert shot.std() > 20  # text, the verdict box and the pictures, not a blank page
    greenish_or_red = ((shot[..., 1] > shot[..., 0] + 20) | (shot[..., 0] > shot[..., 1] + 40)).mean()
    assert greenish_or_red > 0.01  # the coloured verdict box is drawn
