"""Region annotations of whole-slide images: QuPath GeoJSON, ASAP XML, Aperio ImageScope XML -> shapely.

Every reader returns the same thing: the file's regions, each a class name and a valid shapely
(Multi)Polygon in level-0 pixels (origin top left, x right, y down, as QuPath, ASAP, ImageScope
and OpenSlide count them), plus notes on what was left out or repaired. The GeoJSON reader also
reads what `pathnas-infer` writes (tile features with a classification), so a run's output can
be corrected in QuPath and come back as training data.

- GeoJSON: a FeatureCollection, a bare array of features, or one feature; ``objectType``
  annotation or tile (QuPath's detections and cells are not regions: left out, counted); the
  class from ``classification.name`` (a plain string is accepted too); Polygon, MultiPolygon
  (with holes) and the polygons of a GeometryCollection; points and lines are left out.
- ASAP (Camelyon, TIGER): ``Annotation`` elements, the class in ``PartOfGroup``, the vertices in
  ``Coordinates/Coordinate`` ordered by ``Order``; dots and point sets are left out.
- ImageScope: ``Annotation`` elements, the class in its ``Name`` (else its first attribute's
  value), one ``Region`` per shape; a region with ``NegativeROA="1"`` is a hole cut from the
  annotation's other regions; ellipses (Type 2) from their bounding corners; rulers and arrows
  are left out.

XML comes from users: it is parsed with defusedxml, which refuses entity declarations (billion
laughs) and external references instead of expanding or following them.

A self-intersecting polygon is repaired by shapely's ``make_valid(method="structure")``: the area
its outer ring encloses (a figure eight becomes its two loops), less its holes; the note names the
feature and where it crossed itself. ``repair=False`` refuses it instead, naming the feature.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box, shape

from ..errors import InvalidFileError

ANNOTATION_EXTENSIONS = (".geojson", ".json", ".xml")
GEOJSON_REGION_TYPES = {"annotation", "tile", None}  # None: plain GeoJSON from tools that set no objectType
REPAIR_RULE = "shapely make_valid (structure): the area the outer ring encloses, less the holes"


class AnnotationError(InvalidFileError):
    """An annotation file that cannot be used; the message names the file and the position in it."""


@dataclass(frozen=True)
class Region:
    """One annotated area: its class and its valid (Multi)Polygon in level-0 pixels."""

    name: str
    geometry: Polygon | MultiPolygon
    feature: int  # the feature's (element's) index in its file, from 0
    path: Path


@dataclass
class Annotations:
    """What one file holds: its regions and notes on what was left out or repaired (one line each)."""

    path: Path
    regions: list[Region] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unclassified: int = 0
    outside: int = 0  # regions wholly outside the slide, left out (``within``)

    def add(self, name: str | None, geometry, feature: int) -> bool:
        """Keep a region (one without a class is counted, not kept); False when it has no area."""
        if geometry is None:
            return False
        if name is None:
            self.unclassified += 1
        else:
            self.regions.append(Region(name, geometry, feature, self.path))
        return True

    def said(self, skipped: int, skipped_what: str, unclassified_what: str) -> "Annotations":
        """These annotations, with a note on what was left out (``skipped`` shapes, the regions without a class)."""
        if skipped:
            self.notes.append(f"{self.path}: {skipped} {skipped_what} left out")
        if self.unclassified:
            self.notes.append(f"{self.path}: {self.unclassified} {unclassified_what} left out")
        return self

    def classes(self) -> list[str]:
        return sorted({r.name for r in self.regions})

    def shifted(self, dx: float, dy: float) -> "Annotations":
        """The same regions moved by (dx, dy): QuPath's origin where a slide's level 0 has an offset (MRXS)."""
        if not dx and not dy:
            return self
        moved = [Region(r.name, shapely.transform(r.geometry, lambda xy: xy + (dx, dy)), r.feature, r.path)
                 for r in self.regions]
        return Annotations(self.path, moved, self.notes, self.unclassified, self.outside)

    def within(self, width: float, height: float) -> "Annotations":
        """Regions clipped to the slide; one wholly outside is left out with a note naming it."""
        frame = box(0, 0, width, height)
        kept, notes, outside = [], list(self.notes), self.outside
        for r in self.regions:
            if frame.contains(r.geometry):
                kept.append(r)
                continue
            inside = _polygonal(r.geometry.intersection(frame))
            if inside is None:
                outside += 1
                x0, y0, x1, y1 = r.geometry.bounds
                notes.append(f"{self.path}: feature {r.feature} ({r.name}) lies outside the slide ({width:.0f}x"
                             f"{height:.0f} px; it spans x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}): left out")
            else:
                notes.append(f"{self.path}: feature {r.feature} ({r.name}) reaches beyond the slide: clipped to it")
                kept.append(Region(r.name, inside, r.feature, r.path))
        return Annotations(self.path, kept, notes, self.unclassified, outside)


def _polygonal(geometry) -> Polygon | MultiPolygon | None:
    """The polygons of any geometry (a repair or a clip may add lines and points), or None when it has no area."""
    parts = [g for g in shapely.get_parts(geometry) if isinstance(g, (Polygon, MultiPolygon)) and g.area > 0]
    parts = [p for g in parts for p in shapely.get_parts(g)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _checked(geometry, where: str, notes: list[str], repair: bool):
    """A valid polygonal geometry, repaired (with a note) or refused; None when it encloses no area."""
    coords = shapely.get_coordinates(geometry)
    if coords.size and not bool(shapely.is_empty(geometry)) and not math.isfinite(float(coords.sum())):
        raise AnnotationError(f"{where}: coordinates that are not finite numbers")
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        if not repair:
            raise AnnotationError(f"{where}: invalid polygon ({reason}); fix it in the annotation tool, or let "
                                  f"`data tiles` repair it ({REPAIR_RULE})")
        geometry = shapely.make_valid(geometry, method="structure")
        notes.append(f"{where}: invalid polygon ({reason}), repaired: {REPAIR_RULE}")
    return _polygonal(geometry)


def read_annotations(path: str | Path, repair: bool = True) -> Annotations:
    """The regions of a QuPath GeoJSON, ASAP XML or ImageScope XML file (AnnotationError when it cannot be read)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise AnnotationError(f"{path}: empty file; export the annotations again")
    if path.suffix.lower() == ".xml":
        result = _read_xml(path, data, repair)
    elif path.suffix.lower() in (".geojson", ".json"):
        result = _read_geojson(path, data, repair)
    else:
        raise AnnotationError(f"{path}: not an annotation file (allowed: {', '.join(ANNOTATION_EXTENSIONS)})")
    if not result.regions:
        raise AnnotationError(f"{path}: no classified regions in it" + (
            f" ({result.unclassified} region(s) without a class)" if result.unclassified else "")
            + ("; " + "; ".join(n.removeprefix(f"{path}: ") for n in result.notes[:3]) if result.notes else ""))
    return result


