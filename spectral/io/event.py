"""One event folder → the sample the model reads: sampled frames, int16 audio and what decoding had to repair.

The decode stage shards these samples and `spectral predict` (spectral.inference) classifies them, so both see
the same pixels and waveforms from the same files.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from spectral.events import (
    AUDIO_FILE,
    VIDEO_FILE,
    EventError,
    MediaError,
    check_file,
    describe_error,
    load_event,
)
from spectral.io.audio import TARGET_SECONDS, AudioInfo, audio_samples, load_audio, to_pcm16
from spectral.io.errors import is_invalid_media
from spectral.io.video import VideoInfo, load_video
from spectral.runtime.keys import sample_key

KEPT_MISSING = ": missing, kept with the modality masked"  # warning of an event kept without that modality
DECODED_FILES = (VIDEO_FILE, AUDIO_FILE)


def media_warnings(video: VideoInfo | None, audio: AudioInfo | None) -> list[str]:
    """What decoding had to repair in an event, in words; stored in the shard and returned by predict
    (None: that modality is absent)."""
    warnings = []
    if video is not None and video.repeated_frames:
        warnings.append(f"video: {video.repeated_frames} sampled frame(s) could not be decoded; "
                        f"an earlier frame stands in")
    if video is not None and video.corrupt_frames:
        warnings.append(f"video: {video.corrupt_frames} sampled frame(s) decoded with damage (error-concealed)")
    if audio is not None and audio.repaired_samples:
        warnings.append(f"audio: {audio.repaired_samples} sample(s) held NaN/inf and were replaced")
    if audio is not None and audio.clipped_samples:
        warnings.append(f"audio: {audio.clipped_samples} sample(s) at full scale (clipped recording)")
    return warnings


def decode_event(folder: Path, num_frames: int, size: int, backend: str, interpolation: str,
                 audio_seconds: float = TARGET_SECONDS, keep_missing: bool = False, links_inside: bool = False) -> dict:
    """One event's frames ("frames.npy": spectral.io.frames.Frames, 4:2:0 from PyAV, RGB from decord), int16 audio
    and metadata; raises EventError naming the file at fault. Labels are not read. `keep_missing`: a missing, empty or
    undecodable video or audio is left out of the sample and named in json["missing"] with its reason
    (the model masks it), instead of rejecting the event. `links_inside`: links that resolve outside the
    folder holding the event (and its DVC cache) are refused (spectral.events.check_link)."""
    event = load_event(folder, labelled=False, files=() if keep_missing else DECODED_FILES, links_inside=links_inside)
    sample: dict = {"__key__": sample_key(event.name)}
    meta: dict = {"event": event.name}
    missing: dict[str, str] = {}
    video_info = audio_info = None
    try:
        path = check_file(event.path, VIDEO_FILE, links_inside)
        try:
            sample["frames.npy"], video_info = load_video(str(path), num_frames, size, backend, interpolation,
                                                          as_yuv=True)
        except Exception as err:
            if not is_invalid_media(err):  # the machine's failure, not the file's: never recorded (spectral.io.errors)
                raise
            raise MediaError(event.name, VIDEO_FILE, f"cannot decode video: {describe_error(err)}") from None
        meta["video"] = {**asdict(video_info), "backend": backend, "sampled_frames": num_frames}
    except EventError as err:
        if not keep_missing:
            raise
        missing["video"] = str(err)
    try:
        path = check_file(event.path, AUDIO_FILE, links_inside)
        try:
            waveform, audio_info = load_audio(str(path), length=audio_samples(audio_seconds))
        except Exception as err:
            if not is_invalid_media(err):
                raise
            raise MediaError(event.name, AUDIO_FILE, f"cannot decode audio: {describe_error(err)}") from None
        sample["audio.npy"] = to_pcm16(waveform)
        meta["audio"] = asdict(audio_info)
    except EventError as err:
        if not keep_missing:
            raise
        missing["audio"] = str(err)
    meta["warnings"] = media_warnings(video_info, audio_info) + [
        f"{modality}{KEPT_MISSING} ({reason})" for modality, reason in missing.items()]
    if missing:
        meta["missing"] = missing
    sample["json"] = meta
    return sample
