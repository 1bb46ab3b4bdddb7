"""TensorBoard scalar event files, written without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords (length, masked CRC32C of the length, payload, masked
CRC32C of the payload) whose payloads are ``Event`` protocol buffers. Scalars need only four
message fields, so they are encoded here by hand; TensorBoard reads the files as its own.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(wall_time: float, step: int | None = None, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    """An ``Event`` message: wall_time=1 (double), step=2, file_version=3, summary=5."""
    msg = _field(1, 1, struct.pack("<d", wall_time))
    if step is not None:
        msg += _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _length_delimited(3, file_version.encode())
    if scalars:
        # Summary.value=1 (repeated Value); Value.tag=1, Value.simple_value=2 (float).
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode())
                              + _field(2, 5, struct.pack("<f", float(v))))
            for tag, v in scalars.items())
        msg += _length_delimited(5, values)
    return msg


class SummaryWriter:
    """Appends scalar events to ``logdir/events.out.tfevents.<time>.<host>``."""

    def __init__(self, logdir: str | Path):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = self.path.open("ab")
        self._write(encode_event(now, file_version="brain.Event:2"))

    def _write(self, payload: bytes) -> None:
        header = struct.pack("<Q", len(payload))
        self._file.write(header + _masked_crc(header) + payload + _masked_crc(payload))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(encode_event(time.time(), step, scalars=values))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
