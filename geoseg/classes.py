"""Class schema: ids, names and colours of the output classes, and the output nodata value.

Torch-free. The schema travels inside checkpoints (as JSON) and is written into
class rasters (colour table, band description, tags) and polygon attributes.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from geoseg.errors import UsageError

#: Output nodata of class rasters. Never a class id.
DEFAULT_NODATA = 255
#: The GeoTIFF metadata tag a class raster carries its schema in (JSON).
SCHEMA_TAG = "geoseg_classes"

# A qualitative palette (Tableau 10) for the first classes; further colours are
# spread around the hue circle.
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


# Conventional land-cover colours for common class names: the first group with a word of the name wins.
# A keyword matches a whole word of the name (words split at anything not a letter or digit; a plural "s"
# or "es" allowed), or, ending in "*", any word that starts with it: "sea" is not "seasonal", nor
# "road" "broadleaf".
_NAMED = [
    (("water", "river", "lake", "sea", "reservoir", "ocean", "pond"), (31, 120, 220)),
    (("wetland", "marsh", "swamp", "mangrove*", "bog"), (90, 170, 170)),
    (("forest*", "tree*", "wood*"), (30, 110, 45)),
    (("shrub*", "bush*", "scrub*"), (120, 150, 60)),
    (("grass*", "pasture*", "meadow*", "herb*"), (150, 205, 90)),
    (("fallow", "fallen", "dry"), (215, 130, 50)),
    (("cleared", "bare", "soil", "sand", "rock", "barren"), (225, 200, 150)),
    (("crop*", "cultivat*", "agri*", "field*", "corn", "maize", "soy*", "wheat", "rice", "cotton", "cereal*"),
     (235, 200, 40)),
    (("urban", "built", "building*", "artificial", "village*", "developed", "settlement*", "road*", "city",
      "cities"), (200, 50, 50)),
    (("cloud*", "snow", "ice"), (235, 235, 245)),
    (("boundary", "boundaries", "edge*"), (40, 40, 40)),
    (("background", "other*", "unknown"), (170, 170, 170)),
]


def _named_colour(name: str) -> tuple[int, int, int] | None:
    import re

    words = [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]
    for keys, colour in _NAMED:
        for k in keys:
            if k.endswith("*"):
                if any(w.startswith(k[:-1]) for w in words):
                    return colour
            elif any(w in (k, k + "s", k + "es") for w in words):
                return colour
    return None


def default_colour(index: int, name: str | None = None) -> tuple[int, int, int]:
    """Colour for the ``index``-th class named ``name``.

    Common land-cover names get their conventional colour (water blue, forest green,
    crops yellow, built-up red...); others get Tableau 10, then evenly spread hues.
    :func:`default_colours` gives a whole schema's, each one distinct.
    """
    if name:
        named = _named_colour(name)
        if named is not None:
            return named
    if index < len(_PALETTE):
        return _PALETTE[index]
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.9)
    return (int(r * 255), int(g * 255), int(b * 255))


def default_colours(names: Sequence[str]) -> list[tuple[int, int, int]]:
    """Colours for classes ``names``, each told apart from the others: a conventional colour for a
    common name (:data:`_NAMED`), in a lighter or darker shade when an earlier class took it (corn,
    soybeans and winter wheat were one yellow); other names get the first palette colour not close to
    one already used (a class "land" beside "water" got a blue a hair from water's)."""
    named = [_named_colour(n) if n else None for n in names]
    seen: dict[tuple[int, int, int], int] = {}
    out: list[tuple[int, int, int] | None] = []
    for c in named:  # first the conventional colours, so that the others keep clear of all of them
        if c is None:
            out.append(None)
            continue
        seen[c] = seen.get(c, 0) + 1
        out.append(_shade(c, seen[c] - 1))
    k = 0
    for i, c in enumerate(out):
        if c is not None:
            continue
        # the next palette colour clear of those taken; among many classes there may be none within a bounded
        # look ahead (a fixed saturation and value hold ~25 colours 60 apart): then simply the next one
        for ahead in range(32):
            if all(sum((a - b) ** 2 for a, b in zip(default_colour(k + ahead), u)) > 60 ** 2 for u in out if u):
                k += ahead
                break
        out[i] = default_colour(k)
        k += 1
    return [c for c in out if c is not None]


def _shade(rgb: tuple[int, int, int], n: int) -> tuple[int, int, int]:
    """The ``n``-th shade of ``rgb``: itself, then alternately darker and lighter, hue kept."""
    if n == 0:
        return rgb
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    step = (n + 1) // 2 * 0.22
    v2 = max(0.25, v - step) if n % 2 else min(1.0, v + step)
    s2 = s if n % 2 else max(0.25, s - step)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s2, v2))  # type: ignore[return-value]


