"""estrace: a reader of ExitScope trace files (.estrace), in Python.

Written from the format's spec page (Sources/Trace/FORMAT.md) alone, as the format's second,
independent reader; tests/test_estrace.py checks it against the Swift reader on the same files.

    import estrace
    t = estrace.open_trace("run.estrace")
    t.header["tsc_hz"], t.cut_short
    for r in t.records():          # global seq order, one frame per vCPU open at a time
        r["seq"], r["kind"], r["tsc_exit"], r["state"]["rip"]
    df = t.dataframe()             # one row per record, flat columns (needs pandas)

Memory is bounded by the frames open at once (about one per vCPU), not by the trace's length.
"""

from __future__ import annotations

import heapq
import json
import os
import struct
from typing import Dict, Iterator, List, Optional, Tuple

try:  # only needed to decompress frames
    import zstandard
except ImportError:  # pragma: no cover - reported when a frame is read
    zstandard = None

__all__ = [
    "TraceError", "TraceFile", "open_trace", "KINDS", "VISIBILITY", "SLOT_NAMES", "crc32c",
    "svm_exit_name", "state_json",
]

MU64 = (1 << 64) - 1
FILE_MAGIC = b"\x89EST\r\n\x1a\n"
FRAME_MAGIC = b"ESFR"
INDEX_MAGIC = b"ESIX"
TRAILER_MAGIC = b"ESTREND\x00"
MAJOR = 1

KINDS = {1: "exit", 2: "completion", 3: "step", 4: "event", 5: "gap", 6: "marker"}
VISIBILITY = {0: "none", 1: "committed", 2: "pending"}
ROLES = {1: "instruction", 2: "page_table", 3: "operand_read", 4: "written"}
SPACES = {1: "port", 2: "mmio", 3: "msr"}

TAG_KEYFRAME, TAG_GUEST_BYTES, TAG_RECORD, TAG_STATS = 1, 2, 3, 4


class TraceError(Exception):
    """A trace that cannot be read: kind is foreign, truncated, corrupted or newer; offset is
    the byte offset where the problem was detected."""

    def __init__(self, kind: str, offset: int, message: str):
        super().__init__(f"{kind} at byte offset {offset}: {message}")
        self.kind = kind
        self.offset = offset


# --- primitives -----------------------------------------------------------------------------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), continuing from `crc`."""
    try:  # the C implementation when the optional package is there
        import crc32c as _fast  # type: ignore

        return _fast.crc32c(data, crc) if crc else _fast.crc32c(data)
    except ImportError:
        pass
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = (c >> 8) ^ t[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


class _Cursor:
    """Reads varints and fixed fields from one item's payload; errors name the frame offset."""

    __slots__ = ("b", "p", "end", "where")

    def __init__(self, b: bytes, p: int, end: int, where):
        self.b, self.p, self.end, self.where = b, p, end, where

    def fail(self, msg: str):
        raise TraceError("corrupted", self.where[0], f"{msg} (at byte {self.p} of the frame's payload)")

    def u8(self) -> int:
        if self.p >= self.end:
            self.fail("item ends early")
        v = self.b[self.p]
        self.p += 1
        return v

    def varint(self) -> int:
        b, p, end = self.b, self.p, self.end
        v = 0
        shift = 0
        for i in range(10):
            if p >= end:
                self.p = p
                self.fail("varint runs past the item's end")
            x = b[p]
            p += 1
            if i == 9 and x > 1:
                self.p = p
                self.fail("varint beyond 64 bits")
            v |= (x & 0x7F) << shift
            if x < 0x80:
                self.p = p
                return v
            shift += 7
        self.p = p
        self.fail("varint longer than 10 bytes")

    def take(self, n: int) -> bytes:
        if n > self.end - self.p:
            self.fail(f"{n} bytes needed, {self.end - self.p} left in the item")
        v = self.b[self.p:self.p + n]
        self.p += n
        return bytes(v)

    def string(self) -> str:
        n = self.varint()
        if n >= 1 << 20:  # writers keep strings under 1 MiB
            self.fail(f"string of {n} bytes")
        return self.take(n).decode("utf-8", errors="replace")


def _unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


def _apply(old: int, d: int) -> int:
    """Applies a varint delta (zigzag of the signed difference) to `old`, modulo 2^64."""
    return (old + _unzigzag(d)) & MU64


# --- state ------------------------------------------------------------------------------------

_SEGS = ["es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"]
_GPRS = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
_TAIL = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "cpl", "dr6", "dr7", "star", "lstar", "cstar",
         "sfmask", "kernel_gs_base", "sysenter_cs", "sysenter_esp", "sysenter_eip", "pat", "xcr0"]

