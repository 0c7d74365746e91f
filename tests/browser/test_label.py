"""The active-learning page in Chromium: start from a label table, update, answer the candidates,
label by clicking the map, come back to the same set, and send the candidates over SAMP."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import requests
from astropy.io.votable import parse_single_table

from tests.browser.test_samp import WEB_PROFILE_PORT, hub, receiver  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")


@pytest.fixture(scope="module")
def label_table(live_server, tmp_path_factory):
    """4 spectra of each of the demo's common temperature classes, as a CSV file to upload."""
    answer = requests.get(
        f"{live_server.url}/tap/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT obs_publisher_did, target_class FROM ivoa.obscore "
            "WHERE target_class IS NOT NULL ORDER BY obs_publisher_did",
            "RESPONSEFORMAT": "csv",
        },
        timeout=30,
    )
    rows = [line.split(",") for line in answer.text.splitlines()[1:]]
    common = {c for c, n in Counter(c for _, c in rows).items() if n >= 12}
    chosen, taken = [], Counter()
    for did, cls in rows:
        if cls in common and taken[cls] < 4:
            chosen.append(f"{did},{cls}")
            taken[cls] += 1
    path = tmp_path_factory.mktemp("labels") / "my-classes.csv"
    path.write_text("obs_publisher_did,label\n" + "\n".join(chosen) + "\n")
    return path, sorted(common)


def _set(live_server, set_id: str) -> dict:
    return requests.get(f"{live_server.url}/explore/labelsets/{set_id}", timeout=30).json()


def _idle(page) -> None:
    page.wait_for_function("document.body.dataset.labelBusy === 'false'", timeout=90_000)


def test_a_labelling_round_from_a_table_to_answers(opened, live_server, label_table):
    path, classes = label_table
    watched = opened("/explore/label", wait_for="label")
    page = watched.page
    assert page.is_visible("#start") and not page.is_visible("#work")
    page.set_input_files("#start-table", str(path))
    page.wait_for_selector("#work", state="visible", timeout=30_000)
    set_id = page.evaluate("new URLSearchParams(location.search).get('set')")
    assert sorted(_set(live_server, set_id)["classes"]) == classes  # in the order the table gave them
    page.click("#update")
    _idle(page)
    assert page.text_content("#round") == "round 1", page.text_content("#label-status")
    assert "cross-validated accuracy" in page.text_content("#accuracy")
    assert "%" in page.text_content("#accuracy")
    cards = page.query_selector_all("#candidates article.candidate")
    assert len(cards) == 8
    first = cards[0].get_attribute("data-did")
    assert "rank 1" in cards[0].inner_text()
    page.wait_for_function(
        "[...document.querySelectorAll('#candidates img')].every((i) => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    watched.screenshot("label-round-1")
    cards[0].query_selector(f"button[data-label='{classes[0]}']").click()
    _idle(page)
    answers = {a["obs_publisher_did"]: a["label"] for a in _set(live_server, set_id)["answers"]}
    assert answers[first] == classes[0]  # saved at once
    assert first not in [c.get_attribute("data-did") for c in page.query_selector_all("#candidates article")]
    page.query_selector_all("#candidates article.candidate")[0].query_selector(
        "button[data-label='bad']"
    ).click()
    _idle(page)
    assert _set(live_server, set_id)["counts"]["bad"] == 1
    shown = {c.get_attribute("data-did") for c in page.query_selector_all("#candidates article")}
    ids = page.evaluate("window.latentvoLabel.ids()")
    target = next(i for i, did in enumerate(ids) if did not in shown and did not in answers)
    x, y = page.evaluate(f"window.latentvoLabel.position({target})")
    box = page.query_selector("#label-map").bounding_box()  # label by clicking the map
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function("document.querySelectorAll('#candidates article').length === 9", timeout=10_000)
    clicked = page.query_selector("#candidates article").get_attribute("data-did")
    assert clicked == ids[target] or clicked not in shown  # the clicked spectrum (or one drawn on it)
    page.query_selector("#candidates article").query_selector("button[data-label='not sure']").click()
    _idle(page)
    assert {a["obs_publisher_did"]: a["label"] for a in _set(live_server, set_id)["answers"]}[
        clicked
    ] == "not sure"
    page.click("#update")
    _idle(page)
    assert page.text_content("#round") == "round 2"
    again = opened(f"/explore/label?set={set_id}", wait_for="label")  # coming back later: all still there
    assert again.page.text_content("#round") == "round 2"
    assert "bad: 1" in again.page.text_content("#counts") and "not sure: 1" in again.page.text_content(
        "#counts"
    )
    assert len(again.page.query_selector_all("#candidates article.candidate")) == 8
    again.screenshot("label-come-back")


def test_the_candidates_reach_a_table_client_over_samp(opened, live_server, label_table, receiver):  # noqa: F811
    path, _ = label_table
    watched = opened("/explore/label", wait_for="label", allowed_hosts=(f"localhost:{WEB_PROFILE_PORT}",))
    page = watched.page
    page.set_input_files("#start-table", str(path))
    page.wait_for_selector("#work", state="visible", timeout=30_000)
    page.click("#update")
    _idle(page)
    shown = [c.get_attribute("data-did") for c in page.query_selector_all("#candidates article.candidate")]
    page.click("#send-candidates")
    params = receiver.get(timeout=60)
    assert "spectra to label" in params["name"]
    table = parse_single_table(io.BytesIO(requests.get(params["url"], timeout=30).content))
    assert set(table.to_table(use_names_over_ids=True)["obs_publisher_did"]) == set(shown)
