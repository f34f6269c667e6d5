"""Values between PostgreSQL's wire formats and SQLite's storage classes, by type OID.

Parameters come in as bytes in text (0) or binary (1) format with a declared
OID and become Python values SQLite binds (:func:`decode_param`). Result
columns get an OID from their declared type or, without one, from the first
row's value (:func:`column_oid`), and each value is encoded for that OID in
the format the client asked for (:func:`encode_value`). Pure functions.

Error handling: a value that cannot be read or written as its type raises
:class:`ValueFormatError` (SQLSTATE 22P02 for input, 22P03 for bad binary
input); nothing else escapes, whatever the bytes.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, InvalidOperation

__all__ = [
    "BOOL",
    "BYTEA",
    "FLOAT4",
    "FLOAT8",
    "INT2",
    "INT4",
    "INT8",
    "INT8_ARRAY",
    "NUMERIC",
    "TEXT",
    "TEXTUAL",
    "TEXT_ARRAY",
    "UNKNOWN",
    "VARCHAR",
    "ValueFormatError",
    "column_oid",
    "decltype_oid",
    "decode_numeric_binary",
    "decode_param",
    "encode_value",
    "type_size",
]

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT = 16, 17, 19, 20, 21, 23, 25
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR, NUMERIC = 700, 701, 705, 1042, 1043, 1700
INT8_ARRAY, TEXT_ARRAY = 1016, 1009  # only the emulated catalog's array_agg makes these
_ARRAYS = {"_INT8": (INT8_ARRAY, INT8), "_TEXT": (TEXT_ARRAY, TEXT)}  # declared type: (array OID, element OID)
_ELEMENTS = {array: element for array, element in _ARRAYS.values()}

# OID -> (binary layout, bits, lowest, highest + 1): the bounds computed once, not per value.
_INT_FORMATS = {oid: (fmt, bits, -(2 ** (bits - 1)), 2 ** (bits - 1)) for oid, fmt, bits in (
    (INT2, "!h", 16), (INT4, "!i", 32), (INT8, "!q", 64))}
_SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8}
TEXTUAL = frozenset({0, TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN})
"""Parameter types whose text-format value binds as the text itself (:func:`decode_param` returns it decoded)."""


class ValueFormatError(ValueError):
    """A value cannot be read or written as its type; ``code`` is its SQLSTATE."""

    def __init__(self, message: str, code: str = "22P02") -> None:
        super().__init__(message)
        self.code = code


def type_size(oid: int) -> int:
    """The ``typlen`` of a type in a RowDescription: its size, or -1 for variable length."""
    return _SIZES.get(oid, -1)


def decltype_oid(decltype: str | None) -> int | None:
    """The OID for a column's declared SQLite type, or None when it says nothing.

    SQLite's affinity rules, in its own order, with PostgreSQL's names for
    the cases SQLite folds into NUMERIC: BOOL... is bool, DATE and TIME... stay
    text (SQLite stores them as text), DECIMAL/NUMERIC is numeric.
    """
    if not decltype:
        return None
    t = decltype.upper()
    if t in _ARRAYS:  # PostgreSQL's own names of array types: the catalog's array_agg columns
        return _ARRAYS[t][0]
    if "INT" in t:
        return INT8
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return TEXT
    if "BLOB" in t or "BYTEA" in t:
        return BYTEA
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return FLOAT8
    if "BOOL" in t:
        return BOOL
    if "DATE" in t or "TIME" in t:
        return TEXT
    if "NUM" in t or "DEC" in t:
        return NUMERIC
    return None


def column_oid(decltype: str | None, first_value) -> int:
    """The OID announced for a result column: from its declared type, else from its first value.

    A column with neither (an expression whose first value is NULL, or no
    row at all) is text.
    """
    oid = decltype_oid(decltype)
    if oid is not None:
        return oid
    kind = type(first_value)
    if kind is int:
        return INT8
    if kind is float:
        return FLOAT8
    if kind is bytes:
        return BYTEA
    return TEXT


# --- results ------------------------------------------------------------------


def _float_text(value: float) -> bytes:
    if math.isnan(value):
        return b"NaN"
    if math.isinf(value):
        return b"Infinity" if value > 0 else b"-Infinity"
    return repr(value).encode("ascii")


def _as_int(value) -> int:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is str:
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueFormatError(f"value {value!r:.40} of an integer column is not an integer")


def _as_float(value) -> float:
    if type(value) in (int, float):
        return float(value)
    if type(value) is str:
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueFormatError(f"value {value!r:.40} of a float column is not a number")


def _as_decimal(value) -> Decimal:
    if type(value) is bytes:
        raise ValueFormatError("a blob in a numeric column is not a number")
    try:
        number = Decimal(repr(value) if type(value) is float else str(value))
    except InvalidOperation:
        raise ValueFormatError(f"value {value!r:.40} of a numeric column is not a number") from None
    return number  # NaN and ±Infinity included: PostgreSQL 14+ numeric holds them


def _as_bool(value) -> bool:
    if value in (0, 1) and type(value) in (int, float):
        return bool(value)
    if type(value) is str and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    raise ValueFormatError(f"value {value!r:.40} of a boolean column is not a boolean")


def _numeric_binary(number: Decimal) -> bytes:
    # PostgreSQL's numeric: ndigits, weight, sign, dscale, then base-10000 digits.
    if number.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    if number.is_infinite():
        return struct.pack("!hhHh", 0, 0, 0xF000 if number < 0 else 0xD000, 0)
    sign, digits, exponent = number.as_tuple()
    dscale = max(0, -exponent)
    text = "".join(map(str, digits))
    if exponent >= 0:
        int_part, frac_part = text + "0" * exponent, ""
    else:
        text = text.rjust(-exponent, "0")  # 0.0001: digits "1", four places
        int_part, frac_part = text[:exponent], text[exponent:]
    int_part = int_part.lstrip("0")
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac_part = frac_part + "0" * (-len(frac_part) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i : i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, dscale, *groups)


def encode_value(value, oid: int, binary: bool) -> bytes | None:
    """Encode one SQLite value for a column of type ``oid`` in text or binary format.

    Raises:
        ValueFormatError: the value does not fit the column's announced type
            (SQLite lets a column declared INTEGER hold 'abc').
    """
    if value is None:
        return None
    if oid == TEXT:
        if type(value) is bytes:
            return value if binary else value.decode("utf-8", "replace").encode("utf-8")
        if type(value) is float:
            return _float_text(value)
        return str(value).encode("utf-8", "surrogatepass")
    layout = _INT_FORMATS.get(oid)
    if layout is not None:
        number = value if type(value) is int else _as_int(value)
        fmt, bits, low, high = layout
        if not low <= number < high:
            raise ValueFormatError(f"integer out of range for int{bits // 8}", "22003")
        return struct.pack(fmt, number) if binary else str(number).encode("ascii")
    if oid == FLOAT8:
        number = _as_float(value)
        return struct.pack("!d", number) if binary else _float_text(number)
    if oid == BYTEA:
        raw = value if type(value) is bytes else str(value).encode("utf-8", "surrogatepass")
        return raw if binary else b"\\x" + raw.hex().encode("ascii")
    if oid == BOOL:
        flag = _as_bool(value)
        return (b"\x01" if flag else b"\x00") if binary else (b"t" if flag else b"f")
    if oid == NUMERIC:
        number = _as_decimal(value)
        return _numeric_binary(number) if binary else str(number).encode("ascii")
    if oid in _ELEMENTS:
        return _array_binary(value, _ELEMENTS[oid]) if binary else str(value).encode("utf-8")
    raise ValueFormatError(f"no encoding for type OID {oid}", "XX000")


def _array_items(literal: str) -> list[str | None]:
    # The one-dimensional text form the catalog's array_agg writes: {"a","b\\"c",NULL,1}.
    body = literal[1:-1]
    items: list[str | None] = []
    i = 0
    while i < len(body):
        if body[i] == '"':
            j, chars = i + 1, []
            while body[j] != '"':
                if body[j] == "\\":
                    j += 1
                chars.append(body[j])
                j += 1
            items.append("".join(chars))
            i = j + 2
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            word = body[i:j]
            items.append(None if word == "NULL" else word)
            i = j + 1
    return items


def _array_binary(value, element: int) -> bytes:
    if type(value) is not str or not (value.startswith("{") and value.endswith("}")):
        raise ValueFormatError(f"value {value!r:.40} of an array column is not an array")
    items = _array_items(value)
    if not items:
        return struct.pack("!iii", 0, 0, element)
    out = [struct.pack("!iiiii", 1, any(v is None for v in items), element, len(items), 1)]
    for item in items:
        if item is None:
            out.append(struct.pack("!i", -1))
        else:
            data = encode_value(item, element, True)
            out.append(struct.pack("!i", len(data)) + data)
    return b"".join(out)


# --- parameters ----------------------------------------------------------------

_BOOL_WORDS = {
    "t": True, "true": True, "y": True, "yes": True, "on": True, "1": True,
    "f": False, "false": False, "n": False, "no": False, "off": False, "0": False,
}


def _numeric_value(number: Decimal):
    # SQLite has no decimal type: an integral value that fits is an INTEGER,
    # anything else a REAL (documented in docs/protocol/pg.md).
    if number.is_nan():
        return float("nan")
    if number == number.to_integral_value() and -(2**63) <= number < 2**63:
        return int(number)
    return float(number)


def _decode_numeric_binary(data: bytes):
    number = decode_numeric_binary(data)
    if number.is_nan():
        return float("nan")
    if number.is_infinite():
        return float(number)
    return _numeric_value(number)


def decode_numeric_binary(data: bytes) -> Decimal:
    """PostgreSQL's binary numeric as an exact Decimal.

    Raises:
        ValueFormatError: the bytes are not a numeric value.
    """
    if len(data) < 8:
        raise ValueFormatError("numeric value too short", "22P03")
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHh", data)
    if ndigits < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueFormatError("numeric value has the wrong length", "22P03")
    if sign == 0xC000:
        return Decimal("NaN")
    if sign == 0xD000:
        return Decimal("Infinity")
    if sign == 0xF000:
        return Decimal("-Infinity")
    if sign not in (0, 0x4000):
        raise ValueFormatError("invalid numeric sign", "22P03")
    digits = struct.unpack_from(f"!{ndigits}H", data, 8)
    if any(d > 9999 for d in digits):
        raise ValueFormatError("invalid numeric digit", "22P03")
    number = Decimal(0)
    for i, d in enumerate(digits):
        number += Decimal(d).scaleb(4 * (weight - i))
    return -number if sign else number


def _decode_binary(data: bytes, oid: int):
    fixed = {INT2: "!h", INT4: "!i", INT8: "!q", FLOAT4: "!f", FLOAT8: "!d"}.get(oid)
    if fixed is not None:
        if len(data) != struct.calcsize(fixed):
            raise ValueFormatError(f"binary value of type OID {oid} has {len(data)} bytes", "22P03")
        return struct.unpack(fixed, data)[0]
    if oid == BOOL:
        if len(data) != 1:
            raise ValueFormatError("binary boolean is not one byte", "22P03")
        return 1 if data[0] else 0
    if oid == BYTEA:
        return data
    if oid == NUMERIC:
        return _decode_numeric_binary(data)
    if oid in TEXTUAL:
        return _text(data)
    raise ValueFormatError(f"binary parameters of type OID {oid} are not supported", "0A000")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueFormatError("invalid byte sequence for encoding UTF8", "22021") from None


def _decode_text(data: bytes, oid: int):
    text = _text(data)
    try:
        if oid in (INT2, INT4, INT8):
            return int(text.strip())
        if oid in (FLOAT4, FLOAT8):
            return float(text.strip())
        if oid == NUMERIC:
            return _numeric_value(Decimal(text.strip()))
    except (ValueError, InvalidOperation):
        raise ValueFormatError(f"invalid input syntax for type OID {oid}: {text!r:.40}") from None
    if oid == BOOL:
        flag = _BOOL_WORDS.get(text.strip().lower())
        if flag is None:
            raise ValueFormatError(f"invalid input syntax for type boolean: {text!r:.40}")
        return int(flag)
    if oid == BYTEA:
        if text.startswith("\\x"):
            try:
                return bytes.fromhex(text[2:])
            except ValueError:
                raise ValueFormatError("invalid hexadecimal data in bytea") from None
        return data  # the escape format is not decoded (documented)
    return text  # text, varchar, unknown, and types kept as text (date, timestamp, json...)


def _shortest_float4(data: bytes, value: float) -> float:
    # 1.1 sent as float4 is 1.100000023841858 as a double: keep the shortest
    # decimal that is the same float4, as PostgreSQL prints it.
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("!f", candidate) == data:
            return candidate
    return value


def decode_param(data: bytes | None, oid: int, binary: bool):
    """Turn one Bind parameter into the value SQLite binds.

    Args:
        data: the parameter's bytes, None for NULL.
        oid: its declared type (0 when the client left it to the server: text).
        binary: its format code was 1.

    Raises:
        ValueFormatError: the bytes are not a value of that type.
    """
    if data is None:
        return None
    value = _decode_binary(data, oid) if binary else _decode_text(data, oid)
    if type(value) is float and oid == FLOAT4 and binary:
        value = _shortest_float4(data, value)
    if type(value) is int and not -(2**63) <= value < 2**63:
        raise ValueFormatError("integer out of range", "22003")
    return value
