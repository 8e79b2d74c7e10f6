"""`spectral serve`: the spec's production inference wrapper as an HTTP service, on LitServe.

LitServe (Lightning's server on FastAPI/uvicorn) gives the inference worker process, dynamic
batching across concurrent requests and the `/health` readiness probe. What it does not give
is an upload path: its own multipart handling pickles Starlette's spooled files into the
worker queue, which fails for any file over 1 MB. So `/predict` is a LitSpec endpoint of our
own: in the API process it bounds and writes the upload to a private temporary folder, queues
only that folder's path, and removes the folder when the answer is back, whatever happened.
The worker decodes it with `spectral predict`'s own code (spectral.inference.Predictor), so a
served answer is the CLI's answer for the same files.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from spectral.events import EventError, EventTimeout, attempt_twice, time_budget
from spectral.serving.config import ServeConfig
from spectral.serving.uploads import (
    EVENT_FIELD,
    UPLOAD_FIELDS,
    UPLOAD_FOLDER,
    Refusal,
    check_content,
    check_media_type,
)

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_SNIFF_BYTES = 64
_MAX_PARTS = 16  # parts parsed before the field names are checked: enough to name the unknown ones


def _answer(error: Refusal) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return JSONResponse(error.body, status_code=error.status, headers=headers)


class EventUploadSpec(LitSpec):
    """The HTTP side: `POST /predict` (one event as multipart), `GET /model` (what a client needs to trust it)."""

    def __init__(self, config: ServeConfig, model_info: dict, api_key: str | None) -> None:
        super().__init__()
        self.api_path = "/predict"
        self.config, self.model_info, self._api_key = config, model_info, api_key
        self._in_flight = 0
        self.add_endpoint("/predict", self.predict_endpoint, ["POST"])
        self.add_endpoint("/model", self.model_endpoint, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not given or not hmac.compare_digest(given.encode(), self._api_key.encode()):
            raise Refusal(401, "missing or wrong API key: send it as the X-API-Key header")

    async def model_endpoint(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except Refusal as refusal:
            return _answer(refusal)
        return JSONResponse(self.model_info)

    async def predict_endpoint(self, request: Request) -> JSONResponse:
        folder: Path | None = None
        self._in_flight += 1
        try:
            self._authorize(request)
            if self._in_flight > self.config.max_queue:
                raise Refusal(503, f"{self.config.max_queue} requests are already in flight; retry shortly")
            folder, name = await self._receive(request)
            return JSONResponse(await self._submit({"folder": str(folder), "event": name}))
        except Refusal as refusal:
            return _answer(refusal)
        finally:
            self._in_flight -= 1
            if folder is not None:
                shutil.rmtree(folder.parent, ignore_errors=True)

    async def _receive(self, request: Request) -> tuple[Path, str]:
        """The upload, bounded, in a fresh private folder: (event folder, the name the answer carries)."""
        limits = self.config.limits
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_request_bytes):
            raise Refusal(413, f"the request declares {declared} bytes; the limit is {limits.max_request_bytes:,}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise Refusal(400, "send the event as multipart/form-data with fields named " + ", ".join(UPLOAD_FIELDS))
        try:
            form = await request.form(max_files=_MAX_PARTS, max_fields=_MAX_PARTS, max_part_size=1024)
        except StarletteHTTPException as err:  # the parser's or the size guard's refusal: the client's body
            too_large = err.status_code == 413
            raise Refusal(413 if too_large else 400, f"{'' if too_large else 'malformed multipart body: '}{err.detail}"
                          + (f" (the limit is {limits.max_request_bytes:,} bytes)" if too_large else "")) from None
        try:
            unknown = sorted(set(form.keys()) - {*UPLOAD_FIELDS, EVENT_FIELD})
            if unknown:
                raise Refusal(400, f"unknown field(s) {', '.join(map(repr, unknown))}; an event has "
                                   f"{', '.join(UPLOAD_FIELDS)} and an optional '{EVENT_FIELD}' name")
            files = {key: value for key, value in form.multi_items() if key in UPLOAD_FIELDS}
            if not files:
                raise Refusal(400, f"no file: send at least one of {', '.join(UPLOAD_FIELDS)}")
            if len(files) != len([key for key, _ in form.multi_items() if key in UPLOAD_FIELDS]):
                raise Refusal(400, "a file field is repeated")
            if any(not isinstance(value, UploadFile) for value in files.values()):
                raise Refusal(400, "file fields must be file parts (with a filename)")
            name = form.get(EVENT_FIELD, UPLOAD_FOLDER)
            if not isinstance(name, str) or not name.isprintable() or len(name) > 200:
                raise Refusal(400, f"'{EVENT_FIELD}' must be printable text of at most 200 characters")
            root = Path(tempfile.mkdtemp(prefix="spectral-serve-", dir=self.config.upload_dir))  # mode 0700
            folder = root / UPLOAD_FOLDER
            folder.mkdir()
            try:
                for field, upload in files.items():
                    await self._store(upload, folder / field, field)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            return folder, name
        finally:
            await form.close()

    async def _store(self, upload: UploadFile, target: Path, field: str) -> None:
        limits = self.config.limits
        if upload.size is not None and upload.size > limits.max_file_bytes:
            raise Refusal(413, f"{upload.size:,} bytes, over the {limits.max_file_bytes:,}-byte limit per file", field)
        await upload.seek(0)
        check_media_type(field, await upload.read(_SNIFF_BYTES))
        await upload.seek(0)
        written = 0
        with target.open("wb") as out:
            while chunk := await upload.read(_CHUNK):
                written += len(chunk)
                if written > limits.max_file_bytes:
                    raise Refusal(413, f"over the {limits.max_file_bytes:,}-byte limit per file", field)
                out.write(chunk)

    async def _submit(self, payload: dict) -> dict:
        """Queue the request for the inference worker and wait for its answer (the LitSpec protocol)."""
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put_nowait((self.response_queue_id, uid, time.monotonic(), payload))
        await event.wait()
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            if isinstance(response, HTTPException):
                raise Refusal(response.status_code, str(response.detail))
            log.error("inference worker failed: %s", response)
            raise Refusal(500, "internal error while predicting; the event was not at fault")
        if "refused" in response:
            raise Refusal(response["refused"], **response["body"])
        return response


class SpectralAPI(ls.LitAPI):
    """The inference worker: decodes a request's folder with the predictor's own code, batches, predicts.

    A request that cannot be answered comes back as {"refused": status, "body": ...} rather than an
    exception: LitServe fails a whole batch on one request's exception."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(max_batch_size=config.max_batch_size or 1, batch_timeout=config.batch_timeout,
                         spec=EventUploadSpec(config, model_info(config.model), load_api_key(config.api_key_env)))
        self.config = config

    def setup(self, device: str) -> None:
        from spectral.inference import Predictor

        self.predictor = Predictor(self.config.model, device=device)
        log.info("serving %s on %s", self.config.model, device)
        warm_up(self.predictor)  # /health says ready only once a real event has gone through

    def decode_request(self, request: dict) -> object:
        folder = Path(request["folder"])
        try:
            check_content(folder, self.config.limits)
            with time_budget(self.config.limits.decode_seconds, "decoding the upload"):
                prepared = attempt_twice("serve", folder.name, lambda: self.predictor.prepare(folder))
            prepared.name = request["event"]
            return prepared
        except Refusal as refusal:
            return {"refused": refusal.status, "body": refusal.body}
        except EventTimeout as err:
            return {"refused": 413, "body": {"error": str(err)}}
        except EventError as err:  # the words of `spectral predict`'s error object, without the server's paths
            return {"refused": 422, "body": {"event": request["event"],
                                             "error": str(err).replace(f"{folder.parent}/", "")}}
        except Exception as err:  # the machine's failure: this request only, never the batch
            log.exception("decoding a request failed")
            return {"refused": 500, "body": {"error": f"internal error while decoding ({type(err).__name__}); "
                                                       f"the event was not at fault"}}

    def predict(self, batch: list | object) -> list | dict:
        """Answers for a batch (a list when --max-batch-size > 1; LitServe passes one item otherwise)."""
        items = batch if self.max_batch_size > 1 else [batch]
        prepared = [item for item in items if not isinstance(item, dict)]
        answers = iter(self.predictor.answers(prepared) if prepared else [])
        out = [item if isinstance(item, dict) else next(answers) for item in items]
        return out if self.max_batch_size > 1 else out[0]

    def encode_response(self, output: dict) -> dict:
        return output


