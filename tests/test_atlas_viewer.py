"""The HTML atlas viewer in headless chromium: hover a cell, read the tooltip, screenshot."""
import re

import numpy as np
import torch
from torch import nn

import atlases

try:
    from browser import chromium, hover, screenshot_array
except ImportError:  # tests/ imported as a package
    from tests.browser import chromium, hover, screenshot_array


def build_page(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 8, 8, generator=g)
    y = torch.arange(60) % 3
    acts = atlases.collect(nn.Sequential(nn.Flatten()), "0", (x, y), out=tmp_path / "a.h5")
    coords = np.random.default_rng(0).random((60, 2))
    coords[:20] = [0.1, 0.1]  # one dense cell at (0, 0) holding inputs 0..19
    lay = atlases.layout(acts, grid=4, min_count=2, coords=coords, top_k=5)
    icons = np.random.default_rng(1).random((lay.n_cells, 24, 24, 3)).astype(np.float32)
    return lay, atlases.write_html(lay, icons, tmp_path / "atlas.html", acts=acts)


def test_viewer_page_is_self_contained(tmp_path):
    lay, page = build_page(tmp_path)
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from the network
    assert text.count("data:image/png;base64,") >= 1 + lay.n_cells  # atlas + thumbnails inlined
    assert 'id="neurons"' not in text
    icons = np.random.default_rng(1).random((lay.n_cells, 24, 24, 3)).astype(np.float32)
    side = atlases.write_html(lay, icons, tmp_path / "side.html", neurons=(icons[:2], ["n4:1", "n0:2"])).read_text()
    panel = side.split('<div id="neurons">')[1].split("</div>")[0]   # a side panel of single neurons, captioned
    assert panel.count("data:image/png;base64,") == 2 and "n4:1" in panel and "n0:2" in panel


def test_viewer_tooltip_and_screenshot_in_chromium(tmp_path):
    lay, page = build_page(tmp_path)
    k = int(np.flatnonzero((lay.cells == [0, 0]).all(1))[0])
    mix = lay.class_mix[k]
    with chromium(900, 700) as driver:
        driver.get(page.as_uri())
        cell = driver.find_element("id", "cell-0-0")
        tip = driver.find_element("id", "tip")
        assert not tip.is_displayed()
        hover(driver, cell)
        assert tip.is_displayed()
        assert f"count: {lay.counts[k]}" in tip.text
        assert len(tip.find_elements("css selector", ".examples img")) == 5  # 5 top examples as thumbnails
        for c in range(3):  # class mix lines, e.g. "0: 35%"
            assert f"{c}: {100 * mix[c] / mix.sum():.0f}%" in tip.text
        shot = screenshot_array(driver)
        assert shot.shape[0] > 100 and shot.reshape(-1, 3).std(0).max() > 10  # not a blank page
        # zoom in with the + button: the atlas image gets larger on screen
        width = "return document.getElementById('atlas').getBoundingClientRect().width"
        before = driver.execute_script(width)
        assert before > 300  # fitted to the window at load
        driver.find_element("id", "zin").click()
        assert driver.execute_script(width) > 1.2 * before
