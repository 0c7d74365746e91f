"""The explorer pages in real headless Chromium against the live demo service."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
import pytest
import requests

from bench.heldout import write_flux_csv

PAGES = {
    "map": ("/explore", "map"),
    "spectrum": (None, "spectrum"),
    "sliders": ("/explore/sliders", "sliders"),
    "similar": ("/explore/similar", "similar"),
    "correlations": ("/explore/correlations", "correlations"),
}


def tap_rows(live_server, adql: str) -> list[list[str]]:
    """A TAP sync query's rows as CSV text cells (the header dropped)."""
    response = requests.get(
        f"{live_server.url}/tap/sync",
        params={"LANG": "ADQL", "QUERY": adql, "RESPONSEFORMAT": "csv"},
        timeout=30,
    )
    response.raise_for_status()
    return [line.split(",") for line in response.text.strip().splitlines()[1:]]


@pytest.fixture(scope="module")
def first_did(live_server) -> str:
    return tap_rows(live_server, "SELECT TOP 1 obs_publisher_did FROM ml.latent ORDER BY row_index")[0][0]


@pytest.mark.parametrize("name", PAGES)
def test_every_page_loads_without_errors_or_outside_requests(opened, name, first_did):
    path, ready = PAGES[name]
    page = opened(path or f"/explore/spectrum?ID={quote(first_did, safe='')}", wait_for=ready)
    assert page.page.locator(".error").count() == 0
    page.screenshot(name)


def test_landing_page_links_every_explorer_page(opened):
    page = opened("/").page
    for path in ("/explore", "/explore/similar", "/explore/sliders", "/explore/correlations"):
        assert page.locator(f"a[href$='{path}']").count() >= 1, path


def test_map_draws_every_archive_spectrum(opened, live_server):
    page = opened("/explore", wait_for="map").page
    archive_size = int(tap_rows(live_server, "SELECT COUNT(*) FROM ivoa.obscore")[0][0])
    assert page.evaluate("window.latentvoMap.drawn()") == archive_size
    assert page.evaluate("window.latentvoMap.n") == archive_size
    page.select_option("#colour-by", "collection")
    assert "miles" in page.inner_text("#legend")


def screen_positions(page) -> np.ndarray:
    return np.array(
        page.evaluate("Array.from({length: window.latentvoMap.n}, (_, i) => window.latentvoMap.screen(i))")
    )


def canvas_origin(page) -> np.ndarray:
    box = page.locator("#map-canvas").bounding_box()
    return np.array([box["x"], box["y"]])


def test_clicking_a_point_opens_its_detail(opened):
    watched = opened("/explore", wait_for="map")
    page = watched.page
    xy = screen_positions(page)
    ids = page.evaluate("window.latentvoMap.ids")
    gaps = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    box = page.locator("#map-canvas").bounding_box()
    visible = (xy > 10).all(axis=1) & (xy[:, 0] < box["width"] - 10) & (xy[:, 1] < box["height"] - 10)
    isolated = int(np.argmax(np.where(visible, gaps.min(axis=1), -1)))  # nothing else within the click radius
    page.mouse.click(*(canvas_origin(page) + xy[isolated]))
    page.wait_for_function(
        f"document.getElementById('detail').dataset.id === {ids[isolated]!r}", timeout=60_000
    )
    detail = page.locator("#detail")
    assert ids[isolated] in detail.inner_text()
    assert detail.locator("[data-role='spectrum'] canvas").count() == 1
    page.wait_for_function(
        "document.querySelectorAll('#detail .neighbour canvas').length > 0", timeout=60_000
    )
    assert detail.locator(".neighbour").count() >= 1
    assert detail.locator("a[href*='/datalink/links?ID=']").count() >= 1
    watched.screenshot("map-detail")