SLOT_NAMES: List[str] = _GPRS + ["rip", "rflags"]
SLOT_WIDTH: List[int] = [64] * 18
FIELD_SLOTS: List[Tuple[int, int]] = [(i, 1) for i in range(18)]  # (first slot, count) per field
for _s in _SEGS:
    FIELD_SLOTS.append((len(SLOT_NAMES), 4))
    SLOT_NAMES += [f"{_s}.selector", f"{_s}.base", f"{_s}.limit", f"{_s}.attributes"]
    SLOT_WIDTH += [16, 64, 32, 16]
for _s in ["gdtr", "idtr"]:
    FIELD_SLOTS.append((len(SLOT_NAMES), 2))
    SLOT_NAMES += [f"{_s}.base", f"{_s}.limit"]
    SLOT_WIDTH += [64, 16]
for _s in _TAIL:
    FIELD_SLOTS.append((len(SLOT_NAMES), 1))
    SLOT_NAMES.append(_s)
    SLOT_WIDTH.append(8 if _s == "cpl" else 64)
assert len(SLOT_NAMES) == 73 and len(FIELD_SLOTS) == 47
# XCR0 is stored XOR 7 (FORMAT.md): the all-zero base means 7, older traces read as 7.
_XCR0_SLOT = 72
SLOT_INDEX = {n: i for i, n in enumerate(SLOT_NAMES)}
_SLOT_MAX = [(1 << w) - 1 for w in SLOT_WIDTH]


def _state_delta(c: _Cursor, old: List[int]) -> List[int]:
    mask = c.varint()
    if mask >> 47:
        c.fail(f"state delta mask 0x{mask:x} has bits beyond the 47 state fields")
    new = list(old)
    f = 0
    while mask:
        if mask & 1:
            first, n = FIELD_SLOTS[f]
            for s in range(first, first + n):
                v = _apply(old[s], c.varint())
                if v > _SLOT_MAX[s]:
                    c.fail(f"state slot {SLOT_NAMES[s]} = 0x{v:x} does not fit {SLOT_WIDTH[s]} bits")
                new[s] = v
        mask >>= 1
        f += 1
    return new


class State:
    """A CPU state: 73 slots, readable by name (state["rip"], state["cs.base"], state["xcr0"])."""

    __slots__ = ("slots",)

    def __init__(self, slots: List[int]):
        self.slots = slots

    def __getitem__(self, name: str) -> int:
        i = SLOT_INDEX[name]
        return self.slots[i] ^ 7 if i == _XCR0_SLOT else self.slots[i]

    def __eq__(self, other):
        return isinstance(other, State) and self.slots == other.slots

    def as_dict(self) -> Dict[str, int]:
        return {n: self[n] for n in SLOT_NAMES}

    def __repr__(self):
        return f"State(rip=0x{self['rip']:x}, rax=0x{self['rax']:x}, cr0=0x{self['cr0']:x})"


def _hex(v: int) -> str:
    return "0x%x" % v


def state_json(s: State) -> dict:
    """The state in ExitScope's state schema (hex strings, segments as objects), without the
    derived "mode"."""
    d = s.as_dict()
    out = {k: _hex(d[k]) for k in _GPRS + ["rip", "rflags"]}
    for seg in _SEGS:
        out[seg] = {f: _hex(d[f"{seg}.{f}"]) for f in ("selector", "base", "limit", "attributes")}
    for t in ("gdtr", "idtr"):
        out[t] = {f: _hex(d[f"{t}.{f}"]) for f in ("base", "limit")}
    for k in _TAIL:
        out[k] = d[k] if k == "cpl" else _hex(d[k])
    return out


