"""The IVOA validators (STILTS taplint, votlint, datalinklint) accept the live service."""

import pytest

from tests import stilts


@pytest.fixture(scope="module")
def reports(live_server):
    assert stilts.stilts_available(), "STILTS is not installed (apt-get install stilts; .ci/run does it)"
    return stilts.validate(live_server.url)


def test_taplint_reports_no_errors_or_failures(reports):
    taplint = reports[0]
    print(taplint.summary())
    assert taplint.tool == "taplint"
    assert taplint.ok, "\n".join(taplint.errors + taplint.failures)


def test_votlint_accepts_every_response(reports):
    for report in reports:
        if report.tool == "votlint":
            print(report.summary())
            assert report.ok, f"{report.target}:\n" + "\n".join(report.errors)


def test_datalinklint_accepts_links(reports):
    report = reports[-1]
    print(report.summary())
    assert report.tool == "datalinklint"
    assert report.ok, "\n".join(report.errors + report.failures)
