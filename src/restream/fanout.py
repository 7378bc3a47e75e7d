"""Relay mode's native fan-out: the verified publisher's RTMP messages go straight to every destination.

In copy mode with only RTMP(S) destinations (``run.relay_native`` decides), no ffmpeg is on the path: the ingest
gate verifies the publisher's key and hands its audio, video and data messages to a ``Feed`` (its sink), and the
feed gives them to one ``dualingest.Fed`` per assigned relay slot. Each of those publishes to its destination with
the exact key over its own connection(s) (``dualingest._Leg``): its own 4 MiB write buffer that drops to the next
keyframe on overflow, its own reconnection and stall watch, the slot relay's events. A destination that connects
or reconnects mid-stream gets the metadata and decoder configuration first, then media from a keyframe. Each
message is serialized once per (stream id, chunk size) and the same bytes are written to every leg.

Timestamps: like ffmpeg's ``-c copy`` (which this replaces), each publisher session's stream starts at 0 at every
destination (the session's first media timestamp is subtracted), and each publisher session is a new publish.

The feed is a publisher session; the slot relay keeps the assignment, states, byte counts, the stop and its drain.
A slot assigned while the feed is open (a live edit) joins it at once. Used from the event loop's thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from restream import dualingest, ingest, rtmp

if TYPE_CHECKING:
    from restream.slotrelay import SlotRelay, Upstream

GOP_MAX = 8 * 1024 * 1024  # the kept group of pictures above this: nothing kept until the next keyframe
BACKOFF_S = (1.0,)  # a destination's reconnection cadence (what ffmpeg's fifo recovery did on the slot path)
_MEDIA = frozenset({rtmp.AUDIO, rtmp.VIDEO, rtmp.DATA_AMF0, rtmp.DATA_AMF3})
AGGREGATE = 22
# what ffmpeg's rtmp output sends in its connect (restream's ffmpeg on the slot path: the servers see the same)
CONNECT = {"type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)"}
_VIDEO_CODECS = {2: "flv1", 3: "flashsv", 4: "vp6f", 5: "vp6a", 6: "flashsv2", 7: "h264", 12: "hevc", 13: "av1"}
_AUDIO_CODECS = {0: "pcm", 1: "adpcm_swf", 2: "mp3", 3: "pcm_s16le", 4: "nellymoser", 5: "nellymoser",
                 6: "nellymoser", 7: "pcm_alaw", 8: "pcm_mulaw", 10: "aac", 11: "speex", 14: "mp3", 15: "device"}
_ENHANCED = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9"}
STREAMABLE_VIDEO = ("h264", "hevc", "av1")


def codec_of(m: rtmp.Message) -> str | None:
    """Pure: the codec of an FLV audio/video message ("h264", "aac", …; None for anything else)."""
    p = m.payload
    if not p:
        return None
    if m.type_id == rtmp.VIDEO:
        if p[0] & 0x80:  # enhanced RTMP: a FourCC
            return _ENHANCED.get(bytes(p[1:5]), bytes(p[1:5]).decode("latin-1"))
        return _VIDEO_CODECS.get(p[0] & 0x0F, f"codec {p[0] & 0x0F}")
    if m.type_id == rtmp.AUDIO:
        return _AUDIO_CODECS.get(p[0] >> 4, f"codec {p[0] >> 4}")
    return None


def codec_warning(kind: str, codec: str) -> str | None:
    """Pure: the warning for a publisher's ``kind`` ("video"/"audio") in a codec platforms will not take (both
    paths: ffmpeg's log names the codec there, the message here)."""
    if (kind == "video" and codec in STREAMABLE_VIDEO) or (kind == "audio" and codec == "aac"):
        return None
    return (f"the publisher sends {kind} as {codec}; platforms expect H.264 (or HEVC/AV1 where accepted) with AAC: "
            "set your encoder to those, or restart with --transcode")


def codec_problem(m: rtmp.Message) -> str | None:
    """Pure: ``codec_warning`` for one of the publisher's audio/video messages."""
    codec = codec_of(m)
    if codec is None:
        return None
    return codec_warning("video" if m.type_id == rtmp.VIDEO else "audio", codec)


class Retimer:
    """Pure: a publisher session's timestamps from 0 (its first media message's timestamp subtracted)."""

    __slots__ = ("base",)

    def __init__(self) -> None:
        self.base: int | None = None

    def __call__(self, m: rtmp.Message) -> rtmp.Message:
        if self.base is None:
            self.base = m.timestamp
        if not self.base:
            return m
        return rtmp.Message(m.csid, max(0, m.timestamp - self.base), m.type_id, m.stream_id, m.payload)


