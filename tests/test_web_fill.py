"""
FillProducer's backpressure contract, with a request that is always full.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from cachetier.errors import OriginError, Reason
from cachetier.objects import ObjectHeaders
from cachetier.origin import OriginResponse
from cachetier.store import CacheStore, Handle
from cachetier.sync import Fill
from cachetier.web.bodies import FillProducer


class _FullRequest:
    """
    A request whose client never keeps up: every write fills its buffer.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: FillProducer | None = None
        self.finished = False
        self.aborted = False
        self.transport = self

    def registerProducer(self, producer: FillProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        assert self.producer is not None
        self.producer.pauseProducing()

    def finish(self) -> None:
        self.finished = True

    def abortConnection(self) -> None:
        self.aborted = True


class FillProducerTests(SynchronousTestCase):
    def setUp(self) -> None:
        store = CacheStore.open(os.path.abspath(self.mktemp()))
        fd, _ = store.new_temp()
        handle = Handle(fd)
        self.fill = Fill("a.mp3", used_at=0.0)
        self.fill.begin(
            OriginResponse(
                ObjectHeaders("audio/mpeg"), length=1_000_000, checksum=None, response=None
            ),
            handle,
            store.write,
        )
        handle.release()
        self.addCleanup(self.fill.close)
        self.data = os.urandom(1_000_000)

    def test_a_paused_reader_reads_nothing_more(self) -> None:
        self.fill.write(self.data[:600_000])
        request = _FullRequest()
        producer = FillProducer(request, self.fill, 0, 1_000_000)
        producer.start()
        self.assertEqual([len(w) for w in request.written], [FillProducer.chunk_size])
        # More bytes landing do not wake a paused reader.
        self.fill.write(self.data[600_000:])
        self.assertEqual(len(request.written), 1)
        while request.producer is not None:
            producer.resumeProducing()
        self.assertEqual(b"".join(request.written), self.data)
        self.assertTrue(request.finished)

    def test_a_caught_up_reader_waits_for_the_next_bytes(self) -> None:
        request = _FullRequest()
        producer = FillProducer(request, self.fill, 10, 20)
        producer.start()
        producer.resumeProducing()
        # Nothing to send yet, but the status line and headers go at once.
        self.assertEqual(request.written, [b""])
        self.fill.write(self.data[:15])
        self.assertEqual(request.written, [b"", self.data[10:15]])
        producer.resumeProducing()
        self.fill.write(self.data[15:100])
        self.assertEqual(b"".join(request.written), self.data[10:30])
        self.assertFalse(request.finished)
        producer.resumeProducing()
        self.assertTrue(request.finished)

    def test_failure_aborts_even_a_paused_reader(self) -> None:
        self.fill.write(self.data[:500_000])
        request = _FullRequest()
        FillProducer(request, self.fill, 0, 1_000_000).start()
        self.fill.fail(OriginError(Reason.truncated, "boom"))
        self.assertTrue(request.aborted)
        self.assertFalse(request.finished)
        self.assertEqual(self.fill._followers, set())


class ChecksumHoldBackTests(SynchronousTestCase):
    def test_the_last_byte_waits_for_the_md5_check(self) -> None:
        store = CacheStore.open(os.path.abspath(self.mktemp()))
        fd, _ = store.new_temp()
        handle = Handle(fd)
        data = os.urandom(1000)
        fill = Fill("a.mp3", used_at=0.0)
        response = OriginResponse(
            ObjectHeaders("audio/mpeg"), length=1000, checksum=("md5", b"\0" * 16), response=None
        )
        fill.begin(response, handle, store.write)
        handle.release()
        self.addCleanup(fill.close)
        fill.write(data)
        request = _FullRequest()
        producer = FillProducer(request, fill, 0, 1000)
        producer.start()
        while request.producer is not None and producer._paused:
            producer.resumeProducing()
        self.assertEqual(b"".join(request.written), data[:999])
        self.assertFalse(request.finished)
        fill.fail(OriginError(Reason.checksum, "the body does not match the origin's MD5"))
        self.assertTrue(request.aborted)
        self.assertFalse(request.finished)
