"""The OpenAPI description of the request bodies and answers, as strict as the server's checks.

Every structural rule the server applies is stated here (array shapes, value ranges, enums, no
unknown fields, size limits, content types), so that a client generated from ``/openapi.json``
sends only requests of a valid shape. What a schema cannot state is the content of a picture: a
readable PNG of nothing (blank) or of a format the server does not decode gets 422
``invalid_image``, documented below.
"""

from __future__ import annotations

from typing import Any

# A base64 string (RFC 4648, padded), optionally behind a data: URL prefix as canvas.toDataURL() gives.
BASE64_PATTERN = r"^(data:[^,]*,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# Formats the server decodes (Pillow); an upload of another type is refused by its content anyway.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/webp")
MIN_SIDE = 3  # a stroke needs paper on both sides
MAX_SIDE = 2000  # rows or columns of a pixel array sent with "preprocess": true (4 million values)


def _binary(max_bytes: int) -> dict[str, Any]:
    # The size limit is in the description: JSON Schema's maxLength counts characters, not bytes.
    return {"type": "string", "format": "binary", "description": f"an image file of at most {max_bytes} bytes"}


def bodies(height: int, width: int, top: int, max_batch: int, max_bytes: int) -> dict[str, Any]:
    """The request bodies of the image endpoints, keyed ``image`` (one) and ``batch``."""
    row = {"type": "array", "minItems": width, "maxItems": width,
           "items": {"type": "number", "minimum": 0, "maximum": top}}
    image = {
        "type": "object", "title": "Encoded image", "required": ["image"], "additionalProperties": False,
        "properties": {"image": {"type": "string", "format": "byte", "minLength": 4, "maxLength": max_bytes,
                                 "pattern": BASE64_PATTERN,
                                 "description": "the image file's bytes in base64 (a data: URL works too)"}},
    }
    pixels = {
        "type": "object", "title": f"{height}x{width} pixels", "required": ["pixels"], "additionalProperties": False,
        "properties": {
            "pixels": {"type": "array", "minItems": height, "maxItems": height, "items": row,
                       "description": f"{height}x{width} values 0..{top}, light ink on black (MNIST): "
                                      "the model's input as is"},
            "preprocess": {"type": "boolean", "enum": [False], "default": False},
        },
    }
    drawing = {
        "type": "object", "title": "Pixels to preprocess", "required": ["pixels", "preprocess"],
        "additionalProperties": False,
        "properties": {
            "pixels": {"type": "array", "minItems": MIN_SIDE, "maxItems": MAX_SIDE,
                       "items": {"type": "array", "minItems": MIN_SIDE, "maxItems": MAX_SIDE,
                                 "items": {"type": "number", "minimum": 0, "maximum": 255}},
                       "description": "a 2-D array of any size (rows of equal length), values 0..255, "
                                      "with some ink: centred and scaled like MNIST first"},
            "preprocess": {"type": "boolean", "enum": [True]},
        },
    }
    one_json = {"oneOf": [image, pixels, drawing]}
    # Every part is an image: 'file' here, 'files' (repeated) for a batch.
    file_part = {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                   "properties": {"file": _binary(max_bytes)}},
        "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
    }}
    one = {**file_part, "application/json": {"schema": one_json},
           **{t: {"schema": _binary(max_bytes)} for t in IMAGE_TYPES}}
    batch = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["files"], "additionalProperties": False,
                       "properties": {"files": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                "items": _binary(max_bytes)}}},
            "encoding": {"files": {"contentType": ", ".join(IMAGE_TYPES)}},
        },
        "application/json": {"schema": {
            "type": "object", "required": ["images"], "additionalProperties": False,
            "properties": {"images": {"type": "array", "minItems": 1, "maxItems": max_batch, "items": one_json}},
        }},
    }
    return {"image": one, "batch": batch}


ERROR_SCHEMA = {"type": "object", "required": ["error", "detail"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}


def errors(*codes: int) -> dict[str, Any]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    text = {
        400: "empty or unparseable body (JSON, multipart, Content-Length)",
        408: "the body did not arrive in time",
        413: "body over the size limit, or too many parts",
        415: "unknown content type or a compressed body",
        422: "an image that cannot be used (unreadable, blank, too many megapixels), or a wrong JSON value",
        503: "the image worker stopped, or the server is not ready; try again",
    }
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for c in codes}