# -- GeoJSON (QuPath, pathnas-infer) --------------------------------------------------------------

def _class_name(properties: dict) -> str | None:
    value = properties.get("classification")
    if isinstance(value, dict):
        value = value.get("name") or (value.get("names") or [None])[0]
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_geojson(path: Path, data: bytes, repair: bool) -> Annotations:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {err.start}); export GeoJSON again") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        features = doc
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection or an array of features")
    out = Annotations(path)
    left_out: dict[str, int] = {}
    for i, feature in enumerate(features):
        where = f"{path}: feature {i}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{where}: not a GeoJSON Feature")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(f"{where}: properties is not an object")
        kind = properties.get("objectType")
        if kind not in GEOJSON_REGION_TYPES:
            left_out[f"objectType {kind}"] = left_out.get(f"objectType {kind}", 0) + 1
            continue
        raw = feature.get("geometry")
        if not isinstance(raw, dict) or raw.get("type") not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            kind = raw.get("type") if isinstance(raw, dict) else "no geometry"
            left_out[f"{kind} (no area)"] = left_out.get(f"{kind} (no area)", 0) + 1
            continue
        try:
            geometry = shape(raw)
        except Exception as err:  # shapely raises several types for malformed coordinates
            raise AnnotationError(f"{where}: malformed {raw.get('type')} coordinates ({type(err).__name__}: "
                                  f"{err})") from None
        if not out.add(_class_name(properties), _checked(geometry, where, out.notes, repair), i):
            left_out["polygons without area"] = left_out.get("polygons without area", 0) + 1
    out.notes += [f"{path}: {n} feature(s) of {what} left out (not regions)" for what, n in sorted(left_out.items())]
    return out.said(0, "", "region(s) without a classification")


# -- XML (ASAP, ImageScope) -------------------------------------------------------------------------

