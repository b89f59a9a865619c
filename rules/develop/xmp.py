"""Reader for Lightroom Classic / Camera Raw XMP develop presets.

An XMP preset (Lightroom 7.3+, Camera Raw) is ``x:xmpmeta > rdf:RDF >
rdf:Description`` whose settings live in the Camera Raw namespace
``http://ns.adobe.com/camera-raw-settings/1.0/`` (prefix ``crs``). Adobe
writes scalars as attributes of ``rdf:Description``
(``crs:Exposure2012="+0.50"``); other valid XMP writers use child elements
(``<crs:Exposure2012>+0.50</crs:Exposure2012>``); both are read. Curves are
``rdf:Seq`` lists of ``"x, y"`` items, localised texts such as ``crs:Name``
are ``rdf:Alt`` lists read in their ``x-default`` language. Nested structures
(``crs:Look`` profiles, local-correction masks) are not applied and are
reported as unknown keys.

Parsing uses ``defusedxml`` with DTDs forbidden, so entity-expansion bombs
and external entities are refused before any expansion happens.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException, DTDForbidden

from rules.develop.preset_types import Preset, PresetError, check_size, make_preset

CRS = "http://ns.adobe.com/camera-raw-settings/1.0/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class _Nested:
    """Placeholder for a structured value (profile, mask) that is not applied."""

    def __repr__(self) -> str:
        return "<nested structure>"


NESTED = _Nested()


def read_xmp(data: bytes, source: str = "<bytes>", *, name: str | None = None) -> Preset:
    """Parse an XMP develop preset.

    Parameters
    ----------
    data : bytes
        The file's contents.
    source : str
        Where the bytes came from (a path), used in messages and kept in the
        result.
    name : str or None
        Pseudo-user name; ``None`` derives it from ``crs:Name``.

    Returns
    -------
    Preset
        Settings, unknown keys, source and title (``crs:Name``).

    Raises
    ------
    PresetError
        For malformed or truncated XML, a DTD (entity-expansion bombs,
        external entities), no ``rdf:Description``, or no setting in the
        ``crs`` namespace. The message is one line naming ``source``.
    """
    check_size(data, source)
    root = _parse(data, source)
    descriptions = [description for rdf in root.iter(f"{{{RDF}}}RDF")
                    for description in rdf.findall(f"{{{RDF}}}Description")]
    if not descriptions:
        raise PresetError(f"{source}: no rdf:Description element; not an XMP preset")
    mapping = {}
    for description in descriptions:
        for attribute, value in description.attrib.items():
            if attribute.startswith(f"{{{CRS}}}"):
                mapping[attribute[len(CRS) + 2:]] = value
        for child in description:
            if child.tag.startswith(f"{{{CRS}}}"):
                mapping[child.tag[len(CRS) + 2:]] = _element_value(child)
    if not mapping:
        raise PresetError(f"{source}: no Camera Raw settings (nothing in the crs namespace {CRS})")
    title = mapping.get("Name", "")
    return make_preset(mapping, title=title if isinstance(title, str) else "", name=name,
                       source=source)


def _parse(data: bytes, source: str) -> Element:
    try:
        return SafeElementTree.fromstring(data, forbid_dtd=True)
    except DTDForbidden:
        raise PresetError(f"{source}: the XML declares a DTD, which presets never need; refused "
                          "to guard against entity-expansion bombs and external entities") from None
    except DefusedXmlException as error:
        raise PresetError(f"{source}: unsafe XML refused ({type(error).__name__})") from None
    except SafeElementTree.ParseError as error:
        raise PresetError(f"{source}: malformed XML: {error}") from None


def _element_value(element: Element) -> object:
    """The value of a ``crs:`` child element: text, a list, or :data:`NESTED`."""
    container = next((child for child in element
                      if child.tag in (f"{{{RDF}}}Alt", f"{{{RDF}}}Seq", f"{{{RDF}}}Bag")), None)
    if container is not None:
        items = [item for item in container if item.tag == f"{{{RDF}}}li"]
        if any(len(item) or set(item.attrib) - {XML_LANG} for item in items):
            return NESTED
        if container.tag == f"{{{RDF}}}Alt":
            default = next((item for item in items if item.get(XML_LANG) == "x-default"),
                           items[0] if items else None)
            return (default.text or "").strip() if default is not None else ""
        return [(item.text or "").strip() for item in items]
    if len(element) or element.attrib:
        return NESTED
    return (element.text or "").strip()
