"""`spectral serve` as a client meets it: a real server process on a loopback port, real uploads, every status code."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
HEADERS = {"X-API-Key": KEY}
LIMITS = ["--max-file-mb", "1", "--max-request-mb", "3", "--max-sensor-rows", "500", "--max-audio-seconds", "8",
          "--max-queue", "1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    out, _ = trained
    uploads = tmp_path_factory.mktemp("uploads")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "spectral", "serve", "--model", str(out / "model.pt"),
                                    "--port", str(port), "--device", "cpu", "--api-key-env", "SPECTRAL_TEST_KEY",
                                    "--upload-dir", str(uploads), *LIMITS],
                                   env={**os.environ, "SPECTRAL_TEST_KEY": KEY}, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not become healthy:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, uploads, out / "model.pt"
    process.terminate()
    process.wait(timeout=30)


def files_of(folder: Path, names=("video.mp4", "audio.wav", "sensors.csv")) -> dict:
    return {name: (name, (folder / name).read_bytes()) for name in names if (folder / name).exists()}


def post(url: str, files: dict | None = None, headers: dict = HEADERS, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=files, headers=headers, timeout=60, **kwargs)


def cli_predict(model: Path, folder: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "spectral", "predict", str(folder), "--model", str(model)],
                         capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def assert_same_answer(served: dict, cli: dict) -> None:
    for field in ("model_probabilities", "probabilities"):
        a, b = served.pop(field), cli.pop(field)
        assert (a is None) == (b is None)
        if a is not None:
            assert max(abs(a[c] - b[c]) for c in a) < 1e-4
    assert abs(served.pop("ood_score") - cli.pop("ood_score")) < 1e-3
    if served["confidence"] is not None:
        assert abs(served.pop("confidence") - cli.pop("confidence")) < 1e-4
    assert served == cli


@pytest.mark.parametrize("files", [("video.mp4", "audio.wav", "sensors.csv"), ("video.mp4", "sensors.csv")],
                         ids=["all", "no-audio"])
def test_a_served_prediction_is_the_clis_for_the_same_files(server, tiny_events, tmp_path, files):
    url, _, model = server
    folder = tmp_path / "event_upload"  # the server's name for an upload's folder: the error words match too
    folder.mkdir()
    for name in files:
        shutil.copy(tiny_events / "event_00000" / name, folder / name)
    response = post(url, files_of(folder))
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["decision"] in ("classified", "out_of_distribution")
    assert_same_answer(served, cli_predict(model, folder))


def test_the_answer_carries_the_clients_event_name_under_concurrent_requests(server, tiny_events):
    url, _, _ = server
    results: dict[int, httpx.Response] = {}

    folders = sorted(tiny_events.iterdir())[:4]

    def send(i: int) -> None:
        results[i] = post(url, files_of(folders[i]), data={"event": f"phone-{i}"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # max-queue is 1: a request may be turned away with 503 + Retry-After, never failed otherwise
    for i, response in results.items():
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            assert response.json()["event"] == f"phone-{i}"
        else:
            assert response.headers["Retry-After"] == "1"


def test_health_and_model_describe_what_is_served(server):
    url, _, model = server
    assert httpx.get(f"{url}/health").status_code == 200
    info = httpx.get(f"{url}/model", headers=HEADERS).json()
    assert info["format"] == "spectral-model/7" and len(info["class_names"]) == 4
    assert info["calibration"]["temperature"] > 0 and info["ood"]["fitted"] is True
    assert httpx.get(f"{url}/model").status_code == 401


def test_a_missing_or_wrong_api_key_is_401(server, tiny_events):
    url, _, _ = server
    files = files_of(tiny_events / "event_00000")
    assert post(url, files, headers={}).status_code == 401
    assert post(url, files, headers={"X-API-Key": "wrong"}).status_code == 401


def test_malformed_requests_are_400_with_the_reason(server, tiny_events):
    url, _, _ = server
    event = tiny_events / "event_00000"
    not_multipart = httpx.post(f"{url}/predict", json={"video": "x"}, headers=HEADERS)
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["error"]
    unknown = post(url, {**files_of(event), "../../etc/passwd": ("x", b"1")})
    assert unknown.status_code == 400 and "unknown field" in unknown.json()["error"]
    assert post(url, data={"event": "nothing"}).status_code == 400  # no file at all


def test_too_large_uploads_are_413_before_anything_is_decoded(server, tiny_events):
    url, _, _ = server
    event = tiny_events / "event_00000"
    big = post(url, {"video.mp4": ("video.mp4", b"\x00" * ((1 << 20) + 1))})
    assert big.status_code == 413 and big.json()["file"] == "video.mp4"
    rows = "timestamp,magnetic_magnitude\n" + "".join(f"{i},45\n" for i in range(600))
    long_table = post(url, {**files_of(event, ("video.mp4",)), "sensors.csv": ("sensors.csv", rows.encode())})
    assert long_table.status_code == 413 and "rows" in long_table.json()["error"]
    # a chunked body (no declared length) is cut off at the request limit (3 MB here)
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="video.mp4"; filename="video.mp4"\r\n\r\n'
        for _ in range(4):
            yield b"\x00" * (1 << 20)
        yield b"\r\n--b--\r\n"

    chunked = httpx.post(f"{url}/predict", content=chunks(), timeout=60,
                         headers={**HEADERS, "Content-Type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413, chunked.text
    # a client that declares 2 GB is answered without its body being read
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() +
                    b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000000\r\n\r\n")
        assert b" 413 " in raw.recv(4096).split(b"\r\n", 1)[0]


def test_files_that_are_not_what_they_claim_are_415(server):
    url, _, _ = server
    mp3 = post(url, {"audio.wav": ("audio.wav", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 100)})
    assert mp3.status_code == 415 and mp3.json()["file"] == "audio.wav"
    zipped = post(url, {"video.mp4": ("video.mp4", b"PK\x03\x04" + b"\x00" * 200)})
    assert zipped.status_code == 415 and zipped.json()["file"] == "video.mp4"


def test_an_event_with_no_usable_modality_is_422_in_the_clis_words(server, tiny_events, tmp_path):
    url, _, model = server
    folder = tmp_path / "event_upload"
    folder.mkdir()
    data = (tiny_events / "event_00000" / "video.mp4").read_bytes()
    (folder / "video.mp4").write_bytes(data[: len(data) // 3])  # truncated: the moov atom is gone
    response = post(url, files_of(folder))
    assert response.status_code == 422
    cli = cli_predict(model, folder)
    assert response.json() == {**cli, "error": cli["error"].replace(f"{tmp_path}/", "")}
    assert str(tmp_path) not in response.text and "spectral-serve-" not in response.text  # no server path leaks


def test_a_full_queue_is_503_with_retry_after(server, tiny_events):
    url, _, _ = server
    release = threading.Event()

    def slow_body():
        yield b"--b\r\n"
        release.wait(30)  # holds its slot while the next request arrives
        yield b'Content-Disposition: form-data; name="event"\r\n\r\nslow\r\n--b--\r\n'

    holder = threading.Thread(target=lambda: httpx.post(
        f"{url}/predict", content=slow_body(), timeout=60,
        headers={**HEADERS, "Content-Type": "multipart/form-data; boundary=b"}))
    holder.start()
    time.sleep(1.0)
    try:
        turned_away = post(url, files_of(tiny_events / "event_00000"))
    finally:
        release.set()
        holder.join()
    assert turned_away.status_code == 503 and turned_away.headers["Retry-After"] == "1"


def test_no_upload_is_left_behind(server, tiny_events):
    url, uploads, _ = server
    post(url, files_of(tiny_events / "event_00001"))
    post(url, {"audio.wav": ("audio.wav", b"not audio")})
    assert list(uploads.iterdir()) == []


def readme_block(heading: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split(heading + "\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_readme_serve_flow_as_written(trained, tiny_events, tmp_path):
    """README, "Serve": start the server, wait for /health, curl an event (on a free port instead of 8000)."""
    out, _ = trained
    (tmp_path / "models").mkdir()
    shutil.copy(out / "model.pt", tmp_path / "models" / "model.pt")
    shutil.copytree(tiny_events / "event_00000", tmp_path / "data" / "demo_events" / "event_00000")
    script = readme_block("## Serve").replace("8000", str(free_port()))
    shell = subprocess.Popen(["bash", "-ec", script + "\nkill %1\nwait\n"], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    stdout, stderr = shell.communicate(timeout=300)
    answer = json.loads(stdout.strip().splitlines()[-1])
    assert answer["event"] == "event_00000" and answer["decision"] in ("classified", "out_of_distribution"), stderr
    # `kill` on the server ended its HTTP and inference processes too: nothing of the session is left
    deadline = time.monotonic() + 15
    while (left := [stat.parent.name for stat in Path("/proc").glob("[0-9]*/stat") if _session_of(stat) == shell.pid]):
        assert time.monotonic() < deadline, [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]
        time.sleep(0.5)


def _session_of(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_the_inference_worker_answers_alone_and_in_batches(trained, tiny_events, tmp_path, max_batch_size):
    """LitServe hands predict one item when batching is off and a list otherwise; a refused item never
    takes its batch down with it."""
    from spectral.serving.config import ServeConfig
    from spectral.serving.server import SpectralAPI

    out, _ = trained
    api = SpectralAPI(ServeConfig(model=out / "model.pt", max_batch_size=max_batch_size))
    api.setup("cpu")
    good = tmp_path / "good" / "event_upload"
    shutil.copytree(sorted(tiny_events.iterdir())[0], good)
    bad = tmp_path / "bad" / "event_upload"
    bad.mkdir(parents=True)
    (bad / "video.mp4").write_bytes(b"\x00" * 64)
    requests = [{"folder": str(good), "event": "good"}, {"folder": str(bad), "event": "bad"}]
    decoded = [api.decode_request(request) for request in requests]
    answers = api.predict(decoded) if max_batch_size > 1 else [api.predict(item) for item in decoded]
    assert answers[0]["event"] == "good" and answers[0]["decision"] in ("classified", "out_of_distribution")
    assert answers[1]["refused"] == 422 and answers[1]["body"]["event"] == "bad"
