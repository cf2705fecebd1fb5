"""schemathesis hooks (loaded by the repository's schemathesis.toml): image *content* for the cases
schemathesis generates as valid.

The OpenAPI schema states every structural rule of the API, but no schema can say that a picture
must show some ink: schemathesis's stock sample files are 1x1 pixel images, which the server
rightly refuses as blank (422). For the cases generated as valid (positive) only, this hook puts a
drawn digit in place of each image (raw bodies, multipart files, base64 strings, pixel arrays to
preprocess), in the format the case declares. Invalid (negative) cases are left as generated.
"""

from __future__ import annotations

import base64
import io
import zlib
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from schemathesis.core.parameters import ParameterLocation

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/bmp": "BMP",
           "image/tiff": "TIFF", "image/webp": "WEBP"}
# Strokes of a few digits on a 100x100 canvas: 1, 7, 4, 0 (as an ellipse) and 2.
STROKES = [
    [[(50, 15), (50, 85)]],
    [[(25, 20), (75, 20), (40, 85)]],
    [[(60, 15), (25, 60), (75, 60)], [(60, 15), (60, 85)]],
    "ellipse",
    [[(28, 30), (50, 15), (72, 30), (28, 85), (75, 85)]],
]


def drawing(seed: int, side: int = 100) -> Image.Image:
    img = Image.new("L", (side, side), 255)
    pen = ImageDraw.Draw(img)
    strokes = STROKES[seed % len(STROKES)]
    k = side / 100
    if strokes == "ellipse":
        pen.ellipse([28 * k, 15 * k, 72 * k, 85 * k], outline=0, width=max(2, int(9 * k)))
    else:
        for line in strokes:
            pen.line([(x * k, y * k) for x, y in line], fill=0, width=max(2, int(9 * k)))
    return img


def encoded(seed: int, media_type: str | None) -> bytes:
    buf = io.BytesIO()
    drawing(seed).save(buf, format=FORMATS.get((media_type or "").split(";")[0].strip().lower(), "PNG"))
    return buf.getvalue()


def _seed(value: Any) -> int:
    return zlib.crc32(repr(value).encode())


def _fix_json_item(item: Any, read: bool = False) -> Any:
    if not isinstance(item, dict):
        return item
    if "image" in item and isinstance(item["image"], str):
        return {**item, "image": base64.b64encode(encoded(_seed(item["image"]), "image/png")).decode()}
    pixels = item.get("pixels")
    if item.get("preprocess") is not True and isinstance(pixels, list) and pixels and isinstance(pixels[0], list):
        # The model's own 28x28 input: any values do for /v1/predict, but /v1/read reads it as a
        # picture of a field, which needs a stroke of ink on black.
        if read or len({v for row in pixels for v in row}) == 1:
            return {**item, "pixels": [[255.0 if c == len(row) // 2 else 0.0 for c in range(len(row))]
                                       for row in pixels]}
        return item
    if item.get("preprocess") is True and isinstance(item.get("pixels"), list):
        # The size the case chose (rows made equal), with light ink on black: a drawn digit, or on
        # arrays too small for one, a stroke down the middle.
        rows = len(item["pixels"])
        cols = max((len(r) for r in item["pixels"] if isinstance(r, list)), default=3)
        if min(rows, cols) < 12:
            pixels = [[255 if c == cols // 2 else 0 for c in range(cols)] for _ in range(rows)]
        else:
            img = drawing(_seed(item["pixels"])).resize((cols, rows))
            flat = [255 - v for v in img.getdata()]
            pixels = [flat[r * cols:(r + 1) * cols] for r in range(rows)]
        return {**item, "pixels": pixels}
    return item


# Files (raw bodies and multipart parts): a drawing in the declared format wherever schemathesis
# asks for one of these media types (not changed afterwards in a hook: schemathesis cannot
# re-validate a body holding binary data and would then count the case as invalid).
for _media_type in FORMATS:
    schemathesis.openapi.media_type(_media_type, st.integers(0, 2**16).map(lambda n, m=_media_type: encoded(n, m)))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """JSON bodies of valid cases: base64 images and pixel arrays to preprocess get a drawn digit."""
    meta = getattr(case, "meta", None)
    if meta is None or not (case.media_type or "").lower().startswith("application/json"):
        return case
    body_info = meta.components.get(ParameterLocation.BODY)
    if not meta.generation.mode.is_positive or (body_info is not None and not body_info.mode.is_positive):
        return case  # invalid cases keep schemathesis's own data
    if isinstance(case.body, dict) and isinstance(case.body.get("images"), list):
        case.body = {**case.body, "images": [_fix_json_item(i) for i in case.body["images"]]}
    else:
        case.body = _fix_json_item(case.body, read=case.operation.path == "/v1/read")
    return case
