"""An out-of-distribution evaluation set: event folders made of media the demo generator never makes.

The OOD flag is only worth something if real recordings unlike the training data get flagged, not
just patterns any score separates. So the video comes from real camera photographs (scikit-image's
bundled astronaut, cat, coffee, coins, bricks, grass, moon, ...) filmed by a moving virtual camera (pan and
zoom, portrait or landscape), and from FFmpeg's lavfi sources (testsrc2, sierpinski, life,
cellauto) through PyAV; the audio is speech-like (a glottal pulse train through moving formant
resonators, in syllables and pauses), pure tones, white noise or digital silence; the sensors follow
physical processes the demo never records (walking, a car ride, a magnet next to the phone, a
drop). This machine has no real footage or speech recordings: point `spectral evaluate --ood`
at folders of your own to measure on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import polars as pl
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from spectral.events import AUDIO_FILE, METADATA_FILE, SENSORS_FILE, VIDEO_FILE
from spectral.io.yuv import add_bit_exact_h264, yuv420p_frame, yuv_planes
from spectral.runtime.params import build_config

AUDIO_RATE = 44_100
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png",
          "grass.png", "gravel.png", "moon.png", "motorcycle_left.png", "page.png", "rocket.jpg")
LAVFI = {"testsrc2": "testsrc2=size={w}x{h}:rate={fps}", "sierpinski": "sierpinski=size={w}x{h}:rate={fps}:seed={seed}",
         "life": "life=size={w}x{h}:rate={fps}:mold=10:ratio=0.3:seed={seed}",
         "cellauto": "cellauto=size={w}x{h}:rate={fps}:rule=30:seed={seed}"}
VIDEO_SOURCES = ("real photo, moving camera", "real photo, moving camera", *LAVFI)
AUDIO_SOURCES = ("speech-like", "speech-like", "tone", "white noise", "digital silence")
SENSOR_SOURCES = ("walking", "car ride", "magnet nearby", "dropped phone")


def _photo(name: str) -> np.ndarray:
    import skimage

    image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    return np.asarray(image)


def _camera_move(rng: np.random.Generator, photo: np.ndarray, frames: int, w: int, h: int) -> list[np.ndarray]:
    """Frames of a crop window that pans and zooms across the photo, as a hand-held phone would."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.45, 0.8)
    cw, ch = int(min(pw, ph * w / h) * scale), int(min(ph, pw * h / w) * scale)
    (x0, x1), (y0, y1) = rng.uniform(0, pw - cw, 2), rng.uniform(0, ph - ch, 2)
    zoom = rng.uniform(0.85, 1.0)
    image = Image.fromarray(photo)
    out = []
    for i in range(frames):
        p = i / max(frames - 1, 1)
        z = 1 + (zoom - 1) * p
        x = float(np.clip(x0 + (x1 - x0) * p + rng.normal(0, 2), 0, pw - cw * z))  # hand shake, inside the photo
        y = float(np.clip(y0 + (y1 - y0) * p + rng.normal(0, 2), 0, ph - ch * z))
        box = (x, y, x + cw * z, y + ch * z)
        out.append(np.asarray(image.resize((w, h), Image.Resampling.BILINEAR, box=box)))
    return out


