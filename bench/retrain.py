"""Retraining over HTTP, and promotion and rollback while 20 clients query the similarity search.

Serves a built archive (``latentvo demo`` leaves one) with ``latentvo serve`` (gunicorn, as an
operator runs it), with an operator token. Then:

1. a train job on ``/ml/train`` (``--epochs``, not promoted): its wall time, its stages as the job
   document reported them, and its MI table (the label each informative dimension carries most);
2. ``--clients`` threads query ``/similar?ID=``, SSAP ``SIMILAR_TO`` and TAP ``ml_knn`` in turn
   for ``--seconds`` while the operator puts the new version in service and rolls back, again and
   again (``POST /ml/models/{v}``, every ``--swap-every`` s). Counted: requests, failures (any
   answer but 200 with the rows asked for), and answers that mix versions (an SSAP or /similar
   answer whose PARAM model_version is not the one its neighbours came from cannot be seen from
   outside, so each answer's single model_version is checked to be one of the two in play).

Usage: python bench/retrain.py --root ARCHIVE [--config resources/demo/demo.toml] [--epochs 20]
       [--clients 20] [--seconds 60] [--port 8189]
Writes bench/results/retrain.json and retrain.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from astropy.io.votable import parse

REPO = Path(__file__).resolve().parents[1]
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended with status {process.returncode}")
        try:
            if requests.get(f"{url}/tap/availability", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit("the server did not come up")


def train(url: str, headers: dict, epochs: int) -> dict:
    started = time.perf_counter()
    created = requests.post(
        f"{url}/ml/train", data={"EPOCHS": str(epochs), "PHASE": "RUN"}, headers=headers, timeout=30
    )
    created.raise_for_status()
    job_url = created.url
    stages = []
    while True:
        job = ET.fromstring(requests.get(job_url, params={"WAIT": "5"}, headers=headers, timeout=60).content)
        info = {v.get("name"): v.text for v in job.findall(f"{UWS}jobInfo/value")}
        stage = info.get("stage")
        if stage and (not stages or stages[-1][0] != stage):
            stages.append((stage, round(time.perf_counter() - started, 1)))
        phase = job.findtext(f"{UWS}phase")
        if phase in ("COMPLETED", "ERROR", "ABORTED"):
            break
    if phase != "COMPLETED":
        raise SystemExit(requests.get(f"{job_url}/error", headers=headers, timeout=30).text)
    result = parse(io.BytesIO(requests.get(f"{job_url}/results/result", headers=headers, timeout=30).content))
    infos = {i.name: i.value for i in result.resources[0].infos}
    table = result.get_first_table().to_table(use_names_over_ids=True)
    carried = {}
    for row in table:
        if row["informative"] and row["mi"] is not None:
            dim = int(row["dim"])
            if dim not in carried or row["mi"] > carried[dim][1]:
                carried[dim] = (str(row["label"]), float(row["mi"]))
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "stages_at_s": stages,
        "model_version": int(infos["model_version"]),
        "informative_dims": infos["informative_dims"],
        "training_set_hash": infos["training_set_hash"],
        "carried": {str(d): {"label": lab, "mi": round(mi, 3)} for d, (lab, mi) in sorted(carried.items())},
    }


def client_loop(
    url: str, did: str, stop: threading.Event, tally: Counter, versions: Counter, times: list
) -> None:
    session = requests.Session()
    asks = [
        ("similar", f"{url}/similar", {"ID": did, "K": "10"}),
        ("ssap", f"{url}/ssa/query", {"REQUEST": "queryData", "SIMILAR_TO": did, "K": "10"}),
        (
            "tap_ml_knn",
            f"{url}/tap/sync",
            {
                "LANG": "ADQL",
                "QUERY": "SELECT obs_publisher_did FROM ivoa.obscore "
                f"WHERE 1 = ml_knn(obs_publisher_did, '{did}', 10)",
            },
        ),
    ]
    turn = 0
    while not stop.is_set():
        name, target, params = asks[turn % len(asks)]
        turn += 1
        t0 = time.perf_counter()
        try:
            answer = session.get(target, params=params, timeout=60)
            ok = answer.status_code == 200
            if ok:
                table = parse(io.BytesIO(answer.content)).get_first_table()
                ok = len(table.array) >= 10
                stated = {str(p.value) for p in table.params if p.name == "model_version"}
                for value in stated:
                    versions[value] += 1
                ok = ok and len(stated) <= 1
        except Exception:  # noqa: BLE001 (any failure is counted, whatever it is)
            ok = False
        times.append(time.perf_counter() - t0)
        tally[(name, "ok" if ok else "failed")] += 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="a built archive (latentvo demo --root)")
    parser.add_argument("--config", default=REPO / "resources" / "demo" / "demo.toml")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--swap-every", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=8189)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="retrain")
    args = parser.parse_args()

    token = secrets.token_hex(16)
    url = f"http://127.0.0.1:{args.port}"
    env = {
        **os.environ,
        "LATENTVO_ARCHIVE_ROOT": str(args.root.resolve()),
        "LATENTVO_ML_OPERATOR_TOKEN": token,
        "LATENTVO_SERVICE_BASE_URL": url,
    }
    command = [sys.executable, "-m", "service.cli", "--config", str(args.config), "--quiet", "serve"]
    command += ["--port", str(args.port), "--workers", "2"]
    server = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    headers = {"Authorization": f"Bearer {token}"}
    try:
        wait_until_up(url, server)
        before = requests.get(f"{url}/ml/models", timeout=30).json()["models"]
        old = next(m["model_version"] for m in before if m["is_current"])
        trained = train(url, headers, args.epochs)
        new = trained["model_version"]
        did = requests.get(
            f"{url}/tap/sync",
            params={
                "LANG": "ADQL",
                "QUERY": "SELECT TOP 1 obs_publisher_did FROM ivoa.obscore",
                "RESPONSEFORMAT": "csv",
            },
            timeout=30,
        ).text.split()[1]
        stop, tally, versions, times = threading.Event(), Counter(), Counter(), []
        threads = [
            threading.Thread(target=client_loop, args=(url, did, stop, tally, versions, times))
            for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        swaps, refused = 0, 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(args.swap_every)
            target = new if swaps % 2 == 0 else old
            answer = requests.post(
                f"{url}/ml/models/{target}", data={"current": "true"}, headers=headers, timeout=30
            )
            swaps += 1
            refused += answer.status_code != 200
        stop.set()
        for thread in threads:
            thread.join()
        requests.post(f"{url}/ml/models/{old}", data={"current": "true"}, headers=headers, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    total = sum(tally.values())
    failed = sum(n for (_, outcome), n in tally.items() if outcome == "failed")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "train": trained,
        "clients": args.clients,
        "seconds": args.seconds,
        "swaps": swaps,
        "swaps_refused": refused,
        "requests": total,
        "failed": failed,
        "by_endpoint": {f"{name} {outcome}": n for (name, outcome), n in sorted(tally.items())},
        "versions_answered": dict(versions),
        "latency_ms": {
            "p50": round(1000 * float(np.percentile(times, 50)), 1),
            "p95": round(1000 * float(np.percentile(times, 95)), 1),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    t = r["train"]
    lines = [
        "# Retraining as a job, then promotion and rollback under load",
        "",
        f"{r['machine']}. Train job: {t['wall_s']} s (stages reached at {t['stages_at_s']}); version "
        f"{t['model_version']}, informative dimensions `{t['informative_dims']}`, training-set hash "
        f"`{t['training_set_hash'][:16]}…`.",
        "",
        "| dimension | carries most | MI (nats) |",
        "|---|---|---|",
        *[f"| z{d} | {c['label']} | {c['mi']} |" for d, c in t["carried"].items()],
        "",
        f"{r['clients']} clients for {r['seconds']:.0f} s, {r['swaps']} swaps "
        f"({r['swaps_refused']} refused): "
        f"**{r['failed']} failed of {r['requests']} requests**; p50 {r['latency_ms']['p50']} ms, "
        f"p95 {r['latency_ms']['p95']} ms; versions answered {r['versions_answered']}.",
        "",
        "| endpoint | requests |",
        "|---|---|",
        *[f"| {k} | {n} |" for k, n in r["by_endpoint"].items()],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