@dataclass(frozen=True)
class ClassInfo:
    """One output class.

    Attributes:
        id: value written in the class raster (0..254).
        name: human-readable name.
        colour: RGB triple, 0-255 each.
    """

    id: int
    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class ClassSchema:
    """The ordered classes a model predicts, plus the output nodata value.

    The model's output channel ``i`` is class ``classes[i]``; its raster value is
    ``classes[i].id``. Ids are unique, in 0..254, and never equal to ``nodata``.
    """

    classes: tuple[ClassInfo, ...]
    nodata: int = DEFAULT_NODATA
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise UsageError("a class schema needs at least one class")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise UsageError(f"class ids must be unique, got {ids}")
        for c in self.classes:
            if not 0 <= c.id <= 254:
                raise UsageError(f"class id {c.id} ({c.name!r}) is outside 0..254")
            if c.id == self.nodata:
                raise UsageError(f"class id {c.id} equals the output nodata value {self.nodata}")
        if not 0 <= self.nodata <= 255:
            raise UsageError(f"nodata {self.nodata} is outside 0..255")

    # ------------------------------------------------------------------ build
    @classmethod
    def from_names(cls, names: Sequence[str], ids: Sequence[int] | None = None,
                   nodata: int = DEFAULT_NODATA) -> "ClassSchema":
        """Schema with ids ``0..n-1`` (or ``ids``) and default colours."""
        ids = list(range(len(names))) if ids is None else list(ids)
        if len(ids) != len(names):
            raise UsageError(f"{len(names)} class names but {len(ids)} class ids")
        return cls(tuple(ClassInfo(int(i), str(n), c)
                         for i, n, c in zip(ids, names, default_colours([str(n) for n in names]))), nodata)

    @classmethod
    def default(cls, num_classes: int) -> "ClassSchema":
        """Schema named ``class_0 .. class_{n-1}``."""
        return cls.from_names([f"class_{i}" for i in range(num_classes)])

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def name_of(self, class_id: int) -> str:
        for c in self.classes:
            if c.id == class_id:
                return c.name
        return f"class_{class_id}"

    def lookup_table(self) -> "Any":
        """uint8 array mapping model channel index -> raster class id."""
        import numpy as np

        return np.asarray(self.ids, dtype=np.uint8)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table: class colours, nodata transparent black."""
        cmap = {c.id: (*c.colour, 255) for c in self.classes}
        cmap[self.nodata] = (0, 0, 0, 0)
        return cmap

    def category_names(self) -> list[str]:
        """GDAL category names: entry ``v`` names raster value ``v`` (``""`` for values that are no class).

        The list stops at the largest class id, so nodata (255) is never a category.
        """
        names = [""] * (max(self.ids) + 1)
        for c in self.classes:
            names[c.id] = c.name
        return names

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "nodata": self.nodata,
            "classes": [{"id": c.id, "name": c.name, "colour": list(c.colour)} for c in self.classes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassSchema":
        try:
            classes = tuple(
                ClassInfo(int(c["id"]), str(c["name"]),
                          tuple(int(v) for v in c.get("colour", default_colour(k, str(c["name"]))))[:3])  # type: ignore[arg-type]
                for k, c in enumerate(d["classes"])
            )
            return cls(classes, int(d.get("nodata", DEFAULT_NODATA)))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"malformed class schema: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ClassSchema":
        return cls.from_dict(json.loads(text))


def schema_from_tags(tags: Mapping[str, str]) -> "ClassSchema | None":
    """The class schema a raster carries in its :data:`SCHEMA_TAG` tag; None without one, or for a
    foreign or malformed tag (not fatal: the raster is still a class raster)."""
    text = tags.get(SCHEMA_TAG)
    if not text:
        return None
    try:
        return ClassSchema.from_json(text)
    except ValueError:  # UsageError and json's errors are ValueErrors
        return None


def category_names(ds: Any) -> dict[int, str]:
    """``{value: name}`` of band 1 from GDAL's category names or raster attribute table (the ``.aux.xml``
    beside the file, where GDAL, QGIS and geoseg keep them); empty without them. For a class raster with
    no geoseg tag (one exported or made by another tool), so that its classes keep their names."""
    import xml.etree.ElementTree as ET

    aux = next((f for f in getattr(ds, "files", []) if str(f).lower().endswith(".aux.xml")), None)
    if aux is None:
        return {}
    try:
        root = ET.parse(aux).getroot()
    except (OSError, ET.ParseError):
        return {}
    band = next((b for b in root.iter("PAMRasterBand") if b.get("band", "1") == "1"), None)
    if band is None:
        return {}
    cats = band.find("CategoryNames")
    if cats is not None:
        found = {i: (c.text or "").strip() for i, c in enumerate(cats.findall("Category"))}
        return {i: n for i, n in found.items() if n}
    rat = band.find("GDALRasterAttributeTable")
    if rat is None:
        return {}
    usage = {int(f.get("index", -1)): ((f.findtext("Name") or "").lower(), f.findtext("Usage") or "")
             for f in rat.findall("FieldDefn")}
    name_col = next((i for i, (_, u) in usage.items() if u == "2"), None)
    value_col = next((i for i, (n, u) in usage.items() if u == "5" or n == "value"), None)
    if name_col is None or value_col is None:
        return {}
    out: dict[int, str] = {}
    for row in rat.findall("Row"):
        cells = [c.text or "" for c in row.findall("F")]
        try:
            value, name = int(float(cells[value_col])), cells[name_col].strip()
        except (IndexError, ValueError):
            continue
        if name:
            out[value] = name
    return out


def parse_class_names(items: Iterable[str] | None) -> dict[int, str] | None:
    """Parse ``["1=corn", "5=soy"]`` or ``["corn,soy"]`` into ``{id: name}``.

    A plain comma list gives ids 0, 1, 2...
    """
    if not items:
        return None
    out: dict[int, str] = {}
    flat: list[str] = []
    for it in items:
        flat.extend(p.strip() for p in it.split(",") if p.strip())
    if all("=" in p for p in flat):
        for p in flat:
            k, v = p.split("=", 1)
            try:
                out[int(k)] = v.strip()
            except ValueError:
                raise UsageError(f"class name entry {p!r} must look like ID=NAME") from None
        return out
    if any("=" in p for p in flat):
        raise UsageError("mix of ID=NAME and plain names in class names; use one form")
    return {i: n for i, n in enumerate(flat)}
