"""Exact, seek-free, upright frame sampling from any video file, with two interchangeable decoders.

The spec seeks once per wanted frame (cv2), which re-decodes from the previous keyframe
every time. Here a clip is decoded once, front to back, keeping the wanted indices and
stopping after the last one. Frame indices are counted from demuxed packets, not the
container's frame-count header, which is missing (WebM) or wrong in real files.

Phones store portrait video as landscape frames plus a display matrix; frames come out
rotated as a player shows them, from both decoders. Scaling uses swscale's bit-exact,
accurately rounded C paths: its default SIMD paths are not bit-exact and differ between
CPUs, and these bytes are hashed by DVC. PyAV scales the frame's own 4:2:0 planes (half the
samples of RGB) and keeps them so (spectral.io.yuv420.Yuv420Frames) until RGB is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import pairwise

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter
from PIL import Image

from spectral.io.errors import InvalidMediaError
from spectral.io.yuv420 import Yuv420Frames, kept_matrix

_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "area": Image.Resampling.BOX}
_SWS_EXACT = Interpolation.BITEXACT | Interpolation.ACCURATE_RND
SWS_FILTERS = {"bilinear": Interpolation.BILINEAR | _SWS_EXACT, "bicubic": Interpolation.BICUBIC | _SWS_EXACT,
                "area": Interpolation.AREA | _SWS_EXACT}


@dataclass(frozen=True)
class VideoInfo:
    """What the source clip was; travels into the shard metadata."""

    total_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration_s: float
    rotation: int = 0        # counter-clockwise degrees the display matrix turns the coded frames (0/90/180/270)
    decoded_frames: int = 0   # frames the decoder produced up to the last sampled index
    repeated_frames: int = 0  # sampled positions whose frame could not be decoded: an earlier frame stands in
    corrupt_frames: int = 0   # sampled frames the decoder flagged corrupt (error-concealed damage)


def _quarter_turns(degrees: float) -> int:
    """Counter-clockwise quarter turns for a display rotation; other angles are not something phones write."""
    turns = round(degrees / 90.0)
    if abs(degrees - 90.0 * turns) > 1.0:
        raise InvalidMediaError(f"display matrix rotates by {degrees} degrees; only multiples of 90 are supported")
    return turns % 4


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """[N, H, W, 3] frames turned as the display matrix says, so they look as any player shows them."""
    turns = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(frames, turns, axes=(1, 2))) if turns else frames


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over [0, total_frames-1]; repeats when the clip is short."""
    if total_frames <= 0:
        raise InvalidMediaError("video has no frames")
    return np.round(np.linspace(0, total_frames - 1, num_frames)).astype(np.int64)


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise InvalidMediaError(f"the {container.format.name} container holds no video stream")
    return container.streams.video[0]


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> list[av.Packet]:
    """Every non-empty packet of the stream, in decode order: one pass over the file gives the frame count
    (the container's header is missing in WebM and wrong in real files) and what decoding then reads."""
    return [packet for packet in container.demux(stream) if packet.size > 0]


def _info(stream: av.video.stream.VideoStream, frames: int, rotation: int) -> VideoInfo:
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    return VideoInfo(frames, fps, stream.codec_context.width, stream.codec_context.height,
                     stream.codec_context.name, frames / fps if fps else 0.0, rotation)


def probe_video(path: str) -> VideoInfo:
    """Frame count from demuxed packets; rotation from the first decodable frame's display matrix."""
    with av.open(path) as container:
        stream = _video_stream(container)
        packets = _demux(container, stream)
        rotation = 0
        for packet in packets:
            try:
                frames = stream.codec_context.decode(packet)
            except av.error.FFmpegError:
                continue  # a damaged first packet: the next decodable frame tells the rotation
            if frames:
                rotation = _quarter_turns(frames[0].rotation) * 90
                break
        return _info(stream, len(packets), rotation)


