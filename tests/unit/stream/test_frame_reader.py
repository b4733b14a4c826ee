"""The fetch drain's connection reader (``fetch._FrameReader``) against ``asyncio.StreamReader``:
the same bytes for every read, whatever the chunks the socket delivers, and the same end of
stream, errors and cancellation in the middle of a frame."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.model import extensions
from worker.stream import fetch

compiled: Any = extensions.load("worker.stream._kafka_records")
needs_native = pytest.mark.skipif(
    compiled is None, reason="compiled record parser not built (or SPANMETRICS_NO_EXTENSIONS set)"
)


@pytest.fixture(autouse=True)
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames from 16 bytes on take the frame path (the worker: 64 KiB), up to 4 KiB."""
    monkeypatch.setattr(fetch, "_FRAME_LEAST", 16)
    monkeypatch.setattr(fetch, "_FRAME_MOST", 4096)


class _Transport(asyncio.Transport):
    """Records flow control, as the selector transport would act on it."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


def _reader(cls: type[asyncio.StreamReader], limit: int) -> tuple[asyncio.StreamReader, _Transport]:
    reader = cls(limit=limit)
    transport = _Transport()
    reader.set_transport(transport)
    return reader, transport


async def _frames(reader: asyncio.StreamReader) -> list[bytes]:
    """aiokafka's read loop (``AIOKafkaConnection._read``): a 4-byte size, then the frame."""
    out = []
    while True:
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            out.append(b"EOF:" + exc.partial)
            return out
        size = int.from_bytes(head, "big")
        try:
            out.append(await reader.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            out.append(b"PARTIAL:" + exc.partial + b":" + str(exc.expected).encode())
            return out


async def _run(cls: type[asyncio.StreamReader], chunks: list[bytes], limit: int) -> tuple[list[bytes], int]:
    reader, transport = _reader(cls, limit)
    task = asyncio.ensure_future(_frames(reader))
    for chunk in chunks:
        await asyncio.sleep(0)
        reader.feed_data(chunk)
    await asyncio.sleep(0)
    reader.feed_eof()
    return await task, transport.pauses


frame_sizes = st.lists(st.one_of(st.integers(0, 40), st.integers(16, 5000)), min_size=1, max_size=8)


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=frame_sizes,
    cuts=st.lists(st.integers(1, 700), max_size=60),
    limit=st.sampled_from([8, 64, 1 << 16]),
)
def test_the_same_frames_as_asyncio_whatever_the_chunks(
    sizes: list[int], cuts: list[int], limit: int
) -> None:
    """Frames of every size (small ones through asyncio's buffer, large ones straight into their
    bytes, beyond _FRAME_MOST through the buffer again), cut into random chunks that straddle
    frames, the stream ending at a random place (a partial frame or header)."""
    stream = b"".join(
        size.to_bytes(4, "big") + bytes((n * 7 + size) % 256 for n in range(size)) for size in sizes
    )
    stream = stream[: max(0, len(stream) - (cuts[0] if cuts and cuts[0] % 3 == 0 else 0))]
    chunks, at = [], 0
    for cut in cuts or [len(stream)]:
        chunks.append(stream[at : at + cut])
        at += cut
    chunks.append(stream[at:])
    chunks = [chunk for chunk in chunks if chunk]
    expected, _ = asyncio.run(_run(asyncio.StreamReader, chunks, limit))
    got, _ = asyncio.run(_run(fetch._FrameReader, chunks, limit))
    assert got == expected


