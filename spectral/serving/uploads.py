"""What a client may upload to `spectral serve`, and the typed refusal of anything else.

An upload is an event folder sent as multipart fields named as the folder's files. Every bound
has a default and a flag; a refusal carries the HTTP status and a body that names the file and
why, so a client's mistake is a 4xx with a reason, never a 500. Uploads are written under fixed
names inside a private temporary folder: no client input becomes a path on the server.
"""

from __future__ import annotations

from pathlib import Path

import av
import soundfile as sf

from spectral.events import AUDIO_FILE, SENSORS_FILE, VIDEO_FILE
from spectral.io.video import probe_video
from spectral.serving.config import UploadLimits

UPLOAD_FIELDS = (VIDEO_FILE, AUDIO_FILE, SENSORS_FILE)
EVENT_FIELD = "event"  # optional text field: the name the answer carries (never a path)
UPLOAD_FOLDER = "event_upload"  # the event folder's name on the server, whatever the client sends


class Refusal(Exception):
    """A request the server will not answer with a prediction: an HTTP status and a body naming the cause."""

    def __init__(self, status: int, error: str, file: str | None = None, **extra: object) -> None:
        super().__init__(error)
        self.status, self.body = status, {"error": error, **({"file": file} if file else {}), **extra}


# the leading bytes of the containers each upload may be; anything else is not the media its name claims
_VIDEO_SIGNATURES = ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (0, b"\x1aE\xdf\xa3"),
                     (8, b"AVI "), (0, b"\x47"))
_WAV_SIGNATURES = ((0, b"RIFF", 8, b"WAVE"), (0, b"RF64", 8, b"WAVE"), (0, b"BW64", 8, b"WAVE"))


def check_media_type(name: str, head: bytes) -> None:
    """415 when a file's first bytes are not the kind of media its field names (an MP3 sent as audio.wav,
    a zip as video.mp4). Empty files pass: an empty modality is absent, as in an event folder."""
    if not head:
        return
    if name == VIDEO_FILE and not any(head[at:at + len(magic)] == magic for at, magic in _VIDEO_SIGNATURES):
        raise Refusal(415, "not a video container (MP4/MOV, Matroska/WebM, AVI or MPEG-TS)", VIDEO_FILE)
    if name == AUDIO_FILE and not any(head[a:a + len(m)] == m and head[b:b + len(n)] == n
                                      for a, m, b, n in _WAV_SIGNATURES):
        raise Refusal(415, "not a WAV file (RIFF/RF64 WAVE)", AUDIO_FILE)
    if name == SENSORS_FILE:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 3:  # a multi-byte character cut by the sniffing window is fine
                raise Refusal(415, "not UTF-8 text (CSV)", SENSORS_FILE) from None
        if b"\x00" in head:
            raise Refusal(415, "not text: holds NUL bytes", SENSORS_FILE)


def check_content(folder: Path, limits: UploadLimits) -> None:
    """413 when an uploaded file is within the byte limits but too long or too large to decode: video duration
    and resolution, audio length, sensor rows and line length. Read from headers, before any decoding."""
    video, audio, sensors = (folder / name for name in UPLOAD_FIELDS)
    if video.is_file() and video.stat().st_size:
        try:
            info = probe_video(str(video))
        except (av.error.FFmpegError, ValueError):
            info = None  # undecodable: the predictor says so in its own words
        if info is not None:
            if info.width * info.height > limits.max_video_pixels:
                raise Refusal(413, f"video is {info.width}x{info.height}, over the {limits.max_video_pixels:,}-pixel "
                                   f"limit", VIDEO_FILE)
            seconds = info.total_frames / info.fps if info.fps else 0.0
            if seconds > limits.max_video_seconds:
                raise Refusal(413, f"video lasts {seconds:.1f} s, over the {limits.max_video_seconds:g} s limit",
                              VIDEO_FILE)
    if audio.is_file() and audio.stat().st_size:
        try:
            audio_info = sf.info(str(audio))
        except (sf.LibsndfileError, RuntimeError):
            audio_info = None
        if audio_info is not None and audio_info.duration > limits.max_audio_seconds:
            raise Refusal(413, f"audio lasts {audio_info.duration:.1f} s, over the {limits.max_audio_seconds:g} s "
                               f"limit", AUDIO_FILE)
    if sensors.is_file():
        rows = 0
        with sensors.open("rb") as table:
            for line in table:
                rows += 1
                if len(line) > limits.max_csv_line_bytes:
                    raise Refusal(413, f"line {rows} is over {limits.max_csv_line_bytes:,} bytes", SENSORS_FILE)
                if rows > limits.max_sensor_rows + 1:  # + the header
                    raise Refusal(413, f"over {limits.max_sensor_rows:,} rows", SENSORS_FILE)