def load_api_key(variable: str | None) -> str | None:
    """The API key from the named environment variable; a named but empty variable is a setup error."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise SystemExit(f"--api-key-env {variable}: the environment variable is not set or empty")
    return key


def model_info(path: Path) -> dict:
    """GET /model: class names, format, provenance, calibration and OOD settings of the served model."""
    import torch

    from spectral.models.artifact import FORMAT, load_model

    model, config = load_model(path, map_location="cpu")
    thresholds = model.ood.threshold.tolist()
    return {"model": str(path), "format": FORMAT, "class_names": config["class_names"],
            "backbone": config["backbone"], "video": config["video"], "audio": config["audio"],
            "sensor_features": config["sensor_features"], "provenance": config.get("provenance"),
            "calibration": {"temperature": round(float(model.temperature), 6),
                            "label_noise": round(float(model.label_noise), 6)},
            "ood": {"detector": "Mahalanobis distance of the fused features, per modality pattern",
                    "fitted": bool(model.ood.fitted),
                    "thresholds": [None if t == float("inf") else round(t, 4) for t in thresholds]},
            "torch": torch.__version__}


def warm_up(predictor) -> None:
    """Predict one generated event (a 1 s clip and 1 s of tone: the decoders, the model, calibration and the
    OOD score all run once) before the worker reports ready."""
    import av
    import numpy as np
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="spectral-warmup-") as tmp:
        folder = Path(tmp) / "event_warmup"
        folder.mkdir()
        with av.open(str(folder / "video.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            for k in range(30):
                frame = np.full((96, 128, 3), 4 * k, dtype=np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(44_100) / 44_100)
        sf.write(str(folder / "audio.wav"), tone, 44_100)
        answer = next(predictor.predict([folder]))
        if "error" in answer:
            raise RuntimeError(f"the warm-up event could not be classified: {answer['error']}")


def serve(config: ServeConfig) -> None:
    """Run the server until SIGINT or SIGTERM, which also end its HTTP and inference processes."""
    from spectral.runtime.lifecycle import take_children_along

    take_children_along()
    import torch

    gpu = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    config = replace(config, max_batch_size=config.max_batch_size or (8 if gpu else 1))
    accelerator = "auto" if config.device == "auto" else config.device
    server = ls.LitServer(SpectralAPI(config), accelerator=accelerator, devices=1, timeout=60,
                          max_payload_size=config.limits.max_request_bytes)
    print(f"spectral serve: {config.model} on http://{config.host}:{config.port}, batches of up to "
          f"{config.max_batch_size} (limits: {asdict(config.limits)})", flush=True)
    server.run(host=config.host, port=config.port, generate_client_file=False, log_level="warning")