@needs_native
def test_a_large_frame_neither_pauses_the_socket_nor_wakes_the_reader_per_chunk() -> None:
    async def scenario() -> tuple[int, int, int]:
        reader, transport = _reader(fetch._FrameReader, 64)
        payload = bytes(range(256)) * 12  # 3,072 bytes
        task = asyncio.ensure_future(reader.readexactly(len(payload)))
        await asyncio.sleep(0)
        wakeups = 0
        for at in range(0, len(payload), 100):
            reader.feed_data(payload[at : at + 100])
            waiter = reader._waiter  # type: ignore[attr-defined]
            wakeups += waiter is None or waiter.done()
            await asyncio.sleep(0)
        assert await task == payload
        base, base_transport = _reader(asyncio.StreamReader, 64)
        base_task = asyncio.ensure_future(base.readexactly(len(payload)))
        for at in range(0, len(payload), 100):
            await asyncio.sleep(0)
            base.feed_data(payload[at : at + 100])
        assert await base_task == payload
        return transport.pauses, wakeups, base_transport.pauses

    pauses, wakeups, base_pauses = asyncio.run(scenario())
    assert (pauses, wakeups) == (0, 1) and base_pauses > 10


@needs_native
@pytest.mark.parametrize("how", ["error", "cancel"])
def test_an_error_or_a_cancellation_mid_frame_leaves_what_arrived_readable(how: str) -> None:
    """As asyncio's reader: the bytes received stay in the stream for the next read (after a
    cancellation), or the error is raised to the reader."""

    async def scenario(cls: type[asyncio.StreamReader]) -> Any:
        reader, _ = _reader(cls, 64)
        task = asyncio.ensure_future(reader.readexactly(100))
        await asyncio.sleep(0)
        reader.feed_data(b"a" * 30)
        await asyncio.sleep(0)
        if how == "error":
            reader.set_exception(ConnectionResetError("gone"))
            with pytest.raises(ConnectionResetError):
                await task
            return reader._buffer  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reader.feed_data(b"b" * 80)
        # (a bounded wait: bytes lost would leave the read waiting for ever)
        return await asyncio.wait_for(reader.readexactly(100), 5), await reader.readexactly(10)

    assert asyncio.run(scenario(fetch._FrameReader)) == asyncio.run(scenario(asyncio.StreamReader))


@needs_native
def test_the_frame_copies_what_it_lacks_and_hands_its_bytes_over_once() -> None:
    frame = compiled.Frame(5)
    assert (frame.fill(b"abc"), frame.full, frame.partial()) == (3, False, b"abc")
    with pytest.raises(ValueError):
        frame.take()
    assert frame.fill(memoryview(b"defgh")[1:]) == 2 and frame.full
    assert frame.take() == b"abcef"
    with pytest.raises(ValueError):
        frame.take()
    with pytest.raises(ValueError):
        compiled.Frame(-1)
    assert compiled.Frame(0).take() == b""


@needs_native
@pytest.mark.parametrize("complete", [True, False])
def test_installed_only_over_the_stream_reader_it_was_written_against(
    monkeypatch: pytest.MonkeyPatch, complete: bool
) -> None:
    """A Python whose StreamReader lacks a part the frame reader uses keeps asyncio's reader."""
    from aiokafka import conn as aiokafka_conn

    protocol = aiokafka_conn.AIOKafkaProtocol
    while getattr(protocol, "_frame_reader", False):  # installed by an earlier test: aiokafka's own
        protocol = protocol.__bases__[0]
    monkeypatch.setattr(aiokafka_conn, "AIOKafkaProtocol", protocol)
    if not complete:
        monkeypatch.setattr(
            fetch, "_STREAM_READER_PARTS", (*fetch._STREAM_READER_PARTS, "_gone_in_a_later_python")
        )

    async def swapped() -> tuple[type, bool]:
        conn = type("Conn", (), {})()
        conn._reader = asyncio.StreamReader()  # type: ignore[attr-defined]
        consumer = type("Consumer", (), {})()
        consumer._client = type("Client", (), {"_conns": {1: conn}})()  # type: ignore[attr-defined]
        fetch._install_frame_reader(consumer)  # type: ignore[arg-type]
        return type(conn._reader), getattr(aiokafka_conn.AIOKafkaProtocol, "_frame_reader", False)  # type: ignore[attr-defined]

    reader_type, protocol_swapped = asyncio.run(swapped())
    if complete:
        assert reader_type is fetch._FrameReader and protocol_swapped
    else:
        assert reader_type is asyncio.StreamReader and not protocol_swapped
