"""The VOTable writer never corrupts memory (astropy's C TABLEDATA writer wrote one byte past its
row buffer when a row's text filled it exactly: astropy issue 20419), and the writer the service
uses gives the bytes astropy's own writers give."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

#: Rows whose text is 230 to 300 bytes long: one of them fills astropy's 256-byte row buffer exactly.
WRITE_ROWS = textwrap.dedent(
    """
    from service.votable import Column, add_table, new_document, results_resource, serialise
    for width in range(200, 300):
        document = new_document()
        resource = results_resource(document, "OK")
        columns = [Column("name", "char", "*"), Column("n", "long")]
        add_table(resource, document, columns, [["x" * width, 50]] * 3)
        serialise(document)
    print("written")
    """
)


def test_tabledata_rows_of_every_length_leave_memory_intact():
    """Python's debug allocator checks the guard bytes around every block it frees (it aborts the
    process on an overwrite), so a writer that overruns its buffer cannot pass silently here."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE_ROWS],
        cwd=REPO,
        env={"PYTHONMALLOC": "debug", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "written"


COMPARE_WRITERS = textwrap.dedent(
    """
    import io, sys, warnings
    from astropy.io.votable import parse
    warnings.simplefilter("ignore")
    for path in sys.argv[1:]:
        document = parse(path)
        written = []
        for python in (True, False):
            buffer = io.BytesIO()
            document.to_xml(buffer, _debug_python_based_parser=python)
            written.append(buffer.getvalue())
        print(path, "same" if written[0] == written[1] else "different")
    """
)


def test_the_python_writer_writes_what_the_c_writer_writes(live_server, tmp_path):
    """The writer the service uses against astropy's C writer, on real answers of the service (in a
    process of its own under the debug allocator, since the C writer is the one that may overrun)."""
    import requests

    queries = [
        "SELECT TOP 20 * FROM ivoa.obscore ORDER BY obs_publisher_did",
        "SELECT TOP 20 * FROM ml.latent ORDER BY obs_publisher_did",
        "SELECT * FROM TAP_SCHEMA.columns",
    ]
    paths = []
    for i, query in enumerate(queries):
        data = {"LANG": "ADQL", "QUERY": query}
        answer = requests.post(f"{live_server.url}/tap/sync", data=data, timeout=60)
        paths.append(tmp_path / f"answer{i}.vot")
        paths[-1].write_bytes(answer.content)
    done = subprocess.run(
        [sys.executable, "-c", COMPARE_WRITERS, *map(str, paths)],
        env={"PYTHONMALLOC": "debug", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split()[-1] for line in done.stdout.splitlines()] == ["same"] * len(queries)
