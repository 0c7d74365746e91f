"""STILTS validators (taplint, votlint, datalinklint) against a running latentvo service.

Run it against any deployment:  python -m tests.stilts http://127.0.0.1:8080 [--stages "TMV TME …"]
It prints each validator's report lines with errors and failures and a summary, and exits
non-zero when any validator reports an error or failure. The test suite calls the same
functions against its own live server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests

#: taplint stages, async (QAS UWS) and uploads (UPL) included; LOC (ObsLocTAP) does not apply to an archive.
TAPLINT_STAGES = "TMV TME TMS TMC CPV CAP AVV QGE QPO QAS UWS MDQ OBS UPL EXA"
_REPORT = re.compile(r"^([EWIFS])-([A-Z]{3})-([A-Z0-9]{4})-?\d*\s+(.*)$")
_TOTALS = re.compile(r"Totals:\s+Errors:\s*(\d+);\s*Warnings:\s*(\d+);.*Failures:\s*(\d+)")


@dataclass
class Report:
    tool: str
    target: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failures

    def summary(self) -> str:
        return (
            f"{self.tool} {self.target}: {len(self.errors)} errors, {len(self.failures)} failures, "
            f"{len(self.warnings)} warnings"
        )


def stilts_available() -> bool:
    return shutil.which("stilts") is not None


def _run(args: list[str], timeout: int = 900) -> str:
    done = subprocess.run(["stilts", *args], capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def taplint(tap_url: str, stages: str = TAPLINT_STAGES, maxrepeat: int = 9) -> Report:
    output = _run(
        ["taplint", f"tapurl={tap_url}", f"stages={stages}", "report=EWF", f"maxrepeat={maxrepeat}"]
    )
    report = Report("taplint", tap_url, output=output)
    for line in output.splitlines():
        match = _REPORT.match(line.strip())
        if match:
            {"E": report.errors, "W": report.warnings, "F": report.failures}.get(match[1], []).append(
                line.strip()
            )
    totals = _TOTALS.search(output)
    if totals is None:
        report.failures.append("taplint printed no totals line")
    return report


def votlint(url: str) -> Report:
    """votlint on the document a GET of ``url`` returns (saved first, so HTTP errors are visible)."""
    response = requests.get(url, timeout=120)
    report = votlint_content(response.content, url)
    if response.status_code != 200:
        report.errors.append(f"HTTP {response.status_code}")
    return report


def votlint_content(content: bytes, target: str) -> Report:
    """votlint on a VOTable already fetched (a POST answer, say); ``target`` names it in the report."""
    with tempfile.NamedTemporaryFile(suffix=".vot", delete=False) as handle:
        handle.write(content)
    try:
        output = _run(["votlint", f"votable={handle.name}"])
    finally:
        Path(handle.name).unlink()
    report = Report("votlint", target, output=output)
    for line in output.splitlines():
        if line.startswith("ERROR") or " ERROR " in line:
            report.errors.append(line.strip())
        elif line.startswith("WARNING"):
            report.warnings.append(line.strip())
    return report


def datalinklint(url: str) -> Report:
    output = _run(["datalinklint", url])
    report = Report("datalinklint", url, output=output)
    for line in output.splitlines():
        match = _REPORT.match(line.strip())
        if match:
            {"E": report.errors, "W": report.warnings, "F": report.failures}.get(match[1], []).append(
                line.strip()
            )
    return report


def first_did(base_url: str) -> str:
    response = requests.get(
        f"{base_url}/tap/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT TOP 1 obs_publisher_did FROM ivoa.obscore",
            "RESPONSEFORMAT": "csv",
        },
        timeout=60,
    )
    response.raise_for_status()
    return response.text.splitlines()[1].strip()


def validate(base_url: str, stages: str = TAPLINT_STAGES) -> list[Report]:
    """taplint on /tap, votlint on SSAP/TAP/DataLink answers, datalinklint on {links}."""
    base_url = base_url.rstrip("/")
    did = first_did(base_url)
    links = f"{base_url}/datalink/links?ID={quote(did, safe='')}"
    reports = [taplint(f"{base_url}/tap", stages)]
    for url in (
        f"{base_url}/ssa/query?REQUEST=queryData&MAXREC=20",
        f"{base_url}/ssa/query?REQUEST=queryData&FORMAT=metadata",
        f"{base_url}/ssa/query?REQUEST=queryData&SIMILAR_TO={quote(did, safe='')}&K=5",
        f"{base_url}/tap/sync?LANG=ADQL&QUERY={quote('SELECT TOP 20 * FROM ivoa.obscore')}",
        f"{base_url}/tap/sync?LANG=ADQL&QUERY={quote('SELECT TOP 5 * FROM ml.latent')}",
        links,
        f"{base_url}/datalink/similar?ID={quote(did, safe='')}&K=5",
    ):
        reports.append(votlint(url))
    reports.append(datalinklint(links))
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base_url", help="the service's public base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--stages", default=TAPLINT_STAGES)
    args = parser.parse_args()
    reports = validate(args.base_url, args.stages)
    for report in reports:
        for line in report.errors + report.failures:
            print(f"  {line}")
        print(report.summary())
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