def _lavfi(source: str, seed: int, frames: int, w: int, h: int, fps: int) -> list[np.ndarray]:
    with av.open(LAVFI[source].format(w=w, h=h, fps=fps, seed=seed), format="lavfi") as container:
        out = []
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == frames:
                return out
    raise RuntimeError(f"lavfi {source} gave {len(out)} of {frames} frames")


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 like a phone's, bit-exact (spectral.io.yuv.add_bit_exact_h264) so a re-run gives the same files: the
    frames go in as yuv420p built by the generator's own conversion (handing FFmpeg rgb24 at these widths
    gave different bytes from run to run under load: swscale)."""
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = add_bit_exact_h264(container, fps, 23, frames[0].shape[1], frames[0].shape[0])
        for index, frame in enumerate(frames):
            for packet in stream.encode(yuv420p_frame(yuv_planes(frame.astype(np.float32)), index)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _resonate(signal: np.ndarray, frequency: np.ndarray, bandwidth: float) -> np.ndarray:
    """Two-pole resonator with a time-varying centre frequency (a formant)."""
    r = np.exp(-np.pi * bandwidth / AUDIO_RATE)
    a1, a2 = -2 * r * np.cos(2 * np.pi * frequency / AUDIO_RATE), r * r
    out, y1, y2 = np.zeros_like(signal), 0.0, 0.0
    for i, x in enumerate(signal):
        y = x - a1[i] * y1 - a2 * y2
        out[i], y2, y1 = y, y1, y
    return out


def _speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Voiced syllables: a jittered glottal pulse train at a gliding pitch through three moving formants."""
    t = np.arange(n) / AUDIO_RATE
    pitch = rng.uniform(95, 230) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = np.cumsum(pitch / AUDIO_RATE)
    source = np.diff(np.floor(phase), prepend=0.0) * (1 + 0.1 * rng.normal(size=n))
    syllables = int(t[-1] * rng.uniform(3, 5)) + 1
    edges = np.sort(rng.uniform(0, n, syllables))
    index = np.searchsorted(edges, np.arange(n))
    voice = np.zeros(n)
    for formant, (low, high, bandwidth) in enumerate(((300, 850, 80), (850, 2300, 100), (2300, 3200, 140))):
        targets = rng.uniform(low, high, syllables + 1)
        voice += _resonate(source, targets[index], bandwidth) / (formant + 1)
    envelope = np.clip(np.sin(np.pi * ((t * rng.uniform(3, 5)) % 1.0)), 0, None) ** 0.5
    envelope *= rng.random(syllables + 1)[index] > 0.2  # pauses between words
    voice *= envelope
    return 0.3 * voice / max(np.abs(voice).max(), 1e-9) + 0.003 * rng.normal(size=n)


def _audio(rng: np.random.Generator, source: str, seconds: float) -> np.ndarray:
    n = int(seconds * AUDIO_RATE)
    t = np.arange(n) / AUDIO_RATE
    if source == "speech-like":
        return _speech_like(rng, n)
    if source == "tone":
        return sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 2000, rng.integers(1, 4)))
    if source == "white noise":
        return rng.uniform(0.05, 0.5) * rng.uniform(-1, 1, n)
    return np.zeros(n)


