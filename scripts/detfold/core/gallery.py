"""Contact sheets: a grid of image crops with boxes (COCO ``xywh_abs``) drawn on them and a caption
under each, for the audit's findings and the error analysis. The two differ only in their :class:`Look`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageOps

from detfold.core.io import atomic_open

if TYPE_CHECKING:
    from detfold.audit.checks import Finding
    from detfold.core.coco import Coco

TILE = 160  #: px, square tile per item
COLUMNS = 6
MAX_TILES = 36  #: items per sheet (the CSV and JSON files have them all)
BOX_COLOUR = (255, 0, 0)  #: the audit's offending box: red
GT_COLOUR = (0, 190, 0)  #: the analysis's ground truth: green
PRED_COLOUR = (255, 40, 0)  #: the analysis's prediction: red
RELATED_COLOUR = (0, 200, 255)  #: the other box of a pair (duplicate, cross-class overlap): cyan
LINE_PX = 11  #: between two caption lines

Colour = tuple[int, int, int]
Box = Sequence[float]


@dataclass(frozen=True)
class Look:
    """How a sheet's tiles are drawn: ``caption_h`` px of caption under each tile, its first
    line ``caption_top`` px below the tile, each line cut to ``max_chars`` (None: not cut); a
    crop smaller than the tile is enlarged to fit it (``enlarge``) or left as it is."""

    caption_h: int
    caption_top: int
    max_chars: int | None
    enlarge: bool


AUDIT_LOOK = Look(caption_h=14, caption_top=0, max_chars=None, enlarge=False)
ANALYSIS_LOOK = Look(caption_h=24, caption_top=1, max_chars=26, enlarge=True)


@dataclass
class Tile:
    """One item: an image file, its boxes as layers drawn in order (colour, boxes), the box to
    crop around (None: the whole image) and the caption's lines."""

    source: Path
    layers: Sequence[tuple[Colour, Sequence[Box]]]
    caption: Sequence[str]
    focus: Box | None = None


def crop_around(box_xywh: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop around a box: its longer side (at least 20 px) on every side, within the image;
    (left, upper, right, lower) as PIL's ``crop`` takes it. A box wholly outside the image
    gets the image's strip nearest to it (at least 1 px)."""
    x, y, w, h = box_xywh
    margin = max(w, h, 20)
    left = min(max(0, int(x - margin)), width - 1)
    upper = min(max(0, int(y - margin)), height - 1)
    return (
        left,
        upper,
        max(left + 1, min(width, int(x + w + margin) + 1)),
        max(upper + 1, min(height, int(y + h + margin) + 1)),
    )


def union(boxes: Sequence[Box]) -> list[float]:
    """The smallest ``xywh`` box holding every one of ``boxes`` (at least one)."""
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def _tile_image(tile: Tile, look: Look) -> Image.Image:
    """The tile's image with its boxes drawn, cropped, fitted into TILE x TILE."""
    try:
        with Image.open(tile.source) as handle:
            img = handle.convert("RGB")
    except OSError as err:
        raise ValueError(f"gallery: cannot read image {tile.source}: {err}") from err
    draw = ImageDraw.Draw(img)
    for colour, boxes in tile.layers:
        for x, y, w, h in boxes:
            draw.rectangle([x, y, x + max(w, 1), y + max(h, 1)], outline=colour, width=2)
    crop = img.crop((0, 0, img.width, img.height) if tile.focus is None else crop_around(tile.focus, *img.size))
    if look.enlarge:
        return ImageOps.contain(crop, (TILE, TILE))
    crop.thumbnail((TILE, TILE))
    return crop


def contact_sheet(tiles: Sequence[Tile], path: str | Path, look: Look) -> None:
    """Draw ``tiles`` row by row into one PNG at ``path`` (written atomically); no tiles: a
    sheet that says so (a blank picture would look like a failed one)."""
    rows = max(1, (len(tiles) + COLUMNS - 1) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + look.caption_h)), "white")
    pen = ImageDraw.Draw(sheet)
    if not tiles:
        pen.rectangle([0, 0, 2 * TILE - 1, TILE - 1], fill=(225, 225, 225), outline="black")
        pen.text((8, TILE // 2 - 6), f"nothing of this kind ({Path(path).stem})", fill="black")
    for n, tile in enumerate(tiles):
        col, row = n % COLUMNS, n // COLUMNS
        top = row * (TILE + look.caption_h)
        sheet.paste(_tile_image(tile, look), (col * TILE, top))
        for line, text in enumerate(tile.caption):
            xy = (col * TILE + 2, top + TILE + look.caption_top + LINE_PX * line)
            pen.text(xy, text[: look.max_chars] if look.max_chars else text, fill="black")
    with atomic_open(path, "wb") as handle:
        sheet.save(handle, format="PNG")


def finding_tile(finding: Finding, anns: Mapping[int, dict[str, Any]], images_dir: str | Path) -> Tile:
    """An audit finding's tile: its box in red (the related box of a pair in cyan), cropped
    around the box; an image finding shows the whole image."""
    label = finding.ann_id if finding.ann_id is not None else f"img {finding.image_id}"
    caption = [f"{label} {finding.category} {finding.value:g}"]
    source = Path(images_dir) / finding.file_name
    if finding.ann_id is None:
        return Tile(source, [], caption)
    box = anns[finding.ann_id]["bbox"]
    related = [anns[finding.related_ann_id]["bbox"]] if finding.related_ann_id is not None else []
    return Tile(source, [(RELATED_COLOUR, related), (BOX_COLOUR, [box])], caption, box)


def write_findings_gallery(
    findings: Sequence[Finding],
    cocos: Mapping[str, Coco],
    images_dirs: Mapping[str, str | Path | None],
    out_dir: str | Path,
) -> list[Path]:
    """The audit's gallery: one PNG per check (``out_dir/<check>.png``) of its first
    :data:`MAX_TILES` findings. Returns the written files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    anns = {split: {a["id"]: a for a in c.annotations} for split, c in cocos.items()}
    # a split with findings has an image folder (its files were checked before the audit)
    folders = {split: folder for split, folder in images_dirs.items() if folder is not None}
    by_check: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_check[f.check].append(f)
    written = []
    for check, items in sorted(by_check.items()):
        tiles = [finding_tile(f, anns[f.split], folders[f.split]) for f in items[:MAX_TILES]]
        contact_sheet(tiles, out / f"{check}.png", AUDIT_LOOK)
        written.append(out / f"{check}.png")
    return written
