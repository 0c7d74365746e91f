"""Mutation fuzzing of a running service: ADQL on /tap/sync; SSAP, DataLink and /similar parameters.

Every answer must be a VOTable with a status below 500, an error answer must be a DALI error
document (INFO name="QUERY_STATUS" value="ERROR"), and no message may show code: Python class
names, tracebacks, object reprs. The ADQL seeds are the service's own /tap/examples queries
and queries built from its /tap/tables; each case mutates a seed (token deletion, duplication,
swaps, insertions from an ADQL vocabulary, deep parenthesis nesting, huge or odd literals, empty
or odd function calls, truncation, stray bytes).

Usage: python bench/fuzz.py [--url URL] [--n 100000] [--seconds 0] [--workers 4] [--seed 1]
Without --url the demo archive is built (``latentvo demo --no-serve``, root var/bench-fuzz) and
served with gunicorn on a free port. Writes bench/results/fuzz.json and fuzz.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

XHTML = "{http://www.w3.org/1999/xhtml}"
VOTABLE_NS = re.compile(r"<VOTABLE\b")
#: What must never reach a client: code, not words.
CODE_LEAK = re.compile(
    r"Traceback|<class |object at 0x|\b[A-Z][A-Za-z]*(Error|Exception)\b|NoneType|sqlglot|"
    r"File \"|\bdict\b|\btuple\b"
)

# -- ADQL ---------------------------------------------------------------------------------------

TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"[^\"]*\"|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|\w+|<=|>=|<>|!=|\|\||\S"
)
KEYWORDS = (
    "SELECT TOP DISTINCT FROM WHERE AND OR NOT IN BETWEEN LIKE ILIKE IS NULL ORDER BY GROUP HAVING JOIN "
    "LEFT RIGHT FULL OUTER INNER NATURAL ON USING AS UNION INTERSECT EXCEPT ALL WITH EXISTS CASE WHEN "
    "THEN ELSE END CAST OFFSET ASC DESC COUNT SUM AVG MIN MAX COALESCE POINT CIRCLE POLYGON BOX CONTAINS "
    "INTERSECTS DISTANCE AREA COORD1 COORD2 CENTROID ABS SQRT LOG LOG10 EXP POWER MOD ROUND TRUNCATE "
    "RAND LOWER UPPER IN_UNIT ml_knn ml_distance ( ) ( ) , , . * + - / || = < > <= >= <> ; -- '"
)
VOCABULARY = [
    *KEYWORDS.split(" "),
    "1", "0", "-1", "3.14", "1e999", "-1e999", "1e-999", "99999999999999999999999",
    "9223372036854775808", "-9223372036854775809", "0x10", "1.2.3", "''", "'x''y'", "'\u00e9\u4e2d'",
    '"odd col"', '""', "TAP_UPLOAD.t1", "ivoa.obscore", "ml.latent", "TAP_SCHEMA.columns", "'ICRS'",
    "'GALACTIC'", "\x00", "\u202e", "NaN", "Infinity", "TIMESTAMP", "'2020-13-45'",
]  # fmt: skip
ODD_CALLS = [
    "COUNT()", "COUNT( )", "SUM()", "AVG(*)", "MAX(DISTINCT)", "POINT()", "POINT('ICRS')", "CIRCLE(1,2)",
    "POLYGON(1,2,3,4)", "DISTANCE()", "CONTAINS(1)", "ml_knn()", "ml_knn(1,2,3,4,5)",
    "ml_distance(NULL, NULL)", "ROUND(1, 99999999999999999999)", "POWER(10, 400)", "LOG(-1)", "SQRT(-1)",
    "MOD(1, 0)", "1/0", "CAST(1 AS FOO)", "CAST('x' AS TIMESTAMP)", "IN_UNIT(1, 'furlong')",
    "COALESCE()", "LOWER()", "RAND('x')", "ml_knn(obs_publisher_did, 'nope', 10)",
    "ml_knn(obs_publisher_did, obs_publisher_did, 99999999999999999999)",
]  # fmt: skip


def seed_queries(base_url: str, session: requests.Session) -> list[str]:
    """The service's example queries and small queries over every published table and column."""
    seeds = []
    examples = ET.fromstring(session.get(f"{base_url}/tap/examples", timeout=30).content)
    for element in examples.iter():
        if element.get("property") == "query" and element.text:
            seeds.append(element.text.strip())
    tables = ET.fromstring(session.get(f"{base_url}/tap/tables", timeout=30).content)
    for table in tables.iter("table"):
        name = table.findtext("name")
        columns = [c.findtext("name") for c in table.iter("column")]
        if not name or not columns:
            continue
        first, last = columns[0], columns[-1]
        seeds.append(f"SELECT TOP 5 {', '.join(columns[:4])} FROM {name}")
        seeds.append(f"SELECT {first}, COUNT(*) AS n FROM {name} GROUP BY {first} ORDER BY n DESC")
        seeds.append(f"SELECT TOP 3 * FROM {name} WHERE {last} IS NOT NULL ORDER BY {first}")
    return seeds