def _sensors(rng: np.random.Generator, source: str, seconds: float) -> pl.DataFrame:
    rate = float(rng.choice([20.0, 100.0]))  # phones log at their own rates
    n = int(seconds * rate)
    t = np.arange(n) / rate
    accel = np.tile([0.0, 0.0, 9.81], (n, 1)) + rng.normal(0, 0.02, (n, 3))
    gyro = rng.normal(0, 0.005, (n, 3))
    magnetic = np.full(n, rng.uniform(35, 60))
    yaw = np.full(n, rng.uniform(-180, 180))
    bluetooth = rng.poisson(2.0, n)
    if source == "walking":
        step = 2 * np.pi * rng.uniform(1.6, 2.2) * t
        accel += np.stack([0.8 * np.sin(step / 2), 0.5 * np.cos(step / 2), 2.5 * np.sin(step)], axis=1)
        gyro += 0.4 * np.stack([np.sin(step / 2), np.cos(step / 2), 0.3 * np.sin(step)], axis=1)
        yaw += np.cumsum(rng.normal(0, 0.5, n))
    elif source == "car ride":
        accel += 0.3 * np.sin(2 * np.pi * 12 * t)[:, None] * rng.normal(size=3) + [rng.uniform(-2, 2), 0.5, 0]
        gyro[:, 2] += rng.uniform(-0.3, 0.3)
        magnetic = rng.uniform(15, 30) + 3 * np.sin(2 * np.pi * 0.2 * t)
        yaw += np.degrees(np.cumsum(gyro[:, 2]) / rate)
        bluetooth = rng.poisson(15.0, n)
    elif source == "magnet nearby":
        magnetic = rng.uniform(400, 1200) + rng.normal(0, 5, n)
    else:  # dropped: free fall, then the impact
        fall = (t > 0.4 * seconds) & (t < 0.4 * seconds + 0.35)
        accel[fall] = rng.normal(0, 0.2, (int(fall.sum()), 3))
        impact = np.argmax(t >= 0.4 * seconds + 0.35)
        accel[impact:impact + 3] += rng.normal(0, 40, (min(3, n - impact), 3))
        gyro[fall] += rng.normal(0, 4, (int(fall.sum()), 3))
    return pl.DataFrame({
        "timestamp": (1_750_000_000_000 + np.round(t * 1000)).astype(np.int64),
        "magnetic_magnitude": magnetic, "accel_x": accel[:, 0], "accel_y": accel[:, 1], "accel_z": accel[:, 2],
        "gyro_x": gyro[:, 0], "gyro_y": gyro[:, 1], "gyro_z": gyro[:, 2],
        "orientation_yaw": (yaw + 180) % 360 - 180, "audio_peak": np.zeros(n), "humanoid_detected": np.zeros(n, bool),
        "bluetooth_count": bluetooth.astype(np.int64),
    })


def write_ood_event(folder: Path, seed: int, index: int, seconds: float = 2.0, fps: int = 30) -> dict:
    """One OOD event folder; returns its `ood` metadata (which source each modality came from)."""
    rng = np.random.default_rng([seed, index, 7])
    video_source = VIDEO_SOURCES[index % len(VIDEO_SOURCES)]
    audio_source = AUDIO_SOURCES[(index // len(VIDEO_SOURCES)) % len(AUDIO_SOURCES)]
    sensor_source = SENSOR_SOURCES[index % len(SENSOR_SOURCES)]
    frames = int(seconds * fps)
    folder.mkdir(parents=True, exist_ok=True)
    if video_source in LAVFI:
        w, h = (384, 288)  # 320 x 240 was not bit-exact (spectral.io.yuv.check_bit_exact_size)
        images, detail = _lavfi(video_source, int(rng.integers(1, 2**31)), frames, w, h, fps), video_source
    else:
        photo = PHOTOS[int(rng.integers(len(PHOTOS)))]
        w, h = (384, 640) if rng.random() < 0.5 else (640, 384)  # portrait or landscape; widths of 128 k
        images, detail = _camera_move(rng, _photo(photo), frames, w, h), photo
    _write_video(folder / VIDEO_FILE, images, fps)
    sf.write(folder / AUDIO_FILE, _audio(rng, audio_source, seconds), AUDIO_RATE, subtype="PCM_16")
    _sensors(rng, sensor_source, seconds).write_csv(folder / SENSORS_FILE, float_precision=5)
    ood = {"group": video_source, "video": detail, "audio": audio_source, "sensors": sensor_source}
    metadata = {"event_id": folder.name, "ood": ood}  # no classification: none of the four classes applies
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return ood


@dataclass(frozen=True)
class OodConfig:
    """ood.* params; the defaults are params.yaml's (tests/runtime/test_params.py)."""

    events: int = 60
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict) -> OodConfig:
        return build_config(cls, params, "ood")


def generate_ood(out_dir: Path, n_events: int, seed: int) -> list[Path]:
    """`n_events` folders `event_ood_00000 ...` in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = [out_dir / f"event_ood_{i:05d}" for i in range(n_events)]
    for index, folder in enumerate(tqdm(folders, desc="ood events", unit="event")):
        write_ood_event(folder, seed, index)
    return folders
