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


def test_the_service_tabledata_writer_writes_what_astropy_writes():
    """ResultTable's row-at-a-time writer against astropy's Python writer on the same document: every
    datatype the service writes, nulls of each, arrays, and text that needs escaping."""
    import numpy as np
    from astropy.io.votable.tree import TableElement

    from service.votable import Column, ResultTable, add_table, new_document, results_resource, serialise

    columns = [
        Column("text", "char", "*"),
        Column("code", "char", "8"),
        Column("wide", "unicodeChar", "*"),
        Column("n", "int"),
        Column("big", "long"),
        Column("small", "short"),
        Column("x", "double", unit="deg"),
        Column("y", "float"),
        Column("flag", "boolean"),
        Column("fixed", "double", "3"),
        Column("spectrum", "float", "*"),
        Column("scale", "double"),
        Column("mixed", "double"),
        Column("count", "int"),
        Column("plain", "double"),  # all finite Python floats: the path without per-cell checks
        Column("plain_count", "long"),
    ]
    mixed = [np.float32("nan"), np.float32(1.1), np.int64(3), True, "2.5", None, float("nan")]
    counts = [np.int16(4), 2.7, None, float("nan"), 7, np.int64(-5), False]
    special = [
        0.0,
        -0.0,
        1.0,
        -2.0,
        1e16,
        1e15 + 0.5,
        123456789012345678.0,
        1e-5,
        1e-4,
        5e-324,
        1.7976931348623157e308,
        float("inf"),
        float("-inf"),
        0.1 + 0.2,
        7,
    ]
    rng = np.random.default_rng(7)
    rows = []
    for i in range(40):
        rows.append(
            [
                None if i % 7 == 0 else f"<star & {i}> \"quoted\" 'x'",
                None if i % 5 == 0 else f"c{i}",
                None if i % 6 == 0 else f"Å {i} — ü",
                None if i % 4 == 0 else i - 20,
                None if i % 9 == 0 else 2**40 + i,
                None if i % 3 == 0 else -i,
                None if i % 8 == 0 else float(rng.normal() * 10.0 ** rng.integers(-8, 8)),
                float("nan") if i % 2 == 0 else float(rng.normal()),
                None if i % 10 == 0 else bool(i % 3),
                None if i % 11 == 0 else rng.normal(size=3),
                None if i % 12 == 0 else rng.normal(size=int(rng.integers(0, 5))).astype(np.float32),
                special[i] if i < len(special) else float(rng.normal() * 10.0 ** rng.integers(-300, 300)),
                mixed[i % len(mixed)],
                counts[i % len(counts)],
                float(i) if i % 3 else float(rng.normal() * 10.0 ** rng.integers(-300, 300)),
                (i - 20) * 10**12,
            ]
        )
    document = new_document()
    table = add_table(results_resource(document, "OK"), document, columns, rows)
    assert isinstance(table, ResultTable)
    ours = serialise(document)
    assert table._pending is not None  # written from the rows as given
    reference = table.array  # the record array astropy's own writer writes from
    table.__class__ = TableElement
    table.array = reference
    assert ours == astropy_bytes(document)
    assert ours.count(b"<TR>") == 40 and b"<TD/>" in ours and b"&lt;star &amp; 1&gt;" in ours


