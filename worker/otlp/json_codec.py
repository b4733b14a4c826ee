"""OTLP/JSON <-> protobuf export requests: traces in (strict, errors with a field path), metrics out."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.model.errors import OtlpDecodeError

__all__ = [
    "metrics_from_json",
    "metrics_to_dict",
    "metrics_to_json",
    "traces_from_dict",
    "traces_from_json",
    "traces_to_json",
]

# The bytes fields that OTLP/JSON writes as hex, with their required length in bytes.
# They have the same names in every OTLP message that carries them (Span, Span.Link, Exemplar).
_ID_LENGTHS: Final = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}

# Same nesting limit as json_format.ParseDict, so a hostile document fails with our message
# (and a path) instead of a RecursionError from the walk below.
_MAX_DEPTH: Final = 100

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1

# How much of a rejected value or of a json_format message we repeat in an error message.
_MAX_SHOWN: Final = 200

_COMPACT: Final = (",", ":")


@dataclass(eq=False)
class _Shape:
    """What the walks need to know about one message type.

    The input maps list every field under both its lowerCamelCase JSON name and its proto
    (snake_case) name, because input may use either; output (MessageToDict) uses JSON names.
    """

    ids: dict[str, int] = field(default_factory=dict)
    """Input: bytes ID fields -> required length in bytes."""
    enums: dict[str, EnumDescriptor] = field(default_factory=dict)
    """Input: enum fields."""
    messages: dict[str, tuple[_Shape, bool]] = field(default_factory=dict)
    """Input: message fields -> (shape of that message, whether the field is repeated)."""
    id_keys: list[str] = field(default_factory=list)
    """Output: JSON names of the bytes ID fields."""
    id_children: list[tuple[str, _Shape, bool]] = field(default_factory=list)
    """Output: JSON name, shape and repeatedness of the message fields below which IDs occur."""
    carries_ids: bool = False


def _is_repeated(fd: FieldDescriptor) -> bool:
    """``FieldDescriptor.is_repeated`` where it exists (protobuf 7 dropped ``label``), else ``label``."""
    is_repeated = getattr(fd, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(fd.label == FieldDescriptor.LABEL_REPEATED)


def _build_shapes(roots: tuple[Descriptor, ...]) -> dict[str, _Shape]:
    """Describe every message type reachable from ``roots`` (cycles, e.g. AnyValue, are fine)."""
    shapes: dict[str, _Shape] = {}
    children: dict[str, list[tuple[str, _Shape, bool]]] = {}

    def shape_of(descriptor: Descriptor) -> _Shape:
        existing = shapes.get(descriptor.full_name)
        if existing is not None:
            return existing
        shape = shapes[descriptor.full_name] = _Shape()
        json_children = children[descriptor.full_name] = []
        for fd in descriptor.fields:
            keys = {fd.json_name, fd.name}
            if fd.type == FieldDescriptor.TYPE_BYTES and fd.name in _ID_LENGTHS:
                shape.ids.update(dict.fromkeys(keys, _ID_LENGTHS[fd.name]))
                shape.id_keys.append(fd.json_name)
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                shape.enums.update(dict.fromkeys(keys, fd.enum_type))
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                child = fd.message_type
                # OTLP uses neither maps nor well-known types; both have their own JSON forms
                # that this walk does not understand, so leave them entirely to json_format.
                if child.GetOptions().map_entry or child.full_name.startswith("google.protobuf."):
                    continue
                entry = (shape_of(child), _is_repeated(fd))
                shape.messages.update(dict.fromkeys(keys, entry))
                json_children.append((fd.json_name, *entry))
        return shape

    for root in roots:
        shape_of(root)

    # Which subtrees can contain IDs (a fixed point, because the message graph has cycles).
    # Output conversion only descends into those, skipping e.g. all attribute values.
    changed = True
    while changed:
        changed = False
        for shape in shapes.values():
            if not shape.carries_ids and (
                shape.ids or any(child.carries_ids for child, _ in shape.messages.values())
            ):
                shape.carries_ids = changed = True
    for name, shape in shapes.items():
        shape.id_children = [entry for entry in children[name] if entry[1].carries_ids]
    return shapes


_TRACES_DESCRIPTOR: Final = ExportTraceServiceRequest.DESCRIPTOR
_METRICS_DESCRIPTOR: Final = ExportMetricsServiceRequest.DESCRIPTOR
_SHAPES: Final = _build_shapes((_TRACES_DESCRIPTOR, _METRICS_DESCRIPTOR))
_TRACES_SHAPE: Final = _SHAPES[_TRACES_DESCRIPTOR.full_name]
_METRICS_SHAPE: Final = _SHAPES[_METRICS_DESCRIPTOR.full_name]


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


def traces_from_json(data: bytes | str) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON trace export request (one Kafka record, one HTTP body, one file line).

    Raises OtlpDecodeError, and nothing else, for anything that is not a valid request.
    """
    return _from_dict(_load(data), ExportTraceServiceRequest(), _TRACES_SHAPE)