# --- SVM exit names (AMD APM vol. 2, appendix C), for tables ---------------------------------

_SVM_NAMES = {
    0x60: "INTR", 0x61: "NMI", 0x62: "SMI", 0x63: "INIT", 0x64: "VINTR", 0x65: "CR0_SEL_WRITE",
    0x66: "IDTR_READ", 0x67: "GDTR_READ", 0x68: "LDTR_READ", 0x69: "TR_READ", 0x6A: "IDTR_WRITE",
    0x6B: "GDTR_WRITE", 0x6C: "LDTR_WRITE", 0x6D: "TR_WRITE", 0x6E: "RDTSC", 0x6F: "RDPMC",
    0x70: "PUSHF", 0x71: "POPF", 0x72: "CPUID", 0x73: "RSM", 0x74: "IRET", 0x75: "SWINT",
    0x76: "INVD", 0x77: "PAUSE", 0x78: "HLT", 0x79: "INVLPG", 0x7A: "INVLPGA", 0x7B: "IOIO",
    0x7C: "MSR", 0x7D: "TASK_SWITCH", 0x7E: "FERR_FREEZE", 0x7F: "SHUTDOWN", 0x80: "VMRUN",
    0x81: "VMMCALL", 0x82: "VMLOAD", 0x83: "VMSAVE", 0x84: "STGI", 0x85: "CLGI", 0x86: "SKINIT",
    0x87: "RDTSCP", 0x88: "ICEBP", 0x89: "WBINVD", 0x8A: "MONITOR", 0x8B: "MWAIT",
    0x8C: "MWAIT_CONDITIONAL", 0x8D: "XSETBV", 0x8E: "RDPRU", 0x400: "NPF",
    0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_NOACCEL",
}
_EXCP = ["DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "9", "TS", "NP", "SS", "GP", "PF",
         "15", "MF", "AC", "MC", "XF", "20", "CP"]


def svm_exit_name(code: int) -> str:
    if code <= 0x0F:
        return f"CR{code}_READ"
    if code <= 0x1F:
        return f"CR{code - 0x10}_WRITE"
    if code <= 0x2F:
        return f"DR{code - 0x20}_READ"
    if code <= 0x3F:
        return f"DR{code - 0x30}_WRITE"
    if code <= 0x5F:
        n = code - 0x40
        return "EXCP_" + (_EXCP[n] if n < len(_EXCP) else str(n))
    if code in _SVM_NAMES:
        return _SVM_NAMES[code]
    if code == MU64:
        return "INVALID"
    if code == MU64 - 1:
        return "NONE"
    return _hex(code)


# --- the file -------------------------------------------------------------------------------

FRAME_HEADER = struct.Struct("<4sIIIQQQHHI")  # 48 bytes
assert FRAME_HEADER.size == 48


class Frame:
    __slots__ = ("offset", "compressed_size", "raw_size", "record_count", "first_seq", "last_seq",
                 "first_vcpu_seq", "vcpu", "flags", "checksum")

    def __repr__(self):
        return (f"Frame(offset={self.offset}, vcpu={self.vcpu}, seq={self.first_seq}..{self.last_seq}, "
                f"records={self.record_count})")


