"""Platform presets: ingest URLs and encoding limits, as data.

Sources: obs-studio plugins/rtmp-services/data/services.json and the platforms' own documentation
(collected 2026-11-27; see docs). ``None`` means the platform does not publish a figure or we could not verify it.
"""

from __future__ import annotations

from collections import namedtuple

# A named tuple, not a dataclass: `restream show` reads a preset's title, and importing dataclasses costs it ~15 ms.
_FIELDS = (
    "name", "title",
    "rtmp_url",  # default ingest over RTMP (None: RTMPS only, or per account)
    "rtmps_url",  # default ingest over RTMPS (None: not offered, or per account)
    "url_required",  # the platform hands out the URL per account or event: --url must be given
    "max_video_kbps", "keyframe_s", "audio_rate", "max_audio_kbps", "note",
    "backup_url",  # a second ingest for the same key (``restream add NAME --backup``)
)


class Platform(namedtuple("Platform", _FIELDS, defaults=(None, "", None))):
    __slots__ = ()
    name: str
    title: str
    rtmp_url: str | None
    rtmps_url: str | None
    url_required: bool
    max_video_kbps: int | None
    keyframe_s: float | None
    audio_rate: int | None
    max_audio_kbps: int | None
    note: str
    backup_url: str | None

    @property
    def default_url(self) -> str | None:
        return self.rtmp_url or self.rtmps_url


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform("youtube", "YouTube Live", "rtmp://a.rtmp.youtube.com/live2", None, False, 12000, 2, 48000,
                 note="backup: rtmp://b.rtmp.youtube.com/live2?backup=1",
                 backup_url="rtmp://b.rtmp.youtube.com/live2?backup=1"),
        Platform("youtube-rtmps", "YouTube Live (RTMPS)", None, "rtmps://a.rtmps.youtube.com:443/live2", False,
                 12000, 2, 48000),
        Platform("twitch", "Twitch", "rtmp://ingest.global-contribute.live-video.net/app", None, False, 6000, 2,
                 48000, 320),
        Platform("twitch-rtmps", "Twitch (RTMPS)", None, "rtmps://ingest.global-contribute.live-video.net/app",
                 False, 6000, 2, 48000, 320),
        Platform("facebook", "Facebook Live", None, "rtmps://live-api-s.facebook.com:443/rtmp/", False, 9000, 2,
                 48000, note="RTMPS only"),
        Platform("kick", "Kick", None, None, True, None, 2, 48000,
                 note="RTMPS only; URL per account: rtmps://<id>.global-contribute.live-video.net/app"),
        Platform("vimeo", "Vimeo", "rtmp://rtmp.cloud.vimeo.com/live", None, False, 5000, 2, 48000,
                 note="URL and key per event"),
        Platform("x", "X (Media Studio)", None, None, True, 12000, 3, 48000, 128,
                 note="URL per region or source, e.g. rtmp://<region>.pscp.tv:80/x"),
        Platform("trovo", "Trovo", "rtmp://livepush.trovo.live/live/", None, False, 9000, 2, 48000, 160),
        Platform("linkedin", "LinkedIn Live", None, None, True, 3500, 2, 48000, note="URL per event"),
        Platform("apivideo", "api.video", "rtmp://broadcast.api.video/s", None, False, 20000, 2, 44100),
        Platform("apivideo-rtmps", "api.video (RTMPS)", None, "rtmps://broadcast.api.video:1936/s", False, 20000,
                 2, 44100),
    )
}

ALIASES = {"twitter": "x", "api.video": "apivideo", "fb": "facebook", "yt": "youtube"}


def get(name: str | None) -> Platform | None:
    if not name:
        return None
    key = name.lower()
    return PLATFORMS.get(ALIASES.get(key, key))
