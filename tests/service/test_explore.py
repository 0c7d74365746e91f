"""The explorer's JSON decode endpoint over the live server: the model's own reconstruction, JSON errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests

from tests.service import test_datalink

dids = test_datalink.dids
model = test_datalink.model


def decode(live_server, body=None, **kwargs) -> requests.Response:
    return requests.post(f"{live_server.url}/explore/decode", json=body, timeout=30, **kwargs)


def test_decode_answers_the_models_reconstruction_on_its_grid(live_server, model, dids):
    z = np.array(model.latents[3], dtype=np.float64)
    z[1] += 1.5  # a slider moved
    response = decode(live_server, {"z": z.tolist()})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["model_version"] == int(model.directory.name.removeprefix("v"))
    np.testing.assert_allclose(answer["wavelength"], model.grid.wavelength, rtol=1e-6)
    np.testing.assert_allclose(answer["flux"], model.reconstruct(z)[0], atol=2e-6)
    # A different point decodes to a different spectrum.
    other = decode(live_server, {"z": np.array(model.latents[3]).tolist()}).json()["flux"]
    assert np.abs(np.array(other) - answer["flux"]).max() > 1e-3


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        (None, "JSON object"),
        ({"x": [1]}, "JSON object"),
        ({"z": [0.0]}, "list of"),
        ({"z": "0 0 0"}, "list of"),
        ({"z": ["a"] * 6}, "numbers only"),
        ({"z": [True] * 6}, "numbers only"),
        ({"z": [1e9] * 6}, "within"),
    ],
)
def test_bad_bodies_get_json_usage_errors(live_server, model, body, wanted):
    if isinstance(body, dict) and isinstance(body.get("z"), list) and len(body["z"]) == 6:
        body = {"z": (body["z"] * model.latent_dim)[: model.latent_dim]}
    response = decode(live_server, body)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()
    assert error["error"] == "UsageFault" and wanted in error["message"], error
    assert "Error" not in error["message"]  # no class names


def test_nan_and_the_wrong_method_and_size_are_json_errors(live_server, model):
    text = '{"z": [' + ", ".join(["NaN"] * model.latent_dim) + "]}"
    response = requests.post(
        f"{live_server.url}/explore/decode",
        data=text,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and "finite" in response.json()["message"]
    got = requests.get(f"{live_server.url}/explore/decode", timeout=30)
    assert got.status_code == 405 and got.headers["Content-Type"] == "application/json"
    assert got.json()["error"] == "UsageFault" and "POST" in got.json()["message"]
    huge = requests.post(
        f"{live_server.url}/explore/decode",
        data=b"x" * (live_server.config["service"]["max_request_bytes"] + 1),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert huge.status_code == 413 and huge.headers["Content-Type"] == "application/json"


def test_the_landing_page_documents_the_decode_endpoint(live_server):
    page = requests.get(f"{live_server.url}/", timeout=30).text
    assert f"POST {live_server.url}/explore/decode" in page


def test_map_answers_every_encoded_spectrum_column_wise(live_server, dids):
    response = requests.get(f"{live_server.url}/explore/map", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["method"] == "pca" and answer["methods"][0] == "pca"
    assert answer["n"] == len(dids) and sorted(answer["id"]) == sorted(dids)
    for column in ("target", "x", "y", "collection"):
        assert len(answer[column]) == answer["n"], column
    assert set(answer["labels"]) == {"teff", "logg", "feh", "rv", "snr", "vsini", "anomaly_score"}
    assert all(len(values) == answer["n"] for values in answer["labels"].values())
    assert answer["collections"] == ["miles"] and set(answer["collection"]) == {0}
    assert np.std(answer["x"]) > np.std(answer["y"]) > 0  # PCA: the first axis carries the most variance


@pytest.mark.parametrize(
    ("query", "status", "wanted"),
    [("?METHOD=tsne", 400, "unknown METHOD"), ("?METHOD=" + "x" * 3000, 400, "unknown METHOD")],
)
def test_map_refuses_an_unknown_projection_in_json(live_server, query, status, wanted):
    response = requests.get(f"{live_server.url}/explore/map{query}", timeout=30)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert wanted in response.json()["message"] and response.json()["error"] == "UsageFault"


def test_map_refuses_post_in_json(live_server):
    response = requests.post(f"{live_server.url}/explore/map", timeout=30)
    assert response.status_code == 405 and response.json()["error"] == "UsageFault"


@pytest.mark.parametrize("page", ["", "/similar", "/sliders", "/correlations", "/spectrum"])
def test_pages_load_only_scripts_and_styles_of_this_service(live_server, page):
    response = requests.get(f"{live_server.url}/explore{page}", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert sources and all(s.startswith(("/", "data:", "#")) for s in sources), sources
    for source in sources:
        if source.startswith("/static/"):
            assert requests.get(live_server.url + source, timeout=30).status_code == 200, source