class TraceFile:
    """An open trace: header, frames (from the index, or by scanning a file cut short)."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size
        self._read_header()
        self.frames: List[Frame] = []
        self.cut_short: Optional[Tuple[int, str]] = None
        self.record_count = 0
        if self.size >= self.data_start + 32 and self._pread(self.size - 8, 8) == TRAILER_MAGIC:
            self._read_index()
        else:
            self._scan()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _pread(self, off: int, n: int) -> bytes:
        self._f.seek(off)
        return self._f.read(n)

    # header

    def _read_header(self):
        fixed = self._pread(0, 20)
        if len(fixed) < 8 or fixed[:8] != FILE_MAGIC:
            raise TraceError("foreign", 0, f"{self.path} is not an ExitScope trace (bad magic)")
        if len(fixed) < 20:
            raise TraceError("truncated", len(fixed), "file ends inside the file header")
        major, minor, length, crc = struct.unpack_from("<HHII", fixed, 8)
        if major > MAJOR:
            raise TraceError("newer", 8, f"format version {major}.x is newer than this reader ({MAJOR}.x)")
        if length > 64 << 20:
            raise TraceError("corrupted", 12, f"header JSON length {length} exceeds 64 MiB")
        raw = self._pread(20, length)
        if len(raw) < length:
            raise TraceError("truncated", 20 + len(raw), "file ends inside the header JSON")
        if crc32c(raw) != crc:
            raise TraceError("corrupted", 16, "header JSON checksum mismatch")
        try:
            h = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise TraceError("corrupted", 20, f"header JSON does not parse: {e}")
        if not isinstance(h, dict):
            raise TraceError("corrupted", 20, "header JSON is not an object")
        self.version = (major, minor)
        self.data_start = 20 + length
        self.header_json = h
        self.header = self._normalise_header(h)

    @staticmethod
    def _num(v, default=0) -> int:
        if isinstance(v, str):
            return int(v, 16) if v.lower().startswith("0x") else int(v)
        if isinstance(v, (int, float)):
            return int(v)
        return default

    def _normalise_header(self, h: dict) -> dict:
        """The header with the spec's defaults and hex strings turned into integers."""
        n = self._num
        return {
            "format_version": f"{self.version[0]}.{self.version[1]}",
            "tsc_hz": n(h.get("tsc_hz", 0)),
            "host_cpu": h.get("host_cpu", ""),
            "kernel": h.get("kernel", ""),
            "kvm_backend": h.get("kvm_backend", "unknown"),
            "capabilities": {k: n(v) for k, v in (h.get("capabilities") or {}).items()},
            "cpuid": [{k: (n(v) if k != "name" else v) for k, v in e.items()} for e in h.get("cpuid") or []],
            "memory": [{"gpa": n(m.get("gpa")), "size": n(m.get("size")), "name": m.get("name", "")}
                       for m in h.get("memory") or []],
            "vcpu_count": n(h.get("vcpu_count", 1), 1),
            "image_path": h.get("image_path", ""),
            "image_sha256": h.get("image_sha256", ""),
            "command_line": list(h.get("command_line") or []),
            "symbols": [{"address": n(s.get("address")), "size": n(s.get("size")), "name": s.get("name", "")}
                        for s in h.get("symbols") or []],
            "options": dict(h.get("options") or {}),
            "start_time": h.get("start_time", ""),
        }

    # frames

    def _parse_frame_header(self, b: bytes, off: int) -> Frame:
        (magic, csize, rsize, count, first, last, firstv, vcpu, flags, crc) = FRAME_HEADER.unpack(b)
        if magic != FRAME_MAGIC:
            raise TraceError("corrupted", off, "no frame header here (bad frame magic)")
        if csize > 256 << 20 or rsize > 256 << 20:
            raise TraceError("corrupted", off, "frame larger than 256 MiB")
        if count and (last < first or count > last - first + 1):
            raise TraceError("corrupted", off, f"frame claims {count} records in seq {first}..{last}")
        f = Frame()
        f.offset, f.compressed_size, f.raw_size, f.record_count = off, csize, rsize, count
        f.first_seq, f.last_seq, f.first_vcpu_seq, f.vcpu, f.flags, f.checksum = first, last, firstv, vcpu, flags, crc
        return f

    def _read_index(self):
        t = self._pread(self.size - 32, 32)
        index_off, total, nframes, crc = struct.unpack_from("<QQII", t, 0)
        if crc32c(t[:20]) != crc:
            raise TraceError("corrupted", self.size - 32, "trailer checksum mismatch")
        if not (self.data_start <= index_off and index_off + 12 <= self.size - 32):
            raise TraceError("corrupted", self.size - 32, f"index offset {index_off} outside the file's frame area")
        ih = self._pread(index_off, 12)
        if ih[:4] != INDEX_MAGIC:
            raise TraceError("corrupted", index_off, "no index here (bad index magic)")
        n, icrc = struct.unpack_from("<II", ih, 4)
        if n > 256 << 20 or index_off + 12 + n > self.size - 32:
            raise TraceError("corrupted", index_off, "index runs past the trailer")
        payload = self._pread(index_off + 12, n)
        if crc32c(payload) != icrc:
            raise TraceError("corrupted", index_off, "index checksum mismatch")
        c = _Cursor(payload, 0, len(payload), (index_off,))
        count = c.varint()
        if count != nframes:
            raise TraceError("corrupted", index_off, f"index lists {count} frames, trailer {nframes}")
        records = 0
        for _ in range(count):
            f = Frame()
            f.offset, f.vcpu, f.first_seq, f.last_seq, f.first_vcpu_seq, f.record_count = (
                c.varint(), c.varint(), c.varint(), c.varint(), c.varint(), c.varint())
            if not (self.data_start <= f.offset and f.offset + 48 <= index_off):
                raise TraceError("corrupted", index_off, f"frame offset {f.offset} outside the frame area")
            records += f.record_count
            self.frames.append(f)
        if records != total:
            raise TraceError("corrupted", index_off, f"frames hold {records} records, trailer says {total}")
        self.index_offset = index_off
        self.record_count = total
        self.vcpu_index = []
        for _ in range(c.varint()):
            self.vcpu_index.append({"vcpu": c.varint(), "first_seq": c.varint(), "last_seq": c.varint(),
                                    "record_count": c.varint()})

    def _scan(self):
        off = self.data_start
        reason = None
        while True:
            if self.size - off < 48:
                reason = "file ends inside a frame header" if self.size > off else "file ends after the last frame"
                break
            b = self._pread(off, 48)
            if b[:4] == INDEX_MAGIC:
                reason = "index written, trailer missing"
                break
            if b[:4] != FRAME_MAGIC:
                raise TraceError("corrupted", off, "expected a frame header while scanning a trace cut short")
            f = self._parse_frame_header(b, off)
            end = off + 48 + f.compressed_size
            if end > self.size:
                reason = "file ends inside a frame"
                break
            payload = self._pread(off + 48, f.compressed_size)
            if crc32c(payload, crc32c(b[:44])) != f.checksum:
                if end == self.size:
                    reason = "last frame incomplete"
                    break
                raise TraceError("corrupted", off, "frame checksum mismatch")
            self.frames.append(f)
            self.record_count += f.record_count
            off = end
        self.index_offset = off
        self.cut_short = (off, reason)
        counts: Dict[int, dict] = {}
        for f in self.frames:
            if f.record_count:
                e = counts.setdefault(f.vcpu, {"vcpu": f.vcpu, "first_seq": f.first_seq, "last_seq": f.last_seq,
                                                "record_count": 0})
                e["first_seq"] = min(e["first_seq"], f.first_seq)
                e["last_seq"] = max(e["last_seq"], f.last_seq)
                e["record_count"] += f.record_count
        self.vcpu_index = [counts[v] for v in sorted(counts)]

    def _frame_bytes(self, f: Frame) -> bytes:
        b = self._pread(f.offset, 48)
        if len(b) < 48:
            raise TraceError("truncated", f.offset, "frame header cut short")
        h = self._parse_frame_header(b, f.offset)
        for name in ("vcpu", "first_seq", "last_seq", "first_vcpu_seq", "record_count"):
            if getattr(h, name) != getattr(f, name):
                raise TraceError("corrupted", f.offset, f"frame header's {name} disagrees with the index")
        payload = self._pread(f.offset + 48, h.compressed_size)
        if len(payload) < h.compressed_size:
            raise TraceError("truncated", f.offset, "frame payload cut short")
        if crc32c(payload, crc32c(b[:44])) != h.checksum:
            raise TraceError("corrupted", f.offset, "frame checksum mismatch")
        if zstandard is None:
            raise RuntimeError("reading frames needs the 'zstandard' package (pip install zstandard)")
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=h.raw_size)
        except zstandard.ZstdError as e:
            raise TraceError("corrupted", f.offset, f"zstd: {e}")
        if len(raw) != h.raw_size:
            raise TraceError("corrupted", f.offset, f"frame decompresses to {len(raw)} bytes, header says {h.raw_size}")
        f.raw_size, f.compressed_size, f.flags = h.raw_size, h.compressed_size, h.flags
        return raw

    def decode_frame(self, i: int, stats_out: Optional[list] = None) -> Iterator[dict]:
        """The records of frame `i` (file order), one by one; the frame's STATS items are
        appended to `stats_out` as they are met."""
        return _decode_frame(self._frame_bytes(self.frames[i]), self.frames[i], stats_out)

    def frame_stats(self) -> List[dict]:
        """Every STATS item of the file, in file order (decodes every frame)."""
        out: list = []
        for i in range(len(self.frames)):
            for _ in self.decode_frame(i, out):
                pass
        return out

    def records(self, vcpu: Optional[int] = None) -> Iterator[dict]:
        """All records in global seq order: the merge of the frames described in FORMAT.md."""
        order = sorted((i for i, f in enumerate(self.frames) if f.record_count and (vcpu is None or f.vcpu == vcpu)),
                       key=lambda i: self.frames[i].first_seq)
        heap: list = []  # (seq, frame position, record, iterator)
        p = 0
        while True:
            while p < len(order) and (not heap or self.frames[order[p]].first_seq <= heap[0][0]):
                it = self.decode_frame(order[p])
                r = next(it, None)
                if r is not None:
                    heapq.heappush(heap, (r["seq"], p, r, it))
                p += 1
            if not heap:
                return
            seq, pos, r, it = heapq.heappop(heap)
            yield r
            nxt = next(it, None)
            if nxt is not None:
                heapq.heappush(heap, (nxt["seq"], pos, nxt, it))

    def dataframe(self, vcpu: Optional[int] = None):
        """One row per record with flat columns (pandas). Times in cycles and, with a known TSC
        frequency, handling time in ns (`vmm_ns`)."""
        import pandas as pd

        rows = [flat_record(r) for r in self.records(vcpu)]
        df = pd.DataFrame(rows, columns=FLAT_COLUMNS)
        hz = self.header["tsc_hz"]
        df["vmm_ns"] = (df["handling"] * 1e9 / hz) if hz else float("nan")
        return df