def nest(query: str, rng: random.Random) -> str:
    """Wrap a number, a column or the select list in many parentheses (some beyond the limit)."""
    depth = rng.choice([1, 2, 8, 64, 65, 100, 200, 300, 499, 500, 501, 700, 5000])
    tokens = TOKEN.findall(query)
    spots = [i for i, t in enumerate(tokens) if re.fullmatch(r"\d[\w.]*|[a-z_]\w*", t)]
    if not spots:
        return "SELECT " + "(" * depth + "1" + ")" * depth + " FROM ivoa.obscore"
    i = rng.choice(spots)
    tokens[i] = "(" * depth + tokens[i] + ")" * depth
    return " ".join(tokens)


def chain(rng: random.Random) -> str:
    """Long flat chains (deep trees without parentheses): 1+1+…, NOT NOT …, a=1 OR a=1 …"""
    n = rng.choice([10, 100, 999, 1000, 1001, 5000, 30000])
    kind = rng.choice(["add", "not", "or", "neg", "concat"])
    body = {
        "add": "+".join(["1"] * n),
        "not": "NOT " * n + "1=1",
        "or": " OR ".join(["s_ra = 1"] * n),
        "neg": "- " * n + "1",
        "concat": " || ".join(["'a'"] * n),
    }[kind]
    where = f" WHERE {body}" if kind in ("not", "or") else ""
    select = "1" if where else body
    return f"SELECT TOP 1 {select} FROM ivoa.obscore{where}"


def mutate(query: str, rng: random.Random) -> str:
    tokens = TOKEN.findall(query)
    if not tokens:
        return query
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        op = rng.randrange(9)
        i = rng.randrange(len(tokens))
        if op == 0 and len(tokens) > 1:
            del tokens[i]
        elif op == 1:
            tokens.insert(i, tokens[i])
        elif op == 2:
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op in (3, 4):
            tokens.insert(i, rng.choice(VOCABULARY))
        elif op == 5:
            tokens[i] = rng.choice(VOCABULARY)
        elif op == 6:
            tokens.insert(i, rng.choice(ODD_CALLS))
        elif op == 7:
            tokens = tokens[: max(1, i)]
        else:
            numbers = [k for k, t in enumerate(tokens) if re.fullmatch(r"\d[\w.]*", t)]
            k = rng.choice(numbers) if numbers else i
            tokens[k] = rng.choice(["99999999999999999999999", "1e999", "-0", "1e-400", "00000000001"])
    return " ".join(tokens)


def adql_cases(seeds: list[str], rng: random.Random) -> Iterator[str]:
    """An endless stream of mutated queries: mostly token mutations, some nesting and chains."""
    while True:
        roll = rng.random()
        seed = rng.choice(seeds)
        if roll < 0.08:
            yield nest(seed, rng)
        elif roll < 0.12:
            yield chain(rng)
        elif roll < 0.14:
            yield "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 80)))
        elif roll < 0.15:
            yield seed + " " * 100_001  # beyond the length limit
        else:
            yield mutate(seed, rng)


# -- parameters of the other protocols ------------------------------------------------------------