class Destination(dualingest.Fed):
    """One destination's share of a feed (one relay slot)."""

    gone_text = "the publisher left before the destination accepted the stream"

    def __init__(self, relay: "SlotRelay", slot: int, upstream: "Upstream", feed: "Feed") -> None:
        super().__init__(relay, slot, upstream, backoff=BACKOFF_S)
        self.connect_obj = dict(CONNECT)
        self.headers = dict(feed.headers)
        self.has_video = feed.has_video
        self.feed = feed

    def backlog(self) -> dualingest.Media:
        return self.feed.gop


class Feed:
    """One verified publisher's session, fanned out: the ingest gate's sink (``messages``, ``is_closing``,
    ``close``, ``drain``)."""

    def __init__(self, relay: "SlotRelay", on_close: Callable[[], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.relay = relay
        self.on_close, self.warn = on_close, warn
        self.dests: list[Destination] = []
        self.headers: dict[str, rtmp.Message] = {}
        self.has_video = False
        self.closed = False
        self.retime = Retimer()
        self.frames = 0  # video frames passed on (decoder configurations not counted)
        self.last_ts = 0  # the latest media timestamp (ms, from the session's start)
        # the media since the latest keyframe (before the first one: the audio and data since the start), what a
        # destination that goes live gets first: so a destination that connects after the publisher started (all
        # of them, at the start of a session: ~0.3 s later) misses nothing, and one that reconnects starts at once
        # on a keyframe
        self.gop: dualingest.Media = []
        self.gop_bytes = 0
        self.keyed = False  # a keyframe came in this session
        self._checked: set[int] = set()  # message types whose codec was checked
        relay.feed = self
        for slot, up in enumerate(relay._assigned):
            if up is not None:
                self.add(slot, up)

    def add(self, slot: int, upstream: "Upstream") -> None:
        """A destination joins (at the start, or assigned while live): it connects now."""
        if self.closed:
            return
        relay = self.relay
        dest = Destination(relay, slot, upstream, self)
        self.dests = [d for d in self.dests if not d.over]
        self.dests.append(dest)
        relay._duals[slot].add(dest)
        relay._count[slot] += 1
        if upstream.backup_url and not upstream.both and relay._down_since[slot] is None:
            relay._down_since[slot] = time.monotonic()  # trying: the failover clock runs
        for leg in dest.legs:
            leg.start()

    def messages(self, msgs: list[rtmp.Message]) -> None:
        """The publisher's media and data messages, in order."""
        batch: dualingest.Media = []
        if any(m.type_id == AGGREGATE for m in msgs):  # each part on its own (a keyframe must be seen as one)
            msgs = [p for m in msgs for p in (ingest.aggregate_parts(m) if m.type_id == AGGREGATE else (m,))]
        for m in msgs:
            if m.type_id not in _MEDIA:
                continue
            m = self.retime(m)
            kind = dualingest.header_kind(m)
            if kind is not None:
                self.headers[kind] = m
            if m.type_id == rtmp.VIDEO:
                self.has_video = True
                if kind is None:
                    self.frames += 1
            if m.timestamp > self.last_ts:
                self.last_ts = m.timestamp
            if m.type_id in (rtmp.AUDIO, rtmp.VIDEO) and m.type_id not in self._checked:
                self._checked.add(m.type_id)
                problem = codec_problem(m)
                if problem and self.warn is not None:
                    self.warn(problem)
            item = (m, kind, dualingest.Wire(m))
            batch.append(item)
            if kind is None:
                self._keep(item)
        if batch:
            cache: dualingest.Joined = {}  # each destination that takes the whole batch writes the same bytes
            for dest in self.dests:
                if not dest.over:
                    dest.media(batch, cache)

    def _keep(self, item: tuple) -> None:
        m = item[0]
        if m.type_id == rtmp.VIDEO and dualingest.is_keyframe(m):
            if self.keyed or self.gop_bytes < 0:
                self.gop, self.gop_bytes = [], 0
            self.keyed = True  # (the first one: the audio before it stays, it belongs to the start)
        elif self.gop_bytes < 0 or (m.type_id == rtmp.VIDEO and not self.keyed):
            return  # over GOP_MAX, or a picture before any keyframe: nothing to start a picture from
        self.gop.append(item)
        self.gop_bytes += len(m.payload)
        if self.gop_bytes > GOP_MAX:
            self.gop, self.gop_bytes = [], -1

    def is_closing(self) -> bool:
        return self.closed

    async def drain(self) -> None:
        """Never waits: a destination that cannot keep up drops to its next keyframe instead."""

    def close(self) -> None:
        """The publisher's session is over (or restream is stopping): every destination ends its stream in order
        (FCUnpublish, deleteStream, its last bytes drained) or, not live yet, stops trying."""
        if self.closed:
            return
        self.closed = True
        if self.relay.feed is self:
            self.relay.feed = None
        for dest in self.dests:
            if not dest.over:
                dest.unpublished = True
                dest._end(in_order=True, closing=False)
        if self.on_close is not None:
            self.on_close()
