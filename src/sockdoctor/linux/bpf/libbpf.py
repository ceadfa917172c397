"""The few libbpf calls the kernel engine makes, through ctypes (Debian's libbpf.so.1).

A BPF object is opened from the bytes clang built (`<name>.bpf.o` beside this
file), loaded (libbpf applies the CO-RE relocations from the running kernel's
BTF, then the kernel's verifier checks every program), run as an iterator
(attach -> link -> iterator fd -> read until EOF) and closed. Every fd lives
in a `BpfObject` used as a context manager: nothing is pinned, so when it is
closed (or the process exits) the kernel frees the programs and maps.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
READ_CHUNK = 1 << 20


class OpenOpts(ctypes.Structure):
    """The head of struct bpf_object_open_opts: libbpf reads `sz` bytes, zero beyond."""

    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p)]


class BpfError(OSError):
    """libbpf or the kernel refused: the message says which step, errno why."""


@cache
def lib() -> ctypes.CDLL:
    """libbpf.so.1 with the signatures we call; OSError if it is not installed."""
    try:  # the soname first: ctypes.util (subprocess, tempfile...) costs ~7 ms of start-up
        so = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        so = ctypes.CDLL(find_library("bpf") or "libbpf.so.1", use_errno=True)
    vp, i, sz, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint32
    for fn, res, args in (
            ("bpf_object__open_mem", vp, [vp, sz, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, ctypes.c_char_p]),
            ("bpf_object__find_map_by_name", vp, [vp, ctypes.c_char_p]),
            ("bpf_map__set_max_entries", i, [vp, u32]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_program__attach_iter", vp, [vp, vp]),
            ("bpf_link__fd", i, [vp]),
            ("bpf_link__destroy", i, [vp]),
            ("bpf_iter_create", i, [i]),
            ("bpf_map_update_batch", i, [i, vp, vp, ctypes.POINTER(u32), vp]),
            ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
            ("bpf_map_lookup_batch", i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
            ("bpf_map_delete_batch", i, [i, vp, ctypes.POINTER(u32), vp]),
            ("bpf_map_lookup_and_delete_batch", i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
            ("libbpf_set_print", vp, [vp]),
            ("libbpf_major_version", u32, []),
            ("libbpf_minor_version", u32, [])):
        f = getattr(so, fn)
        f.restype, f.argtypes = res, args
    if os.environ.get("SOCKDOCTOR_BPF_DEBUG", "") in ("", "0"):
        so.libbpf_set_print(None)  # its messages would go to our stderr; errno says enough
    return so


def version() -> str:
    so = lib()
    return f"{so.libbpf_major_version()}.{so.libbpf_minor_version()}"


def _fail(step: str, code: int | None = None) -> BpfError:
    err = abs(code) if code else ctypes.get_errno()
    return BpfError(err, f"{step}: {os.strerror(err) if err else 'failed'}")


class BpfObject:
    """One loaded BPF object file: its programs and maps, freed by close()."""

    def __init__(self, name: str, max_entries: dict[str, int] | None = None) -> None:
        so = lib()
        path = HERE / f"{name}.bpf.o"
        try:
            self._data = path.read_bytes()
        except OSError as exc:
            raise BpfError(exc.errno or 2, f"{path.name} was not built (no clang at "
                                           "install time?)") from exc
        self._so = so
        # "sd_" names the object, so its maps too (sd_owner.bss): `bpftool map` says whose
        self._opts = OpenOpts(ctypes.sizeof(OpenOpts), f"sd_{name}".encode())
        self._obj = so.bpf_object__open_mem(self._data, len(self._data),
                                            ctypes.byref(self._opts))
        if not self._obj:
            raise _fail(f"opening {path.name}")
        try:
            for map_name, entries in (max_entries or {}).items():
                so.bpf_map__set_max_entries(self._map(map_name), max(1, entries))
            code = so.bpf_object__load(self._obj)
            if code:
                raise _fail(f"loading {path.name}", code)
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> int:
        ptr = self._so.bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise BpfError(2, f"no map {name}")
        return ptr

    def map_fd(self, name: str) -> int:
        return self._so.bpf_map__fd(self._map(name))

    def update_batch(self, name: str, keys: bytes, values: bytes, count: int) -> None:
        """Insert `count` entries at once (keys and values packed back to back)."""
        if not count:
            return
        n = ctypes.c_uint32(count)
        code = self._so.bpf_map_update_batch(self.map_fd(name), keys, values,
                                             ctypes.byref(n), None)
        if code:
            raise _fail(f"filling map {name}", code)

    def update_elem(self, name: str, index: int, value: bytes) -> None:
        """Set one entry of an array map."""
        key = ctypes.c_uint32(index)
        code = self._so.bpf_map_update_elem(self.map_fd(name), ctypes.byref(key), value, 0)
        if code:
            raise _fail(f"setting map {name}", code)

    def read_array(self, name: str, count: int, value_size: int) -> bytes:
        """The first `count` values of an array map, in one batch."""
        if not count:
            return b""
        keys = ctypes.create_string_buffer(4 * count)
        values = ctypes.create_string_buffer(value_size * count)
        out_batch, n = ctypes.c_uint32(0), ctypes.c_uint32(count)
        code = self._so.bpf_map_lookup_batch(self.map_fd(name), None, ctypes.byref(out_batch),
                                             keys, values, ctypes.byref(n), None)
        if code and -code != errno.ENOENT:  # ENOENT: the last batch, all returned
            raise _fail(f"reading map {name}", code)
        if n.value != count:
            raise BpfError(errno.EIO, f"reading map {name}: {n.value} of {count} entries")
        return values.raw

    def delete_batch(self, name: str, keys: bytes, count: int) -> None:
        """Remove `count` entries at once (keys packed back to back; absent ones: an error)."""
        if not count:
            return
        n = ctypes.c_uint32(count)
        code = self._so.bpf_map_delete_batch(self.map_fd(name), keys, ctypes.byref(n), None)
        if code:
            raise _fail(f"emptying map {name}", code)

    def take_all(self, name: str, key_size: int, value_size: int, capacity: int
                 ) -> tuple[bytes, bytes, int]:
        """Every entry of a hash map, removed from it: (keys, values, how many)."""
        keys = ctypes.create_string_buffer(key_size * capacity)
        values = ctypes.create_string_buffer(value_size * capacity)
        out_batch, n = ctypes.create_string_buffer(8), ctypes.c_uint32(capacity)
        code = self._so.bpf_map_lookup_and_delete_batch(self.map_fd(name), None, out_batch,
                                                        keys, values, ctypes.byref(n), None)
        if code and -code != errno.ENOENT:  # ENOENT: the last batch, all returned
            raise _fail(f"reading map {name}", code)
        return keys.raw[:key_size * n.value], values.raw[:value_size * n.value], n.value

    def run_iter(self, program: str, reader: Callable[[int], Any] | None = None) -> Any:
        """Run an iterator program once, in the calling thread's namespaces; its output.

        `reader(fd)`, if given, reads the iterator instead (and says what to return).
        """
        so = self._so
        prog = so.bpf_object__find_program_by_name(self._obj, program.encode())
        if not prog:
            raise BpfError(2, f"no program {program}")
        link = so.bpf_program__attach_iter(prog, None)
        if not link:
            raise _fail(f"attaching {program}")
        try:
            fd = so.bpf_iter_create(so.bpf_link__fd(link))
            if fd < 0:
                raise _fail(f"starting {program}", fd)
            try:
                return (reader or _read_all)(fd)
            finally:
                os.close(fd)
        finally:
            so.bpf_link__destroy(link)

    def close(self) -> None:
        if self._obj:
            self._so.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, READ_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)
