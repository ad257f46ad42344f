"""Read a GGUF file's metadata header (scalar keys, array lengths) without loading the model.

`gguf.GGUFReader` parses every array into numpy objects: 8 s for Gemma 3's 262k-token vocabulary
on this machine, once per model at start-up. The pool needs a dozen scalars, so this reader
walks the header with `struct` and skips arrays, in milliseconds, and bounds what a corrupt or
hostile file can make it read.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MAGIC = b"GGUF"
_MAX_KEYS = 1 << 16
_MAX_STRING = 1 << 26  # 64 MiB: chat templates are kilobytes; this only stops runaway reads
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """Not a GGUF file this reader understands (wrong magic, truncated header, bad type)."""


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """An array value, described but not read: element type code and length."""

    type: int
    length: int
    first: Any = None
    """The first element when the array holds numbers (per-layer head counts)."""


@dataclass(frozen=True, slots=True)
class GgufMeta:
    fields: dict[str, Any]
    tensor_count: int
    file_bytes: int

    @property
    def architecture(self) -> str:
        return str(self.fields.get("general.architecture", ""))

    def arch(self, key: str, default: Any = None) -> Any:
        """`{architecture}.{key}`, with per-layer arrays read as their first element."""
        value = self.fields.get(f"{self.architecture}.{key}", default)
        return value.first if isinstance(value, ArrayInfo) else value

    @property
    def has_chat_template(self) -> bool:
        return isinstance(self.fields.get("tokenizer.chat_template"), str)

    @property
    def vocab_size(self) -> int:
        tokens = self.fields.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayInfo):
            return tokens.length
        return int(self.arch("vocab_size", 0) or 0)


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.at = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.buf):
            raise GgufError("the GGUF header is truncated")
        (value,) = struct.unpack_from(fmt, self.buf, self.at)
        self.at += size
        return value

    def string(self, keep: bool = True) -> str:
        length = self.take("<Q")
        if length > _MAX_STRING or self.at + length > len(self.buf):
            raise GgufError("a GGUF string runs past the end of the header")
        start, self.at = self.at, self.at + length
        return bytes(self.buf[start:self.at]).decode("utf-8", "replace") if keep else ""

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, length = self.take("<I"), self.take("<Q")
            if inner == _STRING:
                for _ in range(length):
                    self.string(keep=False)
                return ArrayInfo(inner, length)
            if inner not in _SCALARS:
                raise GgufError(f"unsupported GGUF array element type {inner}")
            size = struct.calcsize(_SCALARS[inner])
            if self.at + size * length > len(self.buf):
                raise GgufError("a GGUF array runs past the end of the file")
            first = struct.unpack_from(_SCALARS[inner], self.buf, self.at)[0] if length else None
            self.at += size * length
            return ArrayInfo(inner, length, first)
        raise GgufError(f"unknown GGUF value type {kind}")


def read_gguf_meta(path: Path) -> GgufMeta:
    """The metadata of the GGUF file at `path`; GgufError when it is not one."""
    with path.open("rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise GgufError(f"{path} is too small to be a GGUF file ({size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            if bytes(buf[:4]) != _MAGIC:
                raise GgufError(f"{path} is not a GGUF file (no GGUF magic)")
            cur.at = 4
            version = cur.take("<I")
            if version < 2:
                raise GgufError(f"{path}: GGUF version {version} is too old")
            tensors, keys = cur.take("<Q"), cur.take("<Q")
            if keys > _MAX_KEYS:
                raise GgufError(f"{path}: {keys} metadata keys is not a sane header")
            fields: dict[str, Any] = {}
            for _ in range(keys):
                key = cur.string()
                fields[key] = cur.value(cur.take("<I"))
    return GgufMeta(fields, tensors, size)