def traces_from_dict(document: dict[str, Any]) -> ExportTraceServiceRequest:
    """Decode an already-parsed OTLP/JSON trace export request; ``document`` is not modified.

    For callers that got the JSON from somewhere that parses it for them (tests, a YAML or
    msgpack envelope). Raises OtlpDecodeError, and nothing else, for an invalid request.
    """
    return _from_dict(document, ExportTraceServiceRequest(), _TRACES_SHAPE)


def metrics_from_json(data: bytes | str) -> ExportMetricsServiceRequest:
    """Decode an OTLP/JSON metrics export request, e.g. to check or replay what we emitted.

    Raises OtlpDecodeError, and nothing else, for anything that is not a valid request.
    """
    return _from_dict(_load(data), ExportMetricsServiceRequest(), _METRICS_SHAPE)


def _load(data: bytes | str) -> Any:
    """``json.loads`` with every failure turned into OtlpDecodeError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise OtlpDecodeError("not valid JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, not str/bytes
        raise OtlpDecodeError(f"not valid JSON: {_clip(str(exc))}") from exc


_Request = TypeVar("_Request", ExportTraceServiceRequest, ExportMetricsServiceRequest)


def _from_dict(document: Any, message: _Request, shape: _Shape) -> _Request:
    if not isinstance(document, dict):
        raise OtlpDecodeError(f"an OTLP/JSON request must be a JSON object, not {_json_type(document)}")
    prepared = _prepare(document, shape, "", 0)
    try:
        json_format.ParseDict(prepared, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpDecodeError(_describe_parse_error(str(exc))) from exc
    except Exception as exc:
        # json_format lets a few plain Python errors escape (e.g. OverflowError for a huge
        # integer in a double field); our contract is "OtlpDecodeError and nothing else".
        raise OtlpDecodeError(f"invalid OTLP/JSON: {type(exc).__name__}: {_clip(str(exc))}") from exc
    return message


def _prepare(obj: Any, shape: _Shape, path: str, depth: int) -> dict[str, Any]:
    """Check the message structure, validate enums and turn hex IDs into base64, for ParseDict.

    Copy-on-write: returns ``obj`` itself when nothing needed converting, otherwise a copy
    (the caller's document is never modified).
    """
    if not isinstance(obj, dict):
        raise OtlpDecodeError(f"{path or '<root>'}: expected a JSON object, got {_json_type(obj)}")
    if depth > _MAX_DEPTH:
        raise OtlpDecodeError(f"{path}: nested more than {_MAX_DEPTH} messages deep")
    out = obj
    for key, value in obj.items():
        if value is None:  # proto3 JSON: null means "default value"; ParseDict handles it
            continue
        new = value
        if (length := shape.ids.get(key)) is not None:
            new = _hex_to_base64(value, length, path, key)
        elif (enum := shape.enums.get(key)) is not None:
            _check_enum(value, enum, path, key)
        elif (child := shape.messages.get(key)) is not None:
            child_shape, repeated = child
            child_path = f"{path}.{key}" if path else key
            if not repeated:
                new = _prepare(value, child_shape, child_path, depth + 1)
            elif not isinstance(value, list):
                raise OtlpDecodeError(f"{child_path}: expected a JSON array, got {_json_type(value)}")
            else:
                items: list[Any] | None = None
                for index, item in enumerate(value):
                    new_item = _prepare(item, child_shape, f"{child_path}[{index}]", depth + 1)
                    if new_item is not item:
                        if items is None:
                            items = list(value)
                        items[index] = new_item
                if items is not None:
                    new = items
        if new is not value:
            if out is obj:
                out = dict(obj)
            out[key] = new
    return out


def _hex_to_base64(value: Any, length: int, path: str, key: str) -> str:
    """``"5b8e..."`` (any case) -> the base64 json_format expects for a bytes field."""
    if isinstance(value, str) and (not value or len(value) == 2 * length):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            pass
        else:
            # fromhex skips whitespace, so a right-length string with spaces decodes short.
            if len(raw) == length or not value:
                return base64.b64encode(raw).decode("ascii")
    where = f"{path}.{key}" if path else key
    raise OtlpDecodeError(f"{where}: not a {2 * length}-digit hex string (got {_clip(repr(value))})")


def _check_enum(value: Any, enum: EnumDescriptor, path: str, key: str) -> None:
    """Accept a known enum name or an int32; ParseDict would silently drop an unknown name."""
    if isinstance(value, str):
        if value in enum.values_by_name:
            return
    # proto3 enums are open: an unknown number is kept, so any int32 is valid.
    elif isinstance(value, int) and not isinstance(value, bool) and _INT32_MIN <= value <= _INT32_MAX:
        return
    where = f"{path}.{key}" if path else key
    raise OtlpDecodeError(f"{where}: not a name or number of enum {enum.name} (got {_clip(repr(value))})")


_PARSE_FIELD_PREFIX: Final = re.compile(r"Failed to parse (\S+) field: ")
_PARSE_AT_PATH: Final = re.compile(r' at "?[A-Za-z_]\w*((?:[.\[]\S*?)?)"?$')


def _describe_parse_error(text: str) -> str:
    """Turn json_format's nested message into ``path: reason``.

    ParseError messages look like ``Failed to parse resourceSpans field: Failed to parse
    scopeSpans field: ... Couldn't parse integer: 1.5 at ExportTraceServiceRequest.resourceSpans[0]
    .scopeSpans[0].spans[1].startTimeUnixNano....``. The "at" path (with indices) is not always
    there, and sometimes names the parent message; the chain of field names fills the gap.
    """
    chain: list[str] = []
    while match := _PARSE_FIELD_PREFIX.match(text):
        chain.append(match[1])
        text = text[match.end() :]
    text = text.rstrip(".")
    path = ""
    if match := _PARSE_AT_PATH.search(text):
        path = match[1].lstrip(".")
        text = text[: match.start()]
    depth = len(path.split(".")) if path else 0
    if depth < len(chain):
        path = ".".join([path, *chain[depth:]]) if path else ".".join(chain)
    reason = _clip(text.strip() or "invalid value")
    return f"{path}: {reason}" if path else reason


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def traces_to_json(request: ExportTraceServiceRequest) -> str:
    """Encode as compact one-line OTLP/JSON, as one record of an OTLP JSON-lines file or topic."""
    return json.dumps(_to_dict(request, _TRACES_SHAPE), separators=_COMPACT, ensure_ascii=False)


def metrics_to_json(request: ExportMetricsServiceRequest, *, indent: int | None = None) -> str:
    """Encode as OTLP/JSON: one compact line by default (for records), indented for people."""
    document = metrics_to_dict(request)
    if indent is None:
        return json.dumps(document, separators=_COMPACT, ensure_ascii=False)
    return json.dumps(document, indent=indent, ensure_ascii=False)


def metrics_to_dict(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    """The OTLP/JSON document as Python objects, for callers that embed it or compare it in tests.

    Hex IDs, lowerCamelCase keys, integer enums, 64-bit integers as decimal strings, and
    fields with default values left out (as the Collector writes it).
    """
    return _to_dict(request, _METRICS_SHAPE)


def _to_dict(
    request: ExportTraceServiceRequest | ExportMetricsServiceRequest, shape: _Shape
) -> dict[str, Any]:
    document: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)
    _ids_to_hex(document, shape)
    return document


def _ids_to_hex(obj: dict[str, Any], shape: _Shape) -> None:
    """In place: base64 IDs from MessageToDict -> lowercase hex, only where IDs can occur."""
    for key in shape.id_keys:
        value = obj.get(key)
        if value is not None:
            obj[key] = base64.b64decode(value).hex()
    for key, child, repeated in shape.id_children:
        value = obj.get(key)
        if value is None:
            continue
        if repeated:
            for item in value:
                _ids_to_hex(item, child)
        else:
            _ids_to_hex(value, child)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(text: str) -> str:
    """Keep error messages short even when the offending value is huge."""
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
