"""`spectral serve`'s configuration: one dataclass per concern, whose defaults are the command's flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one request; each is a `spectral serve` flag of the same name."""

    max_request_mb: float = 64.0
    max_file_mb: float = 48.0
    max_video_seconds: float = 60.0
    max_video_pixels: int = 3840 * 2160
    max_audio_seconds: float = 60.0
    max_sensor_rows: int = 100_000
    max_csv_line_bytes: int = 4096
    decode_seconds: float = 10.0  # budget for decoding one request's media

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)


@dataclass(frozen=True)
class ServeConfig:
    """`spectral serve`'s flags: where the model is, how requests are batched and queued, and the upload limits."""

    model: Path = Path("models/model.pt")
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    # requests predicted together; None: 8 on a GPU, 1 on a CPU, where batches of 8 demo events ran at 0.76x
    # the one-at-a-time rate on 2 cores (bench/serve.py) while one at a time kept pace with 16 clients
    max_batch_size: int | None = None
    batch_timeout: float = 0.005  # seconds a batch waits for more requests
    max_queue: int = 64  # requests in flight beyond which new ones get 503 + Retry-After
    api_key_env: str | None = None  # the environment variable holding the API key; None: no key needed
    upload_dir: Path | None = None  # where the private per-request folders go (default: the system's temp dir)
    limits: UploadLimits = field(default_factory=UploadLimits)