_IRAP_NAL_TYPES = {"h264": {5}, "hevc": {16, 17, 18, 19, 20, 21}}  # H.264 IDR; HEVC BLA, IDR, CRA
_KEYFRAME_RESETS = {"vp8", "vp9"}  # a VP8/VP9 keyframe refreshes every reference and frames are not reordered


def _nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """Bytes of each NAL unit's length prefix in MP4-style (avcC/hvcC) packets; None for Annex B start codes."""
    offset = {"h264": 4, "hevc": 21}[codec]
    if not extradata or extradata[0] != 1 or len(extradata) <= offset:
        return None
    return (extradata[offset] & 3) + 1


def _nal_headers(data: bytes, length_size: int | None) -> Iterator[int]:
    """The first header byte of each NAL unit in one packet."""
    if length_size is None:
        start = data.find(b"\x00\x00\x01")
        while 0 <= start < len(data) - 3:
            yield data[start + 3]
            start = data.find(b"\x00\x00\x01", start + 3)
        return
    position = 0
    while position + length_size < len(data):
        yield data[position + length_size]
        position += length_size + int.from_bytes(data[position:position + length_size], "big")


def _clean_start(packet: av.Packet, codec: av.codec.context.CodecContext, length_size: int | None) -> bool:
    """Whether decoding may start at this packet and give every frame shown from it on exactly as a decode from
    the first packet does: any frame of an intra-only codec, an H.264 IDR, an HEVC IRAP (its leading pictures
    are shown earlier, never wanted after a jump), a VP8/VP9 keyframe. Other keyframes (H.264 recovery points,
    AV1 keyframes, ...) are never jumped to: their later frames may use pictures from before them."""
    if codec.codec.intra_only:
        return True
    if not packet.is_keyframe:
        return False
    if codec.name in _KEYFRAME_RESETS:
        return True
    if codec.name not in _IRAP_NAL_TYPES:
        return False
    shift, mask = (1, 0x3F) if codec.name == "hevc" else (0, 0x1F)
    return any((header >> shift) & mask in _IRAP_NAL_TYPES[codec.name]
               for header in _nal_headers(bytes(packet), length_size))


@dataclass
class _DecodePlan:
    """Where each packet's frame is shown (its rank by pts) and where decoding may restart cleanly.

    Frames are identified by pts only when every packet has a distinct one; otherwise (raw
    streams, broken muxers) there is no plan and the clip is decoded front to back, frames
    counted in the order they come out."""

    shown_at: list[int]                 # display index of each packet, in decode order
    by_pts: dict[int, int]              # pts -> display index
    starts: list[tuple[int, int]]       # (display index, packet position) of the clean starts, both increasing

    @classmethod
    def build(cls, packets: list[av.Packet], codec: av.codec.context.CodecContext) -> _DecodePlan | None:
        pts = [packet.pts for packet in packets]
        if None in pts or len(set(pts)) != len(pts):
            return None
        by_pts = {value: rank for rank, value in enumerate(sorted(pts))}
        shown_at = [by_pts[value] for value in pts]
        length_size = _nal_length_size(codec.name, codec.extradata) if codec.name in _IRAP_NAL_TYPES else None
        starts = [(shown_at[i], i) for i, packet in enumerate(packets) if _clean_start(packet, codec, length_size)]
        if any(a[0] >= b[0] for a, b in pairwise(starts)):
            starts = []  # clean starts shown out of order: never jump
        return cls(shown_at, by_pts, starts)

    def jump(self, position: int, next_wanted: int) -> int:
        """The packet to continue from: the last clean start shown at or before the next wanted frame, when it
        lies ahead of `position`; else `position` itself."""
        k = bisect.bisect_right(self.starts, (next_wanted, len(self.shown_at))) - 1
        return self.starts[k][1] if k >= 0 and self.starts[k][1] > position else position


