"""Synthetic event folders that look like what the phone app records, for demos and tests.

Each class leaves a signature in more than one modality, and no single modality
separates all four classes (docs/models.md, "Class signatures"), so a model only reaches
the spec's targets by fusing them. `difficulty` scales noise against signal and
`label_noise` flips a few labels, so the demo is learnable but not trivially perfect.
Every event draws from its own seeded generator, so output is byte-identical for a
seed whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
import polars as pl
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from spectral.events import AUDIO_FILE, CLASS_NAMES, METADATA_FILE, SENSORS_FILE, VIDEO_FILE
from spectral.io.yuv import (
    RGB_TO_YUV,
    add_bit_exact_h264,
    check_bit_exact_size,
    weighted_channels,
    yuv420p_frame,
    yuv_planes,
)
from spectral.runtime.lifecycle import die_with_parent
from spectral.runtime.params import build_config

AMBIENT, INTERFERENCE, CORRELATED, HUMANOID = range(4)
CLASS_PRIORS = (0.30, 0.25, 0.25, 0.20)
AUDIO_RATE = 44_100
SENSOR_RATE_HZ = 50.0


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; defaults are the phone app's recording format."""

    fps: int = 30
    duration_s: float = 5.0
    width: int = 640
    height: int = 480
    difficulty: float = 0.5
    label_noise: float = 0.03

    def __post_init__(self) -> None:
        check_bit_exact_size(self.width, self.height)


@dataclass(frozen=True)
class SynthStageConfig:
    """synth.* params: how many events, from which seed, in how many processes, rendered how; the defaults
    are params.yaml's (the demo's 2 s clips; tests/runtime/test_params.py)."""

    events: int = 500
    seed: int = 0
    workers: int = 2
    render: SynthConfig = SynthConfig(duration_s=2.0)

    @classmethod
    def from_params(cls, params: dict) -> SynthStageConfig:
        run = build_config(cls, {"synth": {k: v for k, v in (params.get("synth") or {}).items()
                                           if k in ("events", "seed", "workers")}}, "synth")
        render = build_config(SynthConfig, params, "synth", ignore=("events", "seed", "workers"), base=cls.render)
        return replace(run, render=render)


def run_synth(out_dir: Path, cfg: SynthStageConfig) -> list[Path]:
    """The synth stage: `cfg.events` demo event folders in out_dir."""
    return generate(out_dir, cfg.events, cfg.seed, cfg.render, workers=cfg.workers)


