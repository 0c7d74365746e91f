"""The landing page and the `latentvo serve` command (real gunicorn on a real port)."""

import os
import signal
import subprocess
import sys
import time

import requests

from tests.conftest import free_url


def test_landing_page_lists_services_model_and_credits(live_server):
    page = requests.get(live_server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for path in ("/tap", "/ssa/query", "/datalink/links", "/tap/capabilities"):
        assert f"{live_server.url}{path}" in html
    assert "Sánchez-Blázquez" in html and "200 spectra" in html
    assert "Model in service" in html and "mutual information" in html
    assert "ml_knn(o.obs_publisher_did, 'ivo://latentvo.example/~?miles/" in html


def test_serve_runs_gunicorn_workers_that_answer(live_server):
    url = free_url()
    port = url.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "LATENTVO_ARCHIVE_ROOT": live_server.config["archive"]["root"],
        "LATENTVO_SERVICE_BASE_URL": url,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", port, "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                availability = requests.get(f"{url}/tap/availability", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.3)
        assert availability.status_code == 200 and "<vosi:available>true" in availability.text
        answer = requests.get(
            f"{url}/tap/sync",
            timeout=30,
            params={
                "LANG": "ADQL",
                "QUERY": "SELECT COUNT(*) AS n FROM ivoa.obscore",
                "RESPONSEFORMAT": "csv",
            },
        )
        assert answer.text.splitlines()[1].strip() == "200"
        assert answer.headers["Server"].startswith("latentvo/") and "gunicorn" not in answer.headers["Server"]
        # Refusals of gunicorn itself are DALI error documents too, not HTML pages.
        long_value = requests.get(f"{url}/ssa/query", params={"TARGETNAME": "x" * 5000}, timeout=30)
        assert long_value.status_code == 200 and b"QUERY_STATUS" in long_value.content  # reached the app
        too_long = requests.get(f"{url}/ssa/query", params={"TARGETNAME": "x" * 9000}, timeout=30)
        assert too_long.status_code == 414
        assert too_long.headers["Content-Type"] == "application/x-votable+xml"
        assert b'value="ERROR"' in too_long.content
        assert b"send long parameters in the body" in too_long.content
        huge_header = requests.get(f"{url}/tap/availability", headers={"X-Big": "y" * 9000}, timeout=30)
        assert huge_header.status_code in (400, 431) and b'value="ERROR"' in huge_header.content
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert "Booting worker" in output and output.count("Booting worker") >= 2
