"""`spectral serve` under load: latency, throughput, memory over a soak, and bad uploads among good ones.

Starts the server as its own process on a loopback port and drives it with httpx, against the
in-process `Predictor` on the same events in the same run (what the server adds). Rows:
- one request at a time with demo events (the model's frame count), and 5 s 640x480 uploads;
- concurrency 1, 4, 16, 64: p50/p95/p99, events/s, errors by status;
- a soak of `--soak` requests: the server's RSS (its whole process tree) after warm-up and at the end,
  files left in its upload folder;
- a mixed run where every fifth request is a bad upload (truncated MP4, MP3 named .wav, a 0-byte file,
  a declared 2 GB body, a CSV of one endless line, no file at all): each must get its 4xx with a reason,
  and every good request a prediction.

    python bench/serve.py [--model models/model.pt] [--soak 2000]
    python bench/serve.py --events 4 --requests 6 --levels 1 2 --soak 10 --mixed 10 --output /tmp/serve.json  # smoke
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from common import tree_rss_kb, write_result

from spectral.inference import Predictor
from spectral.stages.synth import SynthConfig, generate

FILES = ("video.mp4", "audio.wav", "sensors.csv")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, uploads: Path, batch: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    batching = ["--max-batch-size", str(batch)] if batch else []  # none: the server's default for its device
    process = subprocess.Popen([sys.executable, "-m", "spectral", "serve", "--model", str(model), "--port", str(port),
                                "--device", "auto", "--upload-dir", str(uploads), "--max-queue", "256", *batching],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become healthy")


def upload(folder: Path) -> dict:
    return {name: (name, (folder / name).read_bytes()) for name in FILES if (folder / name).exists()}


def percentiles(latencies: list[float]) -> dict:
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (0, 0, 0)
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "p99_ms": round(float(p99), 1)}


def drive(url: str, requests: list[dict], concurrency: int) -> dict:
    """Send every request (a dict of multipart files) with `concurrency` clients; latency and status of each."""
    latencies, statuses = [], []
    lock = threading.Lock()
    local = threading.local()

    def send(files: dict) -> None:
        client = getattr(local, "client", None) or httpx.Client(timeout=120)
        local.client = client
        started = time.perf_counter()
        status = client.post(f"{url}/predict", files=files).status_code
        with lock:
            latencies.append((time.perf_counter() - started) * 1000)
            statuses.append(status)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, requests))
    wall = time.perf_counter() - started
    ok = [ms for ms, status in zip(latencies, statuses, strict=True) if status == 200]
    errors = {str(s): statuses.count(s) for s in sorted(set(statuses)) if s != 200}
    return {"requests": len(requests), "concurrency": concurrency, "events_per_s": round(len(ok) / wall, 2),
            **percentiles(ok), "errors_by_status": errors}


def in_process_ms(model: Path, folders: list[Path]) -> dict:
    """The same events through `Predictor` in this process, one at a time: the baseline the server adds to."""
    predictor = Predictor(model, device="cpu")
    list(predictor.predict(folders[:2]))
    latencies = []
    for folder in folders:
        started = time.perf_counter()
        next(predictor.predict([folder]))
        latencies.append((time.perf_counter() - started) * 1000)
    return percentiles(latencies)


def bad_uploads(good: Path) -> list[tuple[str, dict | None]]:
    """(what is wrong, multipart files; None: sent raw with a declared 2 GB body)."""
    video = (good / "video.mp4").read_bytes()
    return [("truncated MP4", {"video.mp4": ("video.mp4", video[: len(video) // 3])}),
            ("MP3 named audio.wav", {"audio.wav": ("audio.wav", b"ID3\x04\x00" + b"\x00" * 5 + b"\xff\xfb" * 400)}),
            ("0-byte video, nothing else", {"video.mp4": ("video.mp4", b"")}),
            ("declared 2 GB body", None),
            ("CSV of one endless line", {"sensors.csv": ("sensors.csv", b"timestamp," + b"1," * 400_000)}),
            ("no file at all", {})]


def send_declared_2gb(url: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 2000000000\r\n\r\n")
        return int(raw.recv(4096).split(b"\r\n", 1)[0].split()[1])


def mixed(url: str, folders: list[Path], total: int) -> dict:
    """Every fifth request is a bad upload; the good ones go on meanwhile (concurrency 4)."""
    bad = bad_uploads(folders[0])
    outcomes: dict[str, list[int]] = {name: [] for name, _ in bad}
    good_statuses: list[int] = []
    lock = threading.Lock()

    def send(job: tuple[int, Path]) -> None:
        i, folder = job
        if i % 5 == 4:
            name, files = bad[(i // 5) % len(bad)]
            if files is None:
                status = send_declared_2gb(url)
            else:
                response = httpx.post(f"{url}/predict", files=files or None, data=None if files else {"x": "1"},
                                      timeout=120)
                status = response.status_code if "error" in response.json() else -response.status_code
            with lock:
                outcomes[name].append(status)
        else:
            status = httpx.post(f"{url}/predict", files=upload(folder), timeout=120).status_code
            with lock:
                good_statuses.append(status)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, zip(range(total), itertools.cycle(folders), strict=False)))
    return {"requests": total, "good": len(good_statuses), "good_failed": sum(s != 200 for s in good_statuses),
            "bad": {name: sorted(set(statuses)) for name, statuses in outcomes.items()},
            "every_bad_got_a_4xx_with_a_reason": all(400 <= s < 500 for v in outcomes.values() for s in v)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--demo-events", type=Path, default=Path("data/demo_events"))
    parser.add_argument("--events", type=int, default=40, help="distinct events sent (cycled)")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--soak", type=int, default=2000)
    parser.add_argument("--mixed", type=int, default=200, help="requests of the mixed run (every fifth is bad)")
    parser.add_argument("--batch", type=int, help="the server's --max-batch-size (default: its own)")
    parser.add_argument("--output", type=Path, help="where the JSON goes (default bench/results/serve.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.demo_events.is_dir():
            folders = sorted(p for p in args.demo_events.iterdir() if (p / "video.mp4").exists())[: args.events]
        else:
            folders = generate(tmp / "demo", args.events, seed=5, cfg=SynthConfig(duration_s=2.0), workers=2)
        long_clips = generate(tmp / "long", min(args.events, 12), seed=6, cfg=SynthConfig(), workers=2)
        baseline = in_process_ms(args.model, folders)
        uploads = tmp / "uploads"
        uploads.mkdir()
        process, url = start_server(args.model, uploads, args.batch)
        try:
            result: dict = {"frames_per_event": Predictor(args.model).config["video"]["num_frames"],
                            "max_batch_size": args.batch or "server default",
                            "in_process_predictor": baseline, "concurrency": {}}
            payloads = [upload(folder) for folder in folders]
            drive(url, payloads[:4], 1)  # warm the connection pool and the worker
            for level in args.levels:
                result["concurrency"][str(level)] = row = drive(
                    url, list(itertools.islice(itertools.cycle(payloads), args.requests)), level)
                print(f"concurrency {level:>3}: {row}")
            one = result["concurrency"][str(args.levels[0])]
            result["served_p50_minus_in_process_ms"] = round(one["p50_ms"] - baseline["p50_ms"], 1)
            result["throughput_vs_one_at_a_time"] = {level: round(row["events_per_s"] / one["events_per_s"], 3)
                                                     for level, row in result["concurrency"].items()}
            result["long_uploads_5s_640x480"] = drive(url, [upload(f) for f in long_clips], 1)
            rss_start = tree_rss_kb(process.pid)
            soak = drive(url, list(itertools.islice(itertools.cycle(payloads), args.soak)), 4)
            rss_end = tree_rss_kb(process.pid)
            result["soak"] = {**soak, "rss_after_warm_up_mib": round(rss_start / 1024, 1),
                              "rss_end_mib": round(rss_end / 1024, 1),
                              "rss_growth": round(rss_end / rss_start - 1, 4),
                              "files_left_in_upload_dir": sum(1 for _ in uploads.rglob("*"))}
            result["mixed_20_percent_bad"] = mixed(url, folders, args.mixed)
        finally:
            process.terminate()
            process.wait(timeout=60)
            shutil.rmtree(uploads, ignore_errors=True)
    print(f"in-process p50 {baseline['p50_ms']} ms; served p50 at concurrency 1: "
          f"{result['concurrency'][str(args.levels[0])]['p50_ms']} ms")
    print(f"soak: {result['soak']}")
    print(f"mixed: {result['mixed_20_percent_bad']}")
    write_result("serve", {"cpu_cores": len(os.sched_getaffinity(0)), **result}, args.output)


if __name__ == "__main__":
    main()
