"""SAMP from the explorer: a real astropy hub with the Web Profile on, a real receiving client, and
the map page in Chromium sending a lasso selection as ``table.load.votable``."""

from __future__ import annotations

import io
import queue
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest
import requests
from astropy.io.votable import parse_single_table
from astropy.samp import SAMPHubServer, SAMPIntegratedClient
from astropy.samp.hub import WebProfileDialog

from tests.browser.test_explorer import canvas_origin, inside, screen_positions

#: The port every SAMP Web Profile hub listens on (SAMP 1.3 §5.2): the page calls it by this number.
WEB_PROFILE_PORT = 21012


class ApproveEveryPage(WebProfileDialog):
    """Stands in for the hub's question "may this web page register?", answering yes."""

    def __init__(self) -> None:
        self.polling = True
        WebProfileDialog.__init__(self)

    def show_dialog(self, *args) -> None:
        self.consent()

    def poll(self) -> None:
        while self.polling:
            self.handle_queue()
            time.sleep(0.05)


@pytest.fixture()
def hub(tmp_path):
    dialog = ApproveEveryPage()
    poller = threading.Thread(target=dialog.poll, daemon=True)
    poller.start()
    server = SAMPHubServer(
        web_profile=True,
        web_profile_dialog=dialog,
        web_port=WEB_PROFILE_PORT,
        lockfile=str(tmp_path / "samp.lock"),
    )
    server.start()
    yield server
    server.stop()
    dialog.polling = False


@pytest.fixture()
def receiver(hub):
    """A desktop client (as TOPCAT would be) that records the tables it is told to load."""
    received: queue.Queue = queue.Queue()
    client = SAMPIntegratedClient(name="receiver")
    client.connect(hub=hub)

    def on_table(private_key, sender_id, mtype, params, extra) -> None:
        received.put(params)

    client.bind_receive_notification("table.load.votable", on_table)
    client.bind_receive_notification("spectrum.load.ssa-generic", lambda *args: spectra.put(args[-2]))
    received.spectra = spectra = queue.Queue()
    yield received
    client.disconnect()


def test_map_selection_reaches_a_table_client_as_a_votable_url(opened, receiver):
    watched = opened("/explore", wait_for="map", allowed_hosts=(f"localhost:{WEB_PROFILE_PORT}",))
    page = watched.page
    xy = screen_positions(page)
    ids = page.evaluate("window.latentvoMap.ids")
    centre = np.median(xy, axis=0)
    half = np.percentile(np.abs(xy - centre), 30, axis=0)
    corners = np.array([centre - half, centre + half])
    origin = canvas_origin(page)
    page.check("input[name='mode'][value='box']")
    page.mouse.move(*(origin + corners[0]))
    page.mouse.down()
    page.mouse.move(*(origin + corners[1]), steps=5)
    page.mouse.up()
    box = np.array([corners[0], [corners[1][0], corners[0][1]], corners[1], [corners[0][0], corners[1][1]]])
    expected = {ids[i] for i in range(len(ids)) if inside(xy[i], box)}
    assert expected
    page.click("#send-selection")
    params = receiver.get(timeout=60)
    assert "latentvo map selection" in params["name"]
    response = requests.get(params["url"], timeout=30)
    assert response.status_code == 200
    table = parse_single_table(io.BytesIO(response.content)).to_table(use_names_over_ids=True)
    assert set(table["obs_publisher_did"]) == expected
    assert {"teff", "map_x", "map_y", "access_url"} <= set(table.colnames)
    page.wait_for_function(
        "document.getElementById('samp-status').textContent.startsWith('sent')", timeout=30_000
    )
    watched.screenshot("map-samp-sent")


def test_a_spectrum_reaches_a_spectrum_client_as_its_dataset_url(opened, receiver, live_server):
    did = requests.get(
        f"{live_server.url}/tap/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT TOP 1 obs_publisher_did FROM ml.latent",
            "RESPONSEFORMAT": "csv",
        },
        timeout=30,
    ).text.splitlines()[1]
    watched = opened(
        f"/explore/spectrum?ID={quote(did, safe='')}",
        wait_for="spectrum",
        allowed_hosts=(f"localhost:{WEB_PROFILE_PORT}",),
    )
    watched.page.click("button[data-samp='spectrum']")
    params = receiver.spectra.get(timeout=60)
    assert params["meta"]["ssa:Curation.PublisherDID"] == did
    assert params["meta"]["Access.Format"] == "application/fits"
    response = requests.get(params["url"], timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"SIMPLE  =")


def test_an_uploads_result_reaches_a_table_client_with_its_rows(opened, receiver, upload_file):
    watched = opened("/explore/similar", wait_for="similar", allowed_hosts=(f"localhost:{WEB_PROFILE_PORT}",))
    page = watched.page
    page.set_input_files("#file", str(upload_file))
    page.fill("#k", "5")
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#results tr.result').length === 5", timeout=60_000)
    page.click("#send-result")
    params = receiver.get(timeout=60)
    assert params["name"] == f"spectra similar to {upload_file.name}"
    table = parse_single_table(io.BytesIO(requests.get(params["url"], timeout=30).content))
    table = table.to_table(use_names_over_ids=True)
    assert list(table["rank"]) == [1, 2, 3, 4, 5]
    targets = page.locator("#results tr.result td:nth-child(2)").all_inner_texts()
    assert [str(t) for t in table["target_name"]] == targets
    assert "distance" in table.colnames