def _parse_xml(path: Path, data: bytes):
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException
    from xml.etree.ElementTree import ParseError

    try:
        return SafeET.fromstring(data)
    except DefusedXmlException as err:
        raise AnnotationError(f"{path}: refused: the XML declares entities or external references "
                              f"({type(err).__name__}); annotation files never need them") from None
    except ParseError as err:
        line, column = getattr(err, "position", (0, 0))
        raise AnnotationError(f"{path}: not well-formed XML at line {line} column {column + 1}") from None


def _number(element, attribute: str, where: str) -> float:
    raw = element.get(attribute)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {attribute}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: {attribute}={raw!r} is not a finite number")
    return value


def _ring(points: list[tuple[float, float]]) -> Polygon | None:
    return Polygon(points) if len(points) >= 3 else None


def _read_xml(path: Path, data: bytes, repair: bool) -> Annotations:
    root = _parse_xml(path, data)
    tag = root.tag.rsplit("}", 1)[-1]
    if tag == "ASAP_Annotations":
        return _read_asap(path, root, repair)
    if tag == "Annotations":
        return _read_imagescope(path, root, repair)
    raise AnnotationError(f"{path}: XML with root <{tag}>; expected ASAP (<ASAP_Annotations>) or Aperio ImageScope "
                          "(<Annotations>)")


def _read_asap(path: Path, root, repair: bool) -> Annotations:
    out = Annotations(path)
    skipped = 0
    for i, annotation in enumerate(root.iter("Annotation")):
        where = f"{path}: annotation {i} ({annotation.get('Name') or 'unnamed'})"
        kind = (annotation.get("Type") or "Polygon").lower()
        if kind in ("dot", "pointset", "point", "measurement"):
            skipped += 1
            continue
        coords = sorted(((_number(c, "Order", where) if c.get("Order") is not None else n,
                          _number(c, "X", where), _number(c, "Y", where))
                         for n, c in enumerate(annotation.iter("Coordinate"))))
        polygon = _ring([(x, y) for _, x, y in coords])
        if polygon is None:
            skipped += 1
            continue
        group = (annotation.get("PartOfGroup") or "").strip()
        if not out.add(group if group not in ("", "None") else None, _checked(polygon, where, out.notes, repair), i):
            skipped += 1
    return out.said(skipped, "annotation(s) without an area (dots, point sets, under 3 points)",
                    "annotation(s) in no group (PartOfGroup)")


def _imagescope_name(annotation) -> str | None:
    name = (annotation.get("Name") or "").strip()
    if not name:
        attribute = annotation.find("Attributes/Attribute")
        name = ((attribute.get("Value") or attribute.get("Name") or "") if attribute is not None else "").strip()
    return name or None


def _read_imagescope(path: Path, root, repair: bool) -> Annotations:
    out = Annotations(path)
    skipped = 0
    for i, annotation in enumerate(root.iter("Annotation")):
        where = f"{path}: annotation {i} (Id {annotation.get('Id', '?')})"
        positive, negative = [], []
        for j, region in enumerate(annotation.iter("Region")):
            rwhere = f"{where}, region {j}"
            kind = region.get("Type", "0")
            points = [(_number(v, "X", rwhere), _number(v, "Y", rwhere)) for v in region.iter("Vertex")]
            if kind == "2" and len(points) >= 2:  # an ellipse, stated by two corners of its bounding box
                (x0, y0), (x1, y1) = points[0], points[1]
                centre = shapely.Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, quad_segs=32)
                polygon = affinity.scale(centre, abs(x1 - x0) / 2, abs(y1 - y0) / 2)
            elif kind in ("0", "1", "5"):  # free hand, rectangle, polygon
                polygon = _ring(points)
            else:  # 3 arrow, 4 ruler: not areas
                polygon = None
            geometry = _checked(polygon, rwhere, out.notes, repair) if polygon is not None else None
            if geometry is None:
                skipped += 1
            else:
                (negative if region.get("NegativeROA") == "1" else positive).append(geometry)
        if not positive:
            continue
        geometry = _polygonal(shapely.difference(shapely.union_all(positive), shapely.union_all(negative))
                              if negative else shapely.union_all(positive))
        if not out.add(_imagescope_name(annotation), geometry, i):
            skipped += 1
    return out.said(skipped, "region(s) without an area (rulers, arrows, under 3 points)",
                    "annotation(s) without a name")
