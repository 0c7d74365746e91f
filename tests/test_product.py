"""The product path as a user runs it: ``latentvo demo`` on an empty archive root, as a subprocess.

It builds the bundled demo archive (ingest, train, encode, analyse, index: torch runs in that
process), then serves it with gunicorn. The first request must be answered (a fork after torch
has run used to hang every worker), TAP, SSAP, DataLink and an upload to /similar must work
with real clients, and SIGTERM (and Ctrl-C on a second start) must stop the server in seconds.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pyvo
import requests
from astropy.io.votable import parse

from bench.heldout import free_port, heldout_stars, wait_until_available, write_fits_image, write_flux_csv
from model.spectrum import air_to_vacuum
from tests.conftest import REPO

#: The demo build (100 epochs with the continuum channels) takes about 7.5 minutes on a quiet 2-core
#: machine; CI machines may be busier.
BUILD_TIMEOUT_S = 1500
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 300)]
STOP_TIMEOUT_S = 10


def recalibrated_csv(path: Path, star) -> Path:
    """The star as an instrument with another flux calibration records it: a tilt and a bow, log-RMS ~0.5."""
    wave = air_to_vacuum(star.wave_air)
    x = np.log(wave / wave.min()) / np.log(wave.max() / wave.min()) * 2 - 1
    return write_flux_csv(path, wave, star.flux * np.exp(0.8 * x - 0.5 * (1.5 * x**2 - 0.5)))


def similar_answer(url: str, path: Path) -> tuple:
    """POST a file to /similar (K = 5): the neighbours' table array and the PARAMs by name."""
    with path.open("rb") as upload:
        response = requests.post(f"{url}/similar", files={"FILE": upload}, data={"K": 5}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    table = parse(io.BytesIO(response.content)).get_first_table()
    return table.array, {p.name: p.value for p in table.params}


def latentvo() -> list[str]:
    """The console script a user runs (beside this Python), or the module behind it."""
    script = Path(sys.executable).parent / "latentvo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def start_demo(root: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTVO_")}
    command = [*latentvo(), "--quiet", "demo", "--root", str(root), "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_availability(url: str, process: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until the service answers (the log is in the failure when it exits or never does)."""
    started = time.monotonic()
    with log.open("rb") as handle:
        try:
            wait_until_available(url, process, handle, timeout)
        except RuntimeError as exc:
            process.kill()
            pytest.fail(str(exc))
    return time.monotonic() - started


def stop(process: subprocess.Popen, how: signal.Signals, url: str) -> float:
    """Send ``how`` and return the seconds until the process (the gunicorn master) has exited."""
    started = time.monotonic()
    process.send_signal(how)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the server did not stop within {STOP_TIMEOUT_S} s of {how.name}")
    with pytest.raises(requests.ConnectionError):  # no worker is left listening
        requests.get(f"{url}/tap/availability", timeout=5)
    return time.monotonic() - started


def test_demo_from_an_empty_root_answers_and_stops(tmp_path, miles_dir):
    root, log = tmp_path / "archive", tmp_path / "demo.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_demo(root, port, log)
    try:
        first_answer_s = wait_for_availability(url, process, log, BUILD_TIMEOUT_S)
        output = log.read_text()
        assert "demo archive ready" in output  # it was built, in this very process
        assert f"latentvo ready at {url}" in output  # the log line a user waits for
        print(f"\nfirst answer {first_answer_s:.0f} s after `latentvo demo` started")

        tap = pyvo.dal.TAPService(f"{url}/tap")
        rows = tap.run_sync("SELECT TOP 5 obs_publisher_did, teff FROM ivoa.obscore ORDER BY teff").to_table()
        assert len(rows) == 5 and all(str(d).startswith("ivo://") for d in rows["obs_publisher_did"])

        ssa = pyvo.dal.SSAService(f"{url}/ssa/query").search(maxrec=3)
        assert len(ssa) == 3
        did = str(rows["obs_publisher_did"][0])

        links = pyvo.dal.adhoc.DatalinkResults.from_result_url(f"{url}/datalink/links?ID={did}")
        semantics = {str(s) for s in links["semantics"]}
        assert "#this" in semantics and "#preview" in semantics

        star = next(s for s in heldout_stars(miles_dir) if s.miles_id == "m0072")
        write_fits_image(tmp_path / "star.fits", star)
        with (tmp_path / "star.fits").open("rb") as upload:
            response = requests.post(f"{url}/similar", files={"FILE": upload}, data={"K": 5}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        table = parse(io.BytesIO(response.content)).get_first_table()
        neighbours = table.array
        assert len(neighbours) == 5
        assert abs(float(sorted(neighbours["teff"])[2]) - star.teff) < 1000  # a G star's neighbours are G-ish
        # The demo's model has continuum channels: a star calibrated as MILES is compared with its
        # continuum too, the same star under another flux calibration by its lines alone.
        params = {p.name: p.value for p in table.params}
        assert params["continuum_used"] and params["continuum_mismatch"] < 0.08, params
        other = recalibrated_csv(tmp_path / "recalibrated.csv", star)
        neighbours, params = similar_answer(url, other)
        assert not params["continuum_used"] and params["continuum_mismatch"] > 0.2, params
        assert abs(float(sorted(neighbours["teff"])[2]) - star.teff) < 1000

        # An archive spectrum fetched through DataLink #this and uploaded again finds itself.
        this = next(str(r["access_url"]) for r in links if str(r["semantics"]) == "#this")
        fetched = tmp_path / "fetched.fits"
        fetched.write_bytes(requests.get(this, timeout=30).content)
        neighbours, params = similar_answer(url, fetched)
        assert str(neighbours["obs_publisher_did"][0]) == did and float(neighbours["distance"][0]) < 1e-3

        assert stop(process, signal.SIGTERM, url) < STOP_TIMEOUT_S
        assert "Shutting down: Master" in log.read_text()

        # A second start finds the archive built, serves at once, and stops on Ctrl-C.
        process = start_demo(root, port, log)
        assert wait_for_availability(url, process, log, 120) < 60
        assert "already built" in log.read_text()
        assert stop(process, signal.SIGINT, url) < STOP_TIMEOUT_S
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