def test_lasso_selection_lists_the_spectra_inside(opened):
    watched = opened("/explore", wait_for="map")
    page = watched.page
    xy = screen_positions(page)
    ids = page.evaluate("window.latentvoMap.ids")
    centre = np.median(xy, axis=0)
    spread = np.percentile(np.linalg.norm(xy - centre, axis=1), 40)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    polygon = centre + spread * np.column_stack([np.cos(angles), 0.7 * np.sin(angles)])
    page.check("input[name='mode'][value='lasso']")
    origin = canvas_origin(page)
    page.mouse.move(*(origin + polygon[0]))
    page.mouse.down()
    for vertex in polygon[1:]:
        page.mouse.move(*(origin + vertex), steps=2)
    page.mouse.up()
    expected = {ids[i] for i in range(len(ids)) if inside(xy[i], polygon)}
    assert 5 <= len(expected) < len(ids)
    listed = set(page.locator("#selection tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    assert listed == expected
    assert set(page.evaluate("window.latentvoMap.selected()")) == expected
    assert page.inner_text("#selection-count") == f"{len(expected)} selected"
    watched.screenshot("map-lasso")


def inside(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Even-odd rule, as the page's pointInPolygon."""
    x, y = point
    result = False
    for (xi, yi), (xj, yj) in zip(polygon, np.roll(polygon, 1, axis=0), strict=True):
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            result = not result
    return result


def test_moving_a_slider_redraws_the_decoded_flux(opened, live_server, first_did):
    watched = opened(f"/explore/sliders?ID={quote(first_did, safe='')}", wait_for="sliders")
    page = watched.page
    before = page.evaluate("window.latentvoSliders.plotted()")
    slider = page.locator("#sliders input[type=range]").first
    value, top = float(slider.input_value()), float(slider.get_attribute("max"))
    moved = f"{value + 2.5 if value + 2.5 <= top else value - 2.5:.2f}"  # a range input clamps to max
    dim = slider.get_attribute("id")[1:]
    slider.fill(moved)
    page.wait_for_function(
        f"Math.abs(window.latentvoSliders.z()[{dim}] - ({moved})) < 1e-9 "
        "&& document.body.dataset.decoding === 'false'",
        timeout=30_000,
    )
    after = page.evaluate("window.latentvoSliders.plotted()")
    z = page.evaluate("window.latentvoSliders.z()")
    decoded = requests.post(f"{live_server.url}/explore/decode", json={"z": z}, timeout=30).json()["flux"]
    assert after == decoded
    assert np.max(np.abs(np.array(after) - np.array(before))) > 1e-3
    watched.screenshot("sliders-moved")


def test_upload_shows_k_results(opened, upload_file):
    watched = opened("/explore/similar", wait_for="similar")
    page = watched.page
    page.set_input_files("#file", str(upload_file))
    page.fill("#k", "4")
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length > 0", timeout=60_000)
    assert page.locator("#results tr.result").count() == 4
    page.wait_for_function("document.querySelectorAll('#similar-plot canvas').length > 0", timeout=60_000)
    assert page.locator("#download").get_attribute("href").startswith("blob:")
    # Compared by its lines alone, the upload's neighbours are ranked by flux at its resolution.
    status = page.text_content("#similar-status")
    assert "ranked by their flux at the upload's velocity and resolution (R ≈ " in status, status
    watched.screenshot("similar-upload")


def test_similar_by_chosen_dimensions_is_an_exact_search(opened, first_did):
    watched = opened(f"/explore/similar?ID={quote(first_did, safe='')}", wait_for="similar")
    page = watched.page
    page.wait_for_function("document.querySelectorAll('#results tr.result').length > 0", timeout=60_000)
    boxes = page.locator("input[name='dim']")
    boxes.first.set_checked(not boxes.first.is_checked())
    page.click("#search")
    page.wait_for_function(
        "document.getElementById('similar-status').textContent.includes('exact')", timeout=60_000
    )
    assert page.locator("#results tr.result").count() == 10


def test_correlation_heat_map_opens_the_sliders_at_a_dimension(opened, live_server):
    watched = opened("/explore/correlations", wait_for="correlations")
    page = watched.page
    labels = {row[0] for row in tap_rows(live_server, "SELECT DISTINCT label FROM ml.label_correlation")}
    dims = {row[0] for row in tap_rows(live_server, "SELECT DISTINCT dim FROM ml.label_correlation")}
    assert page.locator(".heatmap tbody tr").count() == len(dims)
    assert page.locator(".heatmap td.mi").count() == len(dims) * len(labels)
    link = page.locator(".heatmap a[data-dim]").first
    dim = link.get_attribute("data-dim")
    link.click()
    page.wait_for_selector("body[data-sliders-ready='true']", timeout=60_000)
    assert page.url.endswith(f"DIM={dim}")


def test_an_upload_unlike_the_archive_is_warned_before_its_results(opened, tmp_path):
    """Pure noise is no star: the page shows the service's ood warning above the neighbours."""
    wave = np.linspace(3540.0, 7400.0, 4000)
    noise = write_flux_csv(
        tmp_path / "noise.csv", wave, 1 + np.random.default_rng(3).normal(0, 0.5, wave.size)
    )
    watched = opened("/explore/similar", wait_for="similar")
    page = watched.page
    page.set_input_files("#file", str(noise))
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length > 0", timeout=60_000)
    warning = page.locator("#warning")
    assert warning.is_visible() and "unlike the spectra of this archive" in warning.inner_text()
    assert "ood_score" in warning.inner_text()
    above = page.evaluate(
        "document.getElementById('warning').compareDocumentPosition(document.getElementById('results')) "
        "& Node.DOCUMENT_POSITION_FOLLOWING"
    )
    assert above
    watched.screenshot("similar-warned")


def test_sliders_find_the_archive_spectra_nearest_the_point(opened, first_did):
    watched = opened(f"/explore/sliders?ID={quote(first_did, safe='')}", wait_for="sliders")
    page = watched.page
    page.click("#near")
    page.wait_for_function("document.querySelectorAll('#near-results tr').length > 1", timeout=60_000)
    rows = page.locator("#near-results tr")
    assert rows.count() == 11  # a header and ten spectra
    first = rows.nth(1)
    assert quote(first_did, safe="") in first.locator("a").get_attribute("href")  # unmoved: itself first
    assert float(first.locator("td").nth(1).inner_text()) < 1e-6
    page.click("#reset")


@pytest.mark.parametrize("bad_id", ["ivo://nowhere/none", "x' OR '1'='1"])
def test_an_unknown_spectrum_is_said_plainly(opened, bad_id):
    watched = opened(f"/explore/spectrum?ID={quote(bad_id, safe='')}")
    page = watched.page
    page.wait_for_selector("#detail .error", timeout=60_000)
    assert "no spectrum" in page.inner_text("#detail .error")