def open_trace(path: str) -> TraceFile:
    return TraceFile(path)


def _null_record(f: Frame) -> dict:
    return {
        "kind": 1, "seq": (f.first_seq - 1) & MU64, "vcpu_seq": (f.first_vcpu_seq - 1) & MU64,
        "tsc_exit": 0, "handling": 0, "kvm_exit_reason": 0, "exit_code": 0, "exit_info1": 0,
        "exit_info2": 0, "exit_int_info": 0, "next_rip": 0, "instruction_start": 0,
        "instruction_bytes": b"", "candidates": 0, "visibility": 0, "code": 0, "note": "",
        "accesses": [], "memory": [],
    }


def _decode_access(c: _Cursor) -> dict:
    space = c.u8()
    if space not in SPACES:
        c.fail(f"access space {space} is not 1, 2 or 3")
    flags = c.u8()
    address = c.varint()
    size = c.u8()
    count = c.varint()
    if count > 0xFFFFFFFF:
        c.fail("access count beyond 32 bits")
    data = c.take(c.varint())
    return {"space": SPACES[space], "is_write": bool(flags & 1), "address": address, "size": size,
            "count": count, "data": data}


def _decode_frame(raw: bytes, f: Frame, stats_out: Optional[list]) -> Iterator[dict]:
    where = (f.offset,)
    ref_state: Optional[List[int]] = None
    ref = _null_record(f)
    table: List[dict] = []
    n_records = 0
    p = 0
    end = len(raw)
    while p < end:
        tag = raw[p]
        c = _Cursor(raw, p + 1, end, where)
        length = c.varint()
        start = c.p
        if length > end - start:
            c.fail(f"item of {length} bytes runs past the frame's end")
        c.end = start + length
        if tag == TAG_KEYFRAME:
            ref_state = _state_delta(c, [0] * 73)
        elif tag == TAG_GUEST_BYTES:
            role = c.u8()
            if role not in ROLES:
                c.fail(f"guest-bytes role {role} is not 1-4")
            gpa = c.varint()
            table.append({"role": ROLES[role], "gpa": gpa, "bytes": c.take(c.end - c.p)})
        elif tag == TAG_STATS:
            s = {"vcpu": c.varint()}
            for k in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7"):
                s[k] = c.varint()
            counters = {}
            for _ in range(c.varint()):
                name = c.string()
                counters[name] = c.varint()
            s["counters"] = counters
            if stats_out is not None:
                stats_out.append(s)
        elif tag == TAG_RECORD:
            if ref_state is None:
                c.fail("record before the frame's keyframe")
            r, ref_state = _decode_record(c, ref, ref_state, table, f)
            n_records += 1
            if n_records > f.record_count:
                c.fail(f"more records than the frame header's {f.record_count}")
            ref = r
            yield _public(r, f.vcpu)
        # any other tag: an item of a newer minor version, skipped
        p = start + length
    if n_records != f.record_count:
        raise TraceError("corrupted", f.offset, f"frame holds {n_records} records, its header says {f.record_count}")