def _smooth_noise(rng: np.random.Generator, length: int, cutoff: int) -> np.ndarray:
    """Unit-variance noise with energy only in the lowest `cutoff` frequency bins."""
    spectrum = np.zeros(length // 2 + 1, dtype=np.complex128)
    spectrum[1 : cutoff + 1] = rng.normal(size=cutoff) + 1j * rng.normal(size=cutoff)
    signal = np.fft.irfft(spectrum, n=length)
    return signal / (signal.std() + 1e-12)


def _pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    spectrum = rng.normal(size=length // 2 + 1) + 1j * rng.normal(size=length // 2 + 1)
    spectrum /= np.sqrt(np.arange(1, length // 2 + 2))
    signal = np.fft.irfft(spectrum, n=length)
    return signal / (signal.std() + 1e-12)


def _bump(t: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - center) / width) ** 2)


@dataclass
class _Plan:
    """What happens in one event, drawn once and rendered into every modality."""

    true_class: int
    recorded_class: int
    strength: float
    event_time: float
    humanoid_visible: bool
    humanoid_flag_fires: bool
    distractor_visible: bool
    decoy_click_time: float | None


def _plan_event(rng: np.random.Generator, cfg: SynthConfig) -> _Plan:
    true_class = int(rng.choice(4, p=CLASS_PRIORS))
    recorded_class = true_class
    if rng.random() < cfg.label_noise:
        recorded_class = int(rng.choice([c for c in range(4) if c != true_class]))
    # Signal strength shrinks as difficulty grows; some events are barely visible.
    strength = float(rng.uniform(0.35, 1.0) * (1.4 - cfg.difficulty))
    is_humanoid = true_class == HUMANOID
    return _Plan(
        true_class=true_class,
        recorded_class=recorded_class,
        strength=strength,
        event_time=float(rng.uniform(0.2, 0.8) * cfg.duration_s),
        humanoid_visible=bool(rng.random() < (0.92 if is_humanoid else 0.04)),
        humanoid_flag_fires=bool(rng.random() < (0.6 if is_humanoid else 0.08)),  # the app's detector
        distractor_visible=bool(rng.random() < 0.5),
        decoy_click_time=float(rng.uniform(0.2, cfg.duration_s - 0.2)) if rng.random() < 0.35 else None,
    )


def _render_audio(rng: np.random.Generator, plan: _Plan, cfg: SynthConfig) -> np.ndarray:
    n = int(round(cfg.duration_s * AUDIO_RATE))
    t = np.arange(n) / AUDIO_RATE
    noise_level = rng.uniform(0.02, 0.08) * (0.5 + cfg.difficulty)
    audio = noise_level * _pink_noise(rng, n)
    if plan.decoy_click_time is not None:  # a door, a cough: uncorrelated with anything else
        click = _bump(t, plan.decoy_click_time, 0.01) * rng.normal(size=n)
        audio += 0.25 * plan.strength * click
    if plan.true_class == INTERFERENCE:
        mains = rng.choice([50.0, 60.0])
        buzz = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
        whine = np.sin(2 * np.pi * rng.uniform(900, 6000) * t)
        audio += plan.strength * (0.08 * buzz + 0.05 * whine)
    if plan.true_class in (CORRELATED, HUMANOID):
        envelope = np.where(t >= plan.event_time, np.exp(-(t - plan.event_time) / 0.15), 0.0)
        audio += 0.5 * plan.strength * envelope * rng.normal(size=n)
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    return audio


def _render_sensors(rng: np.random.Generator, plan: _Plan, cfg: SynthConfig, audio: np.ndarray) -> pl.DataFrame:
    n = int(cfg.duration_s * SENSOR_RATE_HZ)
    t = np.cumsum(np.full(n, 1.0 / SENSOR_RATE_HZ) + rng.normal(0, 0.002, n)) - 1.0 / SENSOR_RATE_HZ
    t = np.clip(t, 0.0, None)
    noise = 0.5 + cfg.difficulty
    magnetic = 45.0 + rng.uniform(-5, 5) + 0.8 * noise * rng.normal(size=n) + 1.5 * _smooth_noise(rng, n, 3)
    accel = rng.normal(0, 0.08 * noise, (n, 3)) + np.array([0.0, 0.0, 9.81])
    gyro = rng.normal(0, 0.03 * noise, (n, 3))
    yaw = (rng.uniform(-180, 180) + np.cumsum(rng.normal(0, 0.3, n)) + 180) % 360 - 180
    bluetooth_rate = 2.0
    if plan.decoy_click_time is not None:  # the phone gets bumped, unrelated to the audio click
        accel[:, 0] += 0.6 * plan.strength * _bump(t, rng.uniform(0.2, cfg.duration_s - 0.2), 0.05)
    if plan.true_class == INTERFERENCE:
        magnetic += plan.strength * (10.0 * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t) + rng.uniform(5, 15))
        bluetooth_rate = 5.0
    if plan.true_class in (CORRELATED, HUMANOID):
        spike = _bump(t, plan.event_time, 0.12)
        magnetic += 25.0 * plan.strength * spike
        accel += 1.5 * plan.strength * spike[:, None] * rng.normal(size=3)
        gyro += 0.8 * plan.strength * spike[:, None] * rng.normal(size=3)
    window = int(AUDIO_RATE / SENSOR_RATE_HZ)
    audio_peak = np.array([np.abs(audio[i * window : (i + 1) * window]).max(initial=0.0) for i in range(n)])
    humanoid = plan.humanoid_flag_fires & (rng.random(n) < 0.5 * _bump(t, plan.event_time, 0.5))
    start_ms = 1_700_000_000_000 + int(rng.integers(0, 10**9))
    return pl.DataFrame(
        {
            "timestamp": (start_ms + np.round(t * 1000)).astype(np.int64),
            "magnetic_magnitude": magnetic,
            "accel_x": accel[:, 0],
            "accel_y": accel[:, 1],
            "accel_z": accel[:, 2],
            "gyro_x": gyro[:, 0],
            "gyro_y": gyro[:, 1],
            "gyro_z": gyro[:, 2],
            "orientation_yaw": yaw,
            "audio_peak": audio_peak,
            "humanoid_detected": humanoid,
            "bluetooth_count": rng.poisson(bluetooth_rate, n).astype(np.int64),
        }
    )


def _humanoid_sprite(height: int) -> np.ndarray:
    """Boolean mask of a standing person: head, torso, arms, legs."""
    width = height // 2
    yy, xx = np.mgrid[0:height, 0:width]
    cx = width / 2
    head_r = height * 0.09
    head = (xx - cx) ** 2 + (yy - head_r * 1.1) ** 2 <= head_r**2
    torso = (abs(xx - cx) <= width * 0.22) & (yy >= head_r * 2.1) & (yy <= height * 0.6)
    arms = (abs(xx - cx) <= width * 0.45) & (yy >= head_r * 2.3) & (yy <= head_r * 2.3 + height * 0.07)
    legs = (abs(abs(xx - cx) - width * 0.12) <= width * 0.08) & (yy > height * 0.6)
    return head | torso | arms | legs


def _room_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A dim, low-saturation indoor scene: smooth lighting, a few furniture-like blocks, a slight tint."""
    lighting = np.asarray(Image.fromarray(rng.uniform(60, 150, (6, 8)).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    scene = np.repeat(lighting[:, :, None], 3, axis=2) * rng.uniform(0.85, 1.15, 3)
    for _ in range(int(rng.integers(2, 5))):
        bw, bh = int(rng.uniform(0.1, 0.4) * w), int(rng.uniform(0.1, 0.5) * h)
        x, y = int(rng.uniform(0, w - bw)), int(rng.uniform(0.3, 1.0) * (h - bh))
        scene[y : y + bh, x : x + bw] = scene[y : y + bh, x : x + bw] * 0.4 + rng.uniform(40, 160) * 0.6
    texture = np.asarray(Image.fromarray(rng.uniform(0, 255, (h // 8, w // 8)).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(scene + 0.08 * (texture[:, :, None] - 127), 0, 255).astype(np.float32)


def _paint(planes: list[np.ndarray], x: int, y: int, mask: np.ndarray, alpha: float, yuv: np.ndarray) -> None:
    """Blend a colour into the planes where mask is set (chroma at half resolution)."""
    h, w = mask.shape
    targets = [(planes[0], mask, x, y)]
    half = mask[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    targets += [(planes[1], half, x // 2, y // 2), (planes[2], half, x // 2, y // 2)]
    for (plane, m, px, py), value in zip(targets, yuv, strict=True):
        region = plane[py : py + m.shape[0], px : px + m.shape[1]]
        a = alpha * m[: region.shape[0], : region.shape[1]]
        region += a * (value - region)


def _render_video(rng: np.random.Generator, plan: _Plan, cfg: SynthConfig, path: Path) -> None:
    h, w = cfg.height, cfg.width
    background = yuv_planes(_room_background(rng, h, w))
    frames = int(round(cfg.fps * cfg.duration_s))
    sprite = _humanoid_sprite(int(h * rng.uniform(0.45, 0.7))).astype(np.float32)
    sh, sw = sprite.shape
    walk_from, walk_to = rng.uniform(0, w - sw, 2)
    sprite_y = int(rng.uniform(0.1, 0.95) * (h - sh))
    sprite_yuv = np.float32(rng.uniform(10, 50)) * weighted_channels(np.ones(3, np.float32), RGB_TO_YUV.T)  # grey
    box = int(rng.uniform(0.1, 0.3) * h)
    box_mask = np.ones((box, box), np.float32)
    box_rgb = (rng.uniform(30, 200) * rng.uniform(0.8, 1.2, 3)).astype(np.float32)  # a muted object
    box_yuv = weighted_channels(box_rgb, RGB_TO_YUV.T)
    box_from, box_to = rng.uniform(0, w - box, 2), rng.uniform(0, h - box, 2)
    flicker = 1.0 + 0.03 * _smooth_noise(rng, frames, 4)
    # A visible figure fades in around the event; faint when the event itself is weak.
    seconds = np.arange(frames) / cfg.fps
    visibility = np.clip(plan.strength * 1.2, 0.25, 1.0) * np.clip(1.5 - abs(seconds - plan.event_time), 0, 1)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = add_bit_exact_h264(container, cfg.fps, 26, w, h)
        for i in range(frames):
            planes = [plane * np.float32(flicker[i]) for plane in background]
            progress = i / max(frames - 1, 1)
            if plan.distractor_visible:
                x = int(box_from[0] + (box_to[0] - box_from[0]) * progress)
                y = int(box_from[1] + (box_to[1] - box_from[1]) * progress)
                _paint(planes, x, y, box_mask, 1.0, box_yuv)
            if plan.humanoid_visible and visibility[i] > 0:
                x = int(walk_from + (walk_to - walk_from) * progress)
                _paint(planes, x, sprite_y, sprite, float(visibility[i]), sprite_yuv)
            for packet in stream.encode(yuv420p_frame(planes, i)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_event(folder: Path, seed: int, index: int, cfg: SynthConfig) -> str:
    """Render event number `index` of a seeded set into `folder`; returns its recorded class name."""
    rng = np.random.default_rng([seed, index])
    plan = _plan_event(rng, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    audio = _render_audio(rng, plan, cfg)
    sf.write(folder / AUDIO_FILE, audio, AUDIO_RATE, subtype="PCM_16")
    _render_sensors(rng, plan, cfg, audio).write_csv(folder / SENSORS_FILE, float_precision=5)
    _render_video(rng, plan, cfg, folder / VIDEO_FILE)
    metadata = {
        "event_id": folder.name,
        "classification": CLASS_NAMES[plan.recorded_class],
        "synthetic": {"seed": seed, "index": index, "true_class": CLASS_NAMES[plan.true_class], **asdict(cfg)},
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return metadata["classification"]


def generate(out_dir: Path, n_events: int, seed: int, cfg: SynthConfig = SynthConfig(), workers: int = 1) -> list[Path]:
    """Write `n_events` event folders `event_00000 ...` into out_dir, in parallel when asked."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = [out_dir / f"event_{i:05d}" for i in range(n_events)]
    jobs = [(folder, seed, i, cfg) for i, folder in enumerate(folders)]
    progress = tqdm(total=n_events, desc="synth", unit="event")
    if workers <= 1:
        for job in jobs:
            write_event(*job)
            progress.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=die_with_parent) as pool:
            for _ in pool.map(write_event, *zip(*jobs, strict=True), chunksize=4):
                progress.update()
    progress.close()
    return folders