ODD_VALUES = [
    "", " ", "0", "-1", "1e999", "NaN", "inf", "99999999999999999999999", "1,2", "1,2,3,4,5", "a,b",
    "1/2", "1/", "/2", "//", "0/0", "-90,91", "400,-100", "10,20,ICRS", "10,20,GALACTIC", "\x00",
    "'; DROP TABLE spectrum; --", "<x/>", "%", "../../etc/passwd", "ivo://latentvo.example/~?miles/x",
    "1 2 3", "0 0 0", "99 100", "-3", "1.5", "1,,2", "x" * 5000, "\u202e\u4e2d", "true", "null",
]  # fmt: skip
SSAP_PARAMS = [
    "POS", "SIZE", "BAND", "TIME", "FORMAT", "MAXREC", "TOP", "COLLECTION", "TARGETNAME",
    "PUBDID", "SIMILAR_TO", "K", "DIMS", "WEIGHTS", "REQUEST", "VERSION", "RESPONSEFORMAT",
]  # fmt: skip
DATALINK_PARAMS = ["ID", "RESPONSEFORMAT", "K", "DIMS", "MAXREC"]
SIMILAR_PARAMS = ["ID", "K", "DIMS", "WEIGHTS", "INDEX", "MAXREC", "RESPONSEFORMAT", "UPLOAD"]


@dataclass
class Case:
    method: str
    path: str
    params: dict = field(default_factory=dict)
    files: dict | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return f"{self.method} {self.path} {json.dumps(self.params)[:300]}"


def param_cases(dids: list[str], rng: random.Random) -> Iterator[Case]:
    """SSAP, DataLink and /similar requests with odd, missing, repeated and hostile parameter values."""
    endpoints = [
        ("/ssa/query", SSAP_PARAMS, {"REQUEST": "queryData"}),
        ("/datalink/links", DATALINK_PARAMS, {}),
        ("/datalink/similar", DATALINK_PARAMS, {}),
        ("/datalink/preview", DATALINK_PARAMS, {}),
        ("/datalink/reconstruction", DATALINK_PARAMS, {}),
        ("/similar", SIMILAR_PARAMS, {}),
    ]
    while True:
        path, names, base = rng.choice(endpoints)
        params = dict(base)
        if rng.random() < 0.7 and dids:
            params["ID" if path != "/ssa/query" else "SIMILAR_TO"] = rng.choice(dids)
        for name in rng.sample(names, rng.randrange(1, 4)):
            value = rng.choice(ODD_VALUES + [rng.choice(dids) if dids else ""])
            params[name.lower() if rng.random() < 0.1 else name] = value
        if path == "/similar" and rng.random() < 0.3:
            body = rng.choice(
                [b"", b"SIMPLE  =                    T", b"\x89PNG\r\n", b"wavelength,flux\n1,2\n",
                 b"<VOTABLE>", bytes(rng.randrange(256) for _ in range(500)),
                 b"wavelength,flux\n" + b"5000,1\n" * 3, b"wavelength,flux\nnan,nan\ninf,-inf\n"]
            )  # fmt: skip
            params.pop("ID", None)
            yield Case("POST", path, params, files={"file": ("upload.bin", body)})
        else:
            yield Case(rng.choice(["GET", "POST"]), path, params)


# -- checking answers ----------------------------------------------------------------------------


def problem(response: requests.Response) -> str | None:
    """What is wrong with an answer (None if nothing): a 5xx, not a VOTable, no error status, code shown."""
    body = response.content[:200_000].decode("utf-8", "replace")
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {body[:300]}"
    leak = CODE_LEAK.search(_messages(body))
    if leak:
        return f"code in the message ({leak.group(0)!r}): {_messages(body)[:300]}"
    if response.headers.get("Content-Type", "").startswith(("image/", "application/fits")):
        return None
    if not VOTABLE_NS.search(body):
        return f"HTTP {response.status_code}, not a VOTable: {body[:200]}"
    if response.status_code != 200 and 'name="QUERY_STATUS" value="ERROR"' not in body:
        return f"HTTP {response.status_code} without QUERY_STATUS=ERROR"
    return None


def _messages(body: str) -> str:
    """The human text of a VOTable answer: INFO contents and descriptions (not the data)."""
    found = re.findall(r"<INFO[^>]*>(.*?)</INFO>|<DESCRIPTION>(.*?)</DESCRIPTION>", body, re.S)
    infos = re.findall(r'<INFO[^>]*value="([^"]*)"', body)
    return " ".join([a or b for a, b in found] + infos)


@dataclass
class Tally:
    cases: int = 0
    by_status: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, description: str, response: requests.Response | str) -> None:
        self.cases += 1
        if isinstance(response, str):
            self.by_status["no answer"] += 1
            self.problems.append(f"{description[:400]} -> {response}")
            return
        self.by_status[response.status_code] += 1
        found = problem(response)
        if found:
            self.problems.append(f"{description[:400]} -> {found}")