def astropy_bytes(document) -> bytes:
    """The document as astropy's own (Python) writer writes it."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document.to_xml(buffer, _debug_python_based_parser=True)
    return buffer.getvalue()


def test_cached_fields_and_params_write_what_astropy_elements_write():
    """FIELDs and PARAMs copied from cached prototypes and written from cached XML, against elements
    astropy builds and writes itself: every attribute, values that need escaping, empty and NaN
    values, units, descriptions long enough to wrap, three depths, and written twice (cache hits)."""
    import warnings

    from astropy.io.votable.tree import Field, Group, Param, Resource, TableElement

    from service.votable import (
        Column,
        InputParam,
        add_table,
        input_param,
        new_document,
        param,
        results_resource,
        serialise,
    )

    long_text = "A description long enough to be wrapped over several lines by the writer, " * 4 + "& <end>"
    params = [
        dict(name="query", value='m0072 <"&"> \u00e5', ucd="meta.id", description="The ID searched with"),
        dict(name="K", value="10", datatype="int", arraysize=None, ucd="meta.number", description=long_text),
        dict(
            name="rv",
            value="NaN",
            datatype="double",
            arraysize=None,
            unit="km/s",
            ucd="spect.dopplerVeloc.opt",
        ),
        dict(name="x", value="1.25e-07", datatype="double", arraysize=None, unit="m", utype="ssa:Char.x"),
        dict(name="flag", value="true", datatype="boolean", arraysize=None, ucd="meta.code"),
        dict(name="INPUT:POS", value="", datatype="double", arraysize="2", xtype="point", unit="deg"),
        dict(name="ref", value="a", ref="pubdid", description="refers"),
        dict(name="empty", value=""),
    ]
    columns = [
        Column("rank", "int", ucd="meta.number", description="1 = most similar"),
        Column("did", "char", "*", ucd="meta.ref.ivoid", utype="ssa:Curation.PublisherDID", ID="pubdid"),
        Column("x", "double", unit="deg", ucd="pos.eq.ra;meta.main", description=long_text),
        Column("logg", "double", unit="log(cm.s**-2)", ucd="phys.gravity"),
        Column("z", "float", "16", ucd="src.var", xtype="array"),
    ]

    def reference_param(document, name, value="", datatype="char", arraysize="*", **attrs):
        description = attrs.pop("description", None)
        element = Param(document, name=name, value=value, datatype=datatype, arraysize=arraysize, **attrs)
        element.ID = None
        if description:
            element.description = description
        return element

    def reference_field(document, column):
        element = Field(
            document,
            **{
                key: getattr(column, key) for key in ("name", "datatype", "arraysize", "unit", "ucd", "utype")
            },
            xtype=column.xtype,
            ID=column.ID,
        )
        if column.description:
            element.description = column.description
        return element

    def build(reference: bool, with_input: bool = False) -> bytes:
        document = new_document()
        resource = results_resource(document, "OK")
        table = add_table(
            resource, document, columns, [[1, "a", 1.5, 4.4, [0.5] * 16], [2, None, None, None, None]]
        )
        if reference:
            for i, column in enumerate(columns):
                table.fields[i] = reference_field(document, column)
        table.fields[2].ref = "pubdid"  # a copy changed after it was made writes its own XML
        make = (
            (lambda **spec: reference_param(document, **spec))
            if reference
            else (lambda **spec: param(document, **spec))
        )
        table.params.extend(make(**spec) for spec in params)
        resource.params.extend(make(**spec) for spec in params[:3])
        meta = Resource(type="meta")
        group = Group(document, name="inputParams")
        group.ID = None
        group.entries.extend(make(**spec) for spec in params)
        if with_input:  # VALUES: written by astropy itself
            group.entries.append(
                input_param(document, InputParam("MAXREC", "int", None, minimum="0", maximum="9"))
            )
        meta.groups.append(group)
        document.resources.append(meta)
        if reference:  # astropy's own table and writer
            rows = table.array
            table.__class__ = TableElement
            table.array = rows
            return astropy_bytes(document)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return serialise(document)

    ours = build(reference=False)
    assert build(reference=False) == ours  # written from the cache
    assert ours == build(reference=True)
    # astropy escapes a char PARAM's value twice (its converter, then the attribute): kept as astropy has it
    assert ours.count(b"<PARAM") == 2 * len(params) + 3 and b"&amp;lt;&quot;&amp;amp;&quot;" in ours
    assert ours.count(b'ref="pubdid"') == 1 + 2  # the FIELD changed above, and the PARAM "ref" twice
    with_input = build(reference=False, with_input=True)
    assert (
        b'<MAX inclusive="yes" value="9"/>' in with_input
        and with_input.count(b"<PARAM") == ours.count(b"<PARAM") + 1
    )


def test_a_prewritten_descriptor_writes_what_astropy_writes():
    """A descriptor given to every answer as the XML written for it once: the same bytes as the
    descriptor built afresh and written by astropy, in each of two answers (the second from the cache)."""
    from service.votable import (
        Column,
        InputParam,
        add_table,
        new_document,
        prewritten,
        results_resource,
        serialise,
        service_descriptor,
    )

    def build(document):
        inputs = [InputParam("ID", ref="did", description="A <DID> & more"), InputParam("K", "int", None)]
        return service_descriptor(document, "svc", "http://x/links?a=1&b=2", "Text " * 40, inputs, name="s")

    def answer(fresh: bool) -> bytes:
        document = new_document()
        add_table(results_resource(document), document, [Column("did", "char", "*", ID="did")], [["a"]])
        key = ("test-descriptor", "http://x/links?a=1&b=2")
        document.resources.append(build(document) if fresh else prewritten(document, key, build))
        if fresh:
            table = document.resources[0].tables[0]
            rows = table.array
            table.__class__ = TableElement
            table.array = rows
            return astropy_bytes(document)
        return serialise(document)

    from astropy.io.votable.tree import TableElement

    reference = answer(fresh=True)
    assert answer(fresh=False) == reference == answer(fresh=False)
    assert reference.count(b'<RESOURCE ID="svc"') == 1 and b"links?a=1&amp;" in reference
