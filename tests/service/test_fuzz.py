"""A bounded fuzz of the live service (bench/fuzz.py runs the long version): mutated ADQL, deep
nesting, huge literals and odd calls on /tap/sync, and odd parameters for SSAP, DataLink and
/similar. Every answer is a VOTable below HTTP 500, errors are DALI error documents, and no
message shows code."""

from __future__ import annotations

import random

import pytest
import requests

from bench.fuzz import adql_cases, archive_dids, param_cases, run_adql, run_params, seed_queries

N_ADQL = 2500
N_PARAMS = 800


@pytest.fixture(scope="module")
def seeds(live_server) -> list[str]:
    found = seed_queries(live_server.url, requests.Session())
    assert len(found) > 20  # the examples and every published table
    return found


def test_adql_fuzz_gets_no_server_errors(live_server, seeds):
    rng = random.Random(9)
    queries = [q for q, _ in zip(adql_cases(seeds, rng), range(N_ADQL), strict=False)]
    tally = run_adql(live_server.url, queries, workers=4)
    assert tally.cases == N_ADQL
    assert tally.problems == []
    assert tally.by_status[400] > N_ADQL / 4 and tally.by_status[200] > N_ADQL / 20  # both kinds tried


@pytest.mark.parametrize(
    "query",
    [
        "SELECT " + "(" * 64 + "1" + ")" * 64 + " FROM ivoa.obscore",  # the RecursionError of the report
        "SELECT TOP 13 99999999999999999999999 obs_publisher_did FROM ml.model",  # the OverflowError
        "SELECT COUNT ( ) FROM ivoa.obscore",  # the AttributeError
        "SELECT TOP -1 * FROM ivoa.obscore",  # the class name in the message
    ],
)
def test_reported_queries(live_server, query):
    response = requests.post(f"{live_server.url}/tap/sync", data={"LANG": "ADQL", "QUERY": query}, timeout=60)
    assert response.status_code in (200, 400)
    assert "class" not in response.text and "Error" not in response.text.replace("ERROR", "")


def test_parameter_fuzz_gets_no_server_errors(live_server):
    rng = random.Random(4)
    dids = archive_dids(live_server.url, requests.Session())
    cases = [c for c, _ in zip(param_cases(dids, rng), range(N_PARAMS), strict=False)]
    tally = run_params(live_server.url, cases, workers=4)
    assert tally.problems == []
    assert tally.by_status[200] > 0 and tally.by_status[400] > 0