def run_adql(base_url: str, queries: list[str], workers: int = 4) -> Tally:
    tally = Tally()
    _run(
        lambda session, q: session.post(
            f"{base_url}/tap/sync", data={"LANG": "ADQL", "QUERY": q, "MAXREC": "5"}, timeout=120
        ),
        queries,
        lambda q: f"ADQL {q[:300]!r}",
        tally,
        workers,
    )
    return tally


def run_params(base_url: str, cases: list[Case], workers: int = 4) -> Tally:
    def send(session: requests.Session, case: Case) -> requests.Response:
        if case.method == "GET":
            return session.get(f"{base_url}{case.path}", params=case.params, timeout=120)
        return session.post(f"{base_url}{case.path}", data=case.params, files=case.files, timeout=120)

    tally = Tally()
    _run(send, cases, Case.describe, tally, workers)
    return tally


def _run(send: Callable, items: list, describe: Callable, tally: Tally, workers: int) -> None:
    local = threading.local()

    def one(item) -> tuple[str, requests.Response | str]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            return describe(item), send(local.session, item)
        except requests.RequestException as exc:  # the server dropped the connection or hung
            local.session = requests.Session()
            return describe(item), f"no answer: {exc}"

    with ThreadPoolExecutor(workers) as pool:
        for description, response in pool.map(one, items):
            tally.add(description, response)


def archive_dids(base_url: str, session: requests.Session, n: int = 20) -> list[str]:
    response = session.get(
        f"{base_url}/tap/sync",
        params={"LANG": "ADQL", "QUERY": f"SELECT TOP {n} obs_publisher_did FROM ml.latent", "FORMAT": "csv"},
        timeout=60,
    )
    return [line.strip() for line in response.text.splitlines()[1:] if line.strip()]


# -- the benchmark ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: build and serve the demo archive)")
    parser.add_argument("--n", type=int, default=100_000, help="ADQL queries")
    parser.add_argument("--n-params", type=int, default=30_000, help="SSAP/DataLink/similar requests")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.url:
        report(args, args.url.rstrip("/"), rng)
        return
    from bench.heldout import build_demo, gunicorn

    root = REPO / "var" / "bench-fuzz"
    build_demo(root)
    with gunicorn(root, workers=2, log_path=root / "server.log") as url:
        report(args, url, rng)


def report(args: argparse.Namespace, url: str, rng: random.Random) -> None:
    session = requests.Session()
    seeds = seed_queries(url, session)
    dids = archive_dids(url, session)
    queries = [q for q, _ in zip(adql_cases(seeds, rng), range(args.n), strict=False)]
    cases = [c for c, _ in zip(param_cases(dids, rng), range(args.n_params), strict=False)]
    started = time.perf_counter()
    adql = run_adql(url, queries, args.workers)
    adql_s = time.perf_counter() - started
    started = time.perf_counter()
    params = run_params(url, cases, args.workers)
    params_s = time.perf_counter() - started
    results = {"seeds": len(seeds), "adql": summary(adql, adql_s), "params": summary(params, params_s)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [
        "# Fuzzing the service",
        "",
        f"Command: `python bench/fuzz.py --n {args.n} --n-params {args.n_params} --workers {args.workers} "
        f"--seed {args.seed}`; {len(seeds)} seed queries.",
        "",
        "| target | requests | seconds | by HTTP status | problems |",
        "|---|---|---|---|---|",
        f"| ADQL on /tap/sync | {adql.cases} | {adql_s:.0f} | {_statuses(adql.by_status)} | "
        f"{len(adql.problems)} |",
        f"| SSAP, DataLink, /similar parameters | {params.cases} | {params_s:.0f} | "
        f"{_statuses(params.by_status)} | {len(params.problems)} |",
        "",
        "A problem is an answer with HTTP status ≥ 500, one that is no VOTable, an error without",
        "QUERY_STATUS=ERROR, or a message that shows code (class names, tracebacks).",
    ]
    for problem_text in (adql.problems + params.problems)[:20]:
        lines.append(f"- {problem_text[:300]}")
    (out / "fuzz.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summary(tally: Tally, seconds: float) -> dict:
    return {
        "requests": tally.cases,
        "seconds": round(seconds, 1),
        "by_status": {str(k): v for k, v in tally.by_status.items()},
        "problems": len(tally.problems),
        "examples": tally.problems[:50],
    }


def _statuses(counts: Counter) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items(), key=str))


if __name__ == "__main__":
    main()