def read_frames_pyav(path: str, num_frames: int, size: int | None = None, interpolation: str = "bicubic",
                     as_yuv: bool = False) -> tuple[np.ndarray | Yuv420Frames, VideoInfo]:
    """[num_frames, S, S, 3] uint8 RGB (native H×W when size is None), decoded with PyAV; the frames are
    identical to a front-to-back decode of every frame (tests/io/test_video.py, per codec). `as_yuv`: the
    S×S frames as scaled, in 4:2:0 (Yuv420Frames, whose `rgb()` is what this returns otherwise).

    The file is demuxed once. Decoding does the least work that still gives exact frames: a
    reference-free frame that is not wanted is skipped by the decoder (`skip_frame`), and when
    the next wanted frame lies past a clean restart point (an IDR or a VP9 keyframe), decoding
    jumps there. The antialiased downscale is one swscale pass over the decoded frame's planes,
    through one reused scaler context; RGB comes after, at the small size.
    """
    if not path:
        raise ValueError("empty path")
    if size is not None:
        check_size(size)
    scaler = VideoReformatter()
    target = ({"format": "rgb24"} if size is None else  # kept frames are limited range: full-range sources convert
              {"format": "yuv420p", "width": size, "height": size, "interpolation": SWS_FILTERS[interpolation],
               "dst_color_range": ColorRange.MPEG})
    with av.open(path) as container:
        stream = _video_stream(container)
        stream.thread_count = 1  # one thread per worker: `decode.workers` spreads events over the cores
        packets = _demux(container, stream)
        wanted = sample_indices(len(packets), num_frames)
        decoder = stream.codec_context
        plan = _DecodePlan.build(packets, decoder)
        wanted_set = set(wanted.tolist())
        pending = sorted(wanted_set)
        sampled = SampledFrames(wanted)
        decoded = corrupt = 0
        rotation = None

        def take(frame: av.VideoFrame) -> None:
            nonlocal decoded, corrupt, rotation
            index = decoded if plan is None else plan.by_pts.get(frame.pts, -1)
            decoded += 1
            rotation = _quarter_turns(frame.rotation) * 90 if rotation is None else rotation
            if index in pending:
                if size is not None and "dst_colorspace" not in target:  # the first kept frame's, for the clip
                    target["dst_colorspace"] = kept_matrix(frame.colorspace)
                kept = scaler.reformat(frame, threads=1, **target).to_ndarray()
                corrupt += int(frame.is_corrupt) * sampled.put(index, kept)
                pending.remove(index)

        position = 0
        while pending and position < len(packets):
            if plan is not None:
                restart = plan.jump(position, pending[0])
                if restart != position:
                    decoder.flush_buffers()  # what it still holds is shown before the restart: never wanted
                    position = restart
                decoder.skip_frame = "DEFAULT" if plan.shown_at[position] in wanted_set else "NONREF"
            for frame in decoder.decode(packets[position]):
                take(frame)
            position += 1
        if pending:
            decoder.skip_frame = "DEFAULT"
            for frame in decoder.decode(None):
                take(frame)
        info = _info(stream, len(packets), rotation or 0)  # the stream is freed with its container
    frames, repeated = sampled.finish()
    info = replace(info, decoded_frames=decoded, repeated_frames=repeated, corrupt_frames=corrupt)
    if size is None:
        return _upright(frames, info.rotation), info
    kept = Yuv420Frames(frames, target["dst_colorspace"]).rotated(_quarter_turns(info.rotation))
    return (kept if as_yuv else kept.rgb()), info