def _decode_record(c: _Cursor, ref: dict, ref_state: List[int], table: List[dict], f: Frame):
    mask = c.varint()
    r = dict(ref)
    r["seq"] = (ref["seq"] + 1) & MU64
    r["vcpu_seq"] = (ref["vcpu_seq"] + 1) & MU64
    r["fragment"] = 0
    r["last_fragment"] = True
    r["state_after"] = None
    r["msr_writes"] = []
    r["access_refused"] = False
    state = ref_state
    has = lambda bit: mask >> bit & 1  # noqa: E731
    if has(0):
        r["tsc_exit"] = _apply(ref["tsc_exit"], c.varint())
    if has(1):
        r["handling"] = _unzigzag(c.varint()) & MU64
    if has(2):
        state = _state_delta(c, ref_state)
    if has(3):
        acc = []
        for a in ref["accesses"]:
            a = dict(a)
            a["data"] = c.take(len(a["data"]))
            acc.append(a)
        r["accesses"] = acc
    if has(4):
        r["seq"] = _apply((ref["seq"] + 1) & MU64, c.varint())
    if has(5):
        r["vcpu_seq"] = _apply((ref["vcpu_seq"] + 1) & MU64, c.varint())
    if has(6):
        r["kind"] = c.u8()
    if r["kind"] not in KINDS:
        c.fail(f"record kind {r['kind']} is not 1-6")
    if has(7):
        r["kvm_exit_reason"] = c.varint()
        if r["kvm_exit_reason"] > 0xFFFFFFFF:
            c.fail("kvmExitReason beyond 32 bits")
    for bit, name in ((8, "exit_code"), (9, "exit_info1"), (10, "exit_info2"), (11, "exit_int_info"),
                      (12, "next_rip"), (13, "instruction_start")):
        if has(bit):
            r[name] = c.varint()
    if has(14):
        n = c.varint()
        if n > 15:
            c.fail(f"{n} instruction bytes (at most 15)")
        r["instruction_bytes"] = c.take(n)
    if has(15):
        r["candidates"] = c.u8()
    if has(16):
        r["visibility"] = c.u8()
    if r["visibility"] not in VISIBILITY:
        c.fail(f"visibility {r['visibility']} is not 0-2")
    r["group"] = r["seq"]
    if has(17):
        r["group"] = (r["seq"] - c.varint()) & MU64
    if has(18):
        r["fragment"] = c.varint()
        if r["fragment"] > 0xFFFFFFFF:
            c.fail("fragment beyond 32 bits")
    if has(19):
        r["last_fragment"] = False
    if has(20):
        r["state_after"] = _state_delta(c, state)
    if has(21):
        r["accesses"] = [_decode_access(c) for _ in range(c.varint())]
    if has(22):
        mem = []
        for _ in range(c.varint()):
            i = c.varint()
            if i >= len(table):
                c.fail(f"guest-bytes index {i} but only {len(table)} items so far")
            mem.append(table[i])
        r["memory"] = mem
    if has(23):
        ws = []
        for _ in range(c.varint()):
            idx = c.varint()
            if idx > 0xFFFFFFFF:
                c.fail("MSR index beyond 32 bits")
            ws.append({"index": idx, "value": c.varint()})
        r["msr_writes"] = ws
    if has(24):
        r["code"] = c.varint()
    if has(25):
        r["note"] = c.string()
    if has(26):
        # 1.1: the VMM refused the MSR access, the guest got #GP(0) (no bytes)
        r["access_refused"] = True
    # bits >= 27: fields of newer minor versions; the caller skips to the item's end
    r["state"] = state
    return r, state


