"""ResumeBuffer: what a resumed Gemini session lacks, by message index or by arrival time."""

from __future__ import annotations

from typing import Any

from providers.gemini.resume import MAX_RESENT_AUDIO_BYTES, Resent, ResumeBuffer
from providers.gemini.translator import GeminiTranslator

TEXT = {"realtimeInput": {"text": "hi"}}
END = {"realtimeInput": {"audioStreamEnd": True}}


def audio_frame(pcm: bytes) -> dict[str, Any]:
    return GeminiTranslator.audio_frame(pcm)


def buffer(**changes: Any) -> ResumeBuffer:
    options = {"max_age_s": 10.0, "max_bytes": 1_000_000, "margin_s": 0.2, **changes}
    return ResumeBuffer(**options)


def take_audio(buf: ResumeBuffer, pcm: bytes, inputs: int, now: float) -> None:
    buf.taken(frame=audio_frame(pcm), audio=pcm, size=len(pcm), inputs=inputs, now=now)


def take(buf: ResumeBuffer, frame: dict[str, Any], inputs: int, now: float) -> None:
    buf.taken(frame=frame, audio=None, size=20, inputs=inputs, now=now)


def resent_audio(frames: list[Resent]) -> list[bytes | None]:
    return [frame.audio for frame in frames]


def test_the_consumed_index_forgets_exactly_what_the_handle_includes() -> None:
    buf = buffer()
    buf.connection_opened()  # setup: message 0
    for i in range(1, 6):  # messages 1..5, one caller frame each
        take_audio(buf, bytes([i]) * 4, inputs=i, now=float(i))
    buf.handle_issued(3, now=100.0)  # the time does not matter with an index
    assert buf.inputs == 3
    buf.connection_opened()
    frames = buf.resend(audio_frame)
    assert resent_audio(frames) == [bytes([4]) * 4 + bytes([5]) * 4]  # merged, in order
    assert frames[0].inputs == 5
    assert frames[0] == audio_frame(bytes([4]) * 4 + bytes([5]) * 4)  # a plain wire frame


def test_without_an_index_the_margin_before_the_arrival_is_kept() -> None:
    buf = buffer(margin_s=0.2)
    buf.connection_opened()
    take_audio(buf, b"a", inputs=1, now=1.0)
    take_audio(buf, b"b", inputs=2, now=1.85)
    take_audio(buf, b"c", inputs=3, now=1.95)  # in flight when the server took its snapshot?
    buf.handle_issued(None, now=2.0)
    assert buf.inputs == 1  # only what was sent 0.2 s before the handle arrived counts as in
    buf.connection_opened()
    assert resent_audio(buf.resend(audio_frame)) == [b"bc"]


def test_an_index_on_a_new_connection_counts_from_its_setup() -> None:
    buf = buffer()
    buf.connection_opened()
    for i in range(1, 4):
        take_audio(buf, b"x", inputs=i, now=float(i))
    buf.connection_opened()  # resumed: 1..3 are only re-sendable now
    buf.handle_issued(0, now=10.0)  # the new connection's first handle: nothing consumed yet
    buf.handle_issued(None, now=99.0)  # nor can a timed one take what is waiting to be re-sent
    frames = buf.resend(audio_frame)
    assert resent_audio(frames) == [b"xxx"] and buf.inputs == 0
    for frame in frames:  # the new socket takes them: messages 1.. of this connection
        buf.taken(frame=frame, audio=None, size=3, inputs=0, now=11.0)
    take_audio(buf, b"y", inputs=4, now=12.0)
    buf.handle_issued(1, now=13.0)
    assert buf.inputs == 3  # a re-sent message keeps the caller position it carries
    assert buf.stats.resent_messages == 1
    buf.connection_opened()
    assert resent_audio(buf.resend(audio_frame)) == [b"y"]


def test_control_messages_keep_their_place_among_the_audio() -> None:
    buf = buffer()
    buf.connection_opened()
    take_audio(buf, b"a", inputs=1, now=1.0)
    take(buf, TEXT, inputs=1, now=1.0)
    take_audio(buf, b"b", inputs=2, now=1.0)
    take_audio(buf, b"c", inputs=3, now=1.0)
    take(buf, END, inputs=3, now=1.0)
    buf.connection_opened()
    frames = buf.resend(audio_frame)
    assert [dict(f) for f in frames] == [
        audio_frame(b"a"),
        TEXT,
        audio_frame(b"bc"),
        END,
    ]
    assert [f.inputs for f in frames] == [1, 1, 3, 3]
    assert buf.resend(audio_frame) == []  # handed out once


def test_long_resent_audio_is_merged_into_bounded_messages() -> None:
    buf = buffer()
    buf.connection_opened()
    chunk = b"\x00" * 640
    count = MAX_RESENT_AUDIO_BYTES // 640 + 10
    for i in range(count):
        take_audio(buf, chunk, inputs=i + 1, now=1.0)
    buf.connection_opened()
    frames = buf.resend(audio_frame)
    assert len(frames) == 2
    assert b"".join(f.audio or b"" for f in frames) == chunk * count
    assert all(len(f.audio or b"") <= MAX_RESENT_AUDIO_BYTES for f in frames)
    assert frames[-1].inputs == count


def test_the_bounds_drop_the_oldest_and_count_them() -> None:
    buf = buffer(max_age_s=1.0, max_bytes=10)
    buf.connection_opened()
    take_audio(buf, b"aaaa", inputs=1, now=0.0)
    take_audio(buf, b"bbbb", inputs=2, now=0.5)
    assert buf.stats.dropped_messages == 0
    assert buf.taken(frame=audio_frame(b"c"), audio=b"cccc", size=4, inputs=3, now=1.2) == 1
    stats = buf.stats
    assert (stats.dropped_messages, stats.dropped_bytes) == (1, 4)  # too old, and 12 > 10
    assert (stats.buffered_messages, stats.buffered_bytes) == (2, 8)
    buf.connection_opened()
    assert resent_audio(buf.resend(audio_frame)) == [b"bbbbcccc"]
    assert buf.stats.buffered_bytes == 0


def test_a_new_session_resends_nothing() -> None:
    buf = buffer()
    buf.connection_opened()
    take_audio(buf, b"a", inputs=1, now=1.0)
    buf.connection_opened()
    buf.restart(inputs=1)  # the handle was refused: a seeded new session
    assert buf.resend(audio_frame) == []
    assert buf.inputs == 1 and buf.stats.buffered_bytes == 0