def read_frames_decord(path: str, num_frames: int, size: int | None = None, interpolation: str = "bicubic",
                       as_yuv: bool = False) -> tuple[np.ndarray, VideoInfo]:
    """Same contract as read_frames_pyav, decoded by decord's `get_batch`, resized with PIL: RGB always
    (decord hands over RGB, so `as_yuv` changes nothing).

    Identical to PyAV at native size; resized frames differ from PyAV's by the scaler (PIL vs
    swscale: 0.7 grey levels mean on demo frames at 640→224, up to 8 on high-contrast textures
    at 5x downscale), so a model should be trained and served with the same backend.
    """
    import decord  # imported lazily: decord is optional at run time and slow to import

    info = probe_video(path)
    wanted = sample_indices(info.total_frames, num_frames)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    available = len(reader)
    clamped = np.minimum(wanted, available - 1)
    unique = np.unique(clamped)
    sampled = SampledFrames(clamped)
    for index, frame in zip(unique.tolist(), reader.get_batch(unique.tolist()).asnumpy(), strict=True):
        sampled.put(index, frame)
    frames, _ = sampled.finish()
    repeated = int((wanted > available - 1).sum())
    info = replace(info, decoded_frames=min(available, int(wanted[-1]) + 1))
    # decord applies the display matrix itself (tests check both backends come out upright)
    frames = frames if size is None else resize_frames(frames, size, interpolation)
    return frames, replace(info, repeated_frames=repeated)


class SampledFrames:
    """The wanted frames, copied into one array as they are decoded.

    No decoded frame is held beyond its copy, and no second stack is built: at 150 frames a clip
    those were 22 MB of fresh pages each, measured at ~0.3 ms a frame (bench/decode.py --profile).
    """

    def __init__(self, wanted: np.ndarray) -> None:
        self.wanted = wanted
        self.frames: np.ndarray | None = None
        self.filled = np.zeros(len(wanted), dtype=bool)

    def put(self, index: int, frame: np.ndarray) -> int:
        """Store the frame at every sampled position of `index`; returns how many there are."""
        positions = np.flatnonzero(self.wanted == index)
        if self.frames is None:
            self.frames = np.empty((len(self.wanted), *frame.shape), dtype=np.uint8)
        self.frames[positions] = frame
        self.filled[positions] = True
        return len(positions)

    def finish(self) -> tuple[np.ndarray, int]:
        """(frames, how many were repeats): a file that decodes fewer frames than it demuxes (truncated,
        damaged packets) repeats its last good one before that position, and the count is recorded."""
        if self.frames is None:
            raise InvalidMediaError("no frame could be decoded")
        filled = np.flatnonzero(self.filled)
        missing = np.flatnonzero(~self.filled)
        for position in missing:
            earlier = filled[filled < position]
            self.frames[position] = self.frames[earlier[-1] if len(earlier) else filled[0]]
        return self.frames, len(missing)


BACKENDS: dict[str, Callable[..., tuple[np.ndarray, VideoInfo]]] = {
    "pyav": read_frames_pyav,
    "decord": read_frames_decord,
}


def resize_frames(frames: np.ndarray, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Squash each frame to size×size with PIL's antialiased resampling (no aspect crop, as in the spec)."""
    resample = _PIL_FILTERS[interpolation]
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), resample)) for f in frames])


def check_size(size: int) -> None:
    """Frames are kept in 4:2:0, whose chroma planes are half the size: an odd size has no such layout."""
    if size % 2:
        raise ValueError(f"video.size must be even (frames are kept in 4:2:0), got {size}")


def check_backend(backend: str) -> None:
    """Fail before any event is touched when the backend is unknown or cannot be imported: a missing
    decoder is a broken setup, never a property of the files it would have read."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if backend == "decord":
        try:
            import decord  # noqa: F401
        except Exception as err:
            raise RuntimeError(f"decode.backend: decord cannot be imported ({type(err).__name__}: {err}); "
                               f"install it or use decode.backend: pyav") from err


def load_video(path: str, num_frames: int, size: int, backend: str = "pyav", interpolation: str = "bicubic",
               as_yuv: bool = False) -> tuple[np.ndarray | Yuv420Frames, VideoInfo]:
    """[num_frames, size, size, 3] uint8 frames sampled uniformly from a video file, squashed to a square
    (no aspect crop, as in the spec) with antialiased resampling; `as_yuv`: in 4:2:0 where the backend
    scales them so (read_frames_pyav)."""
    check_backend(backend)
    reader = BACKENDS[backend]
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(_PIL_FILTERS)}")
    return reader(str(path), num_frames, size, interpolation, as_yuv)