def _public(r: dict, vcpu: int) -> dict:
    out = dict(r)
    out["vcpu"] = vcpu
    out["kind"] = KINDS[r["kind"]]
    out["visibility"] = VISIBILITY[r["visibility"]]
    out["tsc_entry"] = (r["tsc_exit"] + r["handling"]) & MU64
    out["state"] = State(r["state"])
    out["state_after"] = State(r["state_after"]) if r["state_after"] is not None else None
    return out


FLAT_COLUMNS = ["seq", "vcpu", "vcpu_seq", "kind", "kvm_exit_reason", "exit_code", "reason", "exit_info1",
                "exit_info2", "exit_int_info", "next_rip", "rip", "instruction_start", "instruction_bytes",
                "visibility", "group", "fragment", "space", "address", "direction", "size", "count", "value",
                "tsc_exit", "tsc_entry", "handling", "code", "note"]


def flat_record(r: dict) -> dict:
    """The record's scalar fields and its first device access, for a DataFrame row."""
    a = r["accesses"][0] if r["accesses"] else None
    value = int.from_bytes(a["data"][:min(a["size"], 8)], "little") if a and a["data"] else None
    if a is None:
        direction = None
    elif a["space"] == "port":
        direction = "out" if a["is_write"] else "in"
    elif a["space"] == "mmio":
        direction = "write" if a["is_write"] else "read"
    else:
        direction = "wrmsr" if a["is_write"] else "rdmsr"
    return {
        "seq": r["seq"], "vcpu": r["vcpu"], "vcpu_seq": r["vcpu_seq"], "kind": r["kind"],
        "kvm_exit_reason": r["kvm_exit_reason"], "exit_code": r["exit_code"],
        "reason": svm_exit_name(r["exit_code"]) if r["kind"] == "exit" else None,
        "exit_info1": r["exit_info1"], "exit_info2": r["exit_info2"], "exit_int_info": r["exit_int_info"],
        "next_rip": r["next_rip"], "rip": r["state"]["rip"], "instruction_start": r["instruction_start"],
        "instruction_bytes": r["instruction_bytes"].hex(" "), "visibility": r["visibility"],
        "group": r["group"], "fragment": r["fragment"],
        "space": a["space"] if a else None, "address": a["address"] if a else None, "direction": direction,
        "size": a["size"] if a else None, "count": a["count"] if a else None, "value": value,
        "tsc_exit": r["tsc_exit"], "tsc_entry": r["tsc_entry"], "handling": r["handling"],
        "code": r["code"], "note": r["note"],
    }


if __name__ == "__main__":  # a tiny `show`: python3 estrace.py TRACE
    import sys

    t = open_trace(sys.argv[1])
    print(json.dumps(t.header_json, indent=1, sort_keys=True))
    if t.cut_short:
        print(f"cut short at byte {t.cut_short[0]}: {t.cut_short[1]}")
    for r in t.records():
        print(r["seq"], r["vcpu"], r["kind"], svm_exit_name(r["exit_code"]), _hex(r["state"]["rip"]),
              r["tsc_exit"], r["handling"])
