"""JSON that keeps untrusted text exact, even when it is not UTF-8.

Process names, command lines, cgroup paths and namespace names are bytes
chosen by whoever runs the process; sockdoctor reads them with Python's
surrogateescape, so a byte that is not UTF-8 survives as a lone surrogate.
JSON strings cannot carry those, so (docs/json.md, "Text that is not UTF-8"):

- a text field from a process or the kernel (the keys in EXACT_KEYS) is a
  JSON string when it is valid UTF-8 and otherwise an array of its byte
  values, 0-255 (the convention of `journalctl -o json`);
- sentences sockdoctor composed (titles, warnings) show such a byte as
  `\\xNN`, as the terminal does.

Control characters stay exact in JSON (the encoder writes them as \\u001b).
The fast path is the plain encoder; the rewrite happens only for documents
that hold such bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

EXACT_KEYS = frozenset({"comm", "cmdline", "user", "cgroup", "container", "name", "netns",
                        "namespaces"})
_ENCODER = msgspec.json.Encoder()


def encode(obj: Any, encoder: msgspec.json.Encoder = _ENCODER) -> bytes:
    try:
        return encoder.encode(obj)
    except UnicodeEncodeError:
        return encoder.encode(lossless(msgspec.to_builtins(obj)))


def encode_lines(items: list[Any], encoder: msgspec.json.Encoder = _ENCODER) -> bytes:
    try:
        return encoder.encode_lines(items)
    except UnicodeEncodeError:
        return encoder.encode_lines([lossless(msgspec.to_builtins(i)) for i in items])


def decode(data: bytes, type: type[T]) -> T:
    """Decode into `type`, turning byte arrays of EXACT_KEYS back into text.

    Raises msgspec.DecodeError / ValidationError like msgspec itself.
    """
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError:
        raw = msgspec.json.decode(data)
        if not _has_bytes(raw):
            raise
    return msgspec.convert(restore(raw), type=type, str_keys=True)


def exact(value: Any) -> Any:
    """A text value as JSON can carry it exactly: str, or a list of byte values."""
    if isinstance(value, str):
        if not _surrogates(value):
            return value
        return list(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, list | tuple):  # to_builtins keeps a frozen value's tuples
        return [exact(v) for v in value]
    return lossless(value)


def readable(text: str) -> str:
    """Composed text: each undecodable byte as \\xNN."""
    if not _surrogates(text):
        return text
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else ch
                   for ch in text)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def untrusted(text: str) -> str:
    """Text from a process or the kernel, made safe for a terminal.

    Any local user can name a process "\\x1b[31m..." or put a newline in it;
    printed raw, that runs escape sequences in root's terminal or splits a row.
    Control characters become \\n, \\t or \\xNN, bytes that were not UTF-8
    (decoded with surrogateescape) become \\xNN, and a backslash is doubled so
    the result reads back unambiguously: the escaping is injective (two
    different names never print alike), which is why Prometheus label values
    use it too (docs/exporter.md).
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    # \xNN above 0x7f is a raw byte, so a character there is \u00NN; the width of
    # \u and \U is fixed: the escaping stays injective.
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def lossless(value: Any) -> Any:
    """Builtins (from msgspec.to_builtins) with every string made encodable."""
    if isinstance(value, dict):
        return {k: exact(v) if k in EXACT_KEYS else lossless(v) for k, v in value.items()}
    if isinstance(value, list | tuple):  # to_builtins keeps a frozen value's tuples
        return [lossless(v) for v in value]
    if isinstance(value, str):
        return readable(value)
    return value


def restore(value: Any, key: str = "") -> Any:
    """The inverse of lossless() for EXACT_KEYS: byte arrays back to (surrogateescape) str."""
    if isinstance(value, dict):
        return {k: restore(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key in EXACT_KEYS and _is_bytes(value):
            return bytes(value).decode("utf-8", "surrogateescape")
        return [restore(v, key) for v in value]
    return value


def _is_bytes(value: list[Any]) -> bool:
    return bool(value) and all(type(v) is int and 0 <= v <= 255 for v in value)


def _has_bytes(value: Any, key: str = "") -> bool:
    if isinstance(value, dict):
        return any(_has_bytes(v, k) for k, v in value.items())
    if isinstance(value, list):
        if key in EXACT_KEYS and _is_bytes(value):
            return True
        return any(_has_bytes(v, key) for v in value)
    return False


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
