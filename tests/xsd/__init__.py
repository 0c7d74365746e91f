"""Offline XSD validation of the XML documents we serve (VOSI, TAPRegExt, UWS, SSA).

The IVOA schemas beside this file import each other by remote URL; a resolver answers those
URLs with the local copies (README.md names their sources), so validation never touches the
network. :func:`validate` checks a document against the union of all vendored schemas, as
taplint does, so ``xsi:type="tr:TableAccess"`` inside a VOSI capabilities document is checked
against TAPRegExt.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lxml import etree

HERE = Path(__file__).resolve().parent

#: Namespace → local schema file, in import order (a namespace imported twice keeps the first).
SCHEMAS = {
    "http://www.w3.org/XML/1998/namespace": "xmlnamespace.xsd",
    "http://www.w3.org/1999/xlink": "xlink.xsd",
    "http://www.ivoa.net/xml/VOResource/v1.0": "VOResource-v1.1.xsd",
    "http://www.ivoa.net/xml/STC/stc-v1.30.xsd": "stc-v1.30.xsd",
    "http://www.ivoa.net/xml/VODataService/v1.1": "VODataService-v1.2.xsd",
    "http://www.ivoa.net/xml/TAPRegExt/v1.0": "TAPRegExt-v1.0-Erratum1.xsd",
    "http://www.ivoa.net/xml/VOSICapabilities/v1.0": "VOSICapabilities-v1.0.xsd",
    "http://www.ivoa.net/xml/VOSIAvailability/v1.0": "VOSIAvailability-v1.0.xsd",
    "http://www.ivoa.net/xml/VOSITables/v1.0": "VOSITables-v1.1.xsd",
    "http://www.ivoa.net/xml/UWS/v1.0": "UWS-v1.1.xsd",
}
#: Optional schemas, used when their files are present.
OPTIONAL = {
    "http://www.ivoa.net/xml/SSA/v1.1": "SSA-v1.1.xsd",
}
#: Remote schemaLocations used inside the vendored files → local file.
LOCATIONS = {
    "http://www.ivoa.net/xml/VOResource/v1.0": "VOResource-v1.1.xsd",
    "http://www.ivoa.net/xml/VOResource/VOResource-v1.0.xsd": "VOResource-v1.1.xsd",
    "http://www.ivoa.net/xml/VODataService/v1.1": "VODataService-v1.2.xsd",
    "http://www.ivoa.net/xml/STC/stc-v1.30.xsd": "stc-v1.30.xsd",
    "http://hea-www.harvard.edu/~arots/nvometa/v1.30/stc-v1.30.xsd": "stc-v1.30.xsd",
    "http://www.ivoa.net/xml/Xlink/xlink.xsd": "xlink.xsd",
    "http://www.w3.org/2001/xml.xsd": "xmlnamespace.xsd",
    "http://vo.ari.uni-heidelberg.de/docs/schemata/VOResource-v1.0.xsd": "VOResource-v1.1.xsd",
}


class LocalResolver(etree.Resolver):
    """Answer the remote schema URLs the IVOA files import with the vendored copies."""

    def resolve(self, url, pubid, context):
        name = LOCATIONS.get(url) or (Path(url).name if (HERE / Path(url).name).is_file() else None)
        if name and (HERE / name).is_file():
            return self.resolve_filename(str(HERE / name), context)
        raise OSError(f"schema {url} is not vendored in {HERE}; validation stays offline")


@cache
def schema() -> etree.XMLSchema:
    """One schema importing every vendored namespace."""
    namespaces = dict(SCHEMAS)
    namespaces.update({ns: f for ns, f in OPTIONAL.items() if (HERE / f).is_file()})
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(HERE / name).as_uri()}"/>'
        for ns, name in namespaces.items()
    )
    driver = f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">{imports}</xs:schema>'
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(LocalResolver())
    return etree.XMLSchema(etree.fromstring(driver.encode(), parser, base_url=str(HERE) + "/"))


def validate(document: bytes) -> list[str]:
    """Schema errors of an XML document (empty when valid)."""
    checker = schema()
    tree = etree.fromstring(document, etree.XMLParser(no_network=True))
    if checker.validate(tree):
        return []
    return [f"line {e.line}: {e.message}" for e in checker.error_log]
