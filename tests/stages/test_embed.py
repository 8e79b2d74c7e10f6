import json
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skimage_data

from spectral.io.frames import load_frames
from spectral.models.backbone import _load_packaged, create_backbone, packaged_weights_path, rebuild_frame_encoder
from spectral.models.fusion import VideoBranch
from spectral.runtime.shards import read_samples, shard_paths
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, build_encoder, embed_stream, encode_frames, run_embed

ESPRESSO, COFFEE_MUG, CUP = 967, 504, 968


def test_embedding_shards_mirror_decoded_shards(decoded, embedded):
    manifest = json.loads((embedded / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["backbone"]["weights"] == "packaged:efficientnet-lite0-57934424.pth"
    assert manifest["backbone"]["weights_sha256"].startswith("579344248a93")
    assert manifest["video"]["num_frames"] == 4
    for split in ("train", "val", "test"):
        assert [p.name for p in shard_paths(decoded, split)] == [p.name for p in shard_paths(embedded, split)]
        source = list(read_samples(shard_paths(decoded, split)))
        cached = list(read_samples(shard_paths(embedded, split)))
        assert [s["__key__"] for s in source] == [s["__key__"] for s in cached]
        assert manifest["per_split"][split] == len(cached)
        for a, b in zip(source, cached, strict=True):
            assert b["emb.npy"].shape == (4, 1280) and b["emb.npy"].dtype == np.float16
            assert np.isfinite(b["emb.npy"]).all()
            np.testing.assert_array_equal(a["audio.npy"], b["audio.npy"])
            assert a["json"] == b["json"]


def test_fp32_embed_stage_equals_the_plain_backbone_on_raw_frames(decoded, tmp_path):
    """The stage (shard loader, batches straddling events, channels_last) against a plain fp32 encoder rebuilt
    from a state dict, as an exported model holds it, run event by event: equal up to the fp16 cache."""
    run_embed(decoded, tmp_path, EmbedConfig(precision="fp32", batch_frames=7))
    backbone, info = create_backbone("tf_efficientnet_lite0", "packaged")
    plain = VideoBranch(1280, rebuild_frame_encoder(info, backbone.state_dict(), torch.float32, channels_last=False))
    raw = {s["__key__"]: load_frames(s) for s in read_samples(shard_paths(decoded, "train"))}
    cached = {s["__key__"]: s["emb.npy"] for s in read_samples(shard_paths(tmp_path, "train"))}
    assert raw.keys() == cached.keys() and len(raw) > 2
    for key in raw:
        with torch.no_grad():
            end_to_end = plain(torch.from_numpy(raw[key])[None])
        from_cache = VideoBranch(1280)(torch.from_numpy(cached[key].astype(np.float32))[None])
        assert (end_to_end - from_cache).norm() / end_to_end.norm() < 1e-3


def test_bf16_embeddings_stay_close_to_fp32_on_real_photos():
    """Measured: 3.0 % (coffee), 4.2 % (astronaut), 2.7 % (chelsea) relative L2."""
    photos = [skimage_data.coffee(), skimage_data.astronaut(), skimage_data.chelsea()]
    frames = torch.from_numpy(np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.Resampling.BICUBIC))
                                        for p in photos]))
    fp32_encoder, _, device = build_encoder(EmbedConfig(precision="fp32"))
    bf16_encoder, _, _ = build_encoder(EmbedConfig(precision="bf16"))
    fp32, bf16 = encode_frames(fp32_encoder, frames, device), encode_frames(bf16_encoder, frames, device)
    relative = (bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)
    assert (relative < 0.06).all()


def test_packaged_weights_are_really_imagenet_trained():
    """Known answer on a real photograph shipped by scikit-image: a cup of coffee."""
    _, info = create_backbone("tf_efficientnet_lite0", "packaged")
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    _load_packaged(classifier, packaged_weights_path())
    image = np.asarray(Image.fromarray(skimage_data.coffee()).resize((224, 224), Image.Resampling.BICUBIC))
    x = (torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    probabilities = classifier.eval()(x[None]).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ESPRESSO and probabilities[ESPRESSO] > 0.8
    assert info.mean == (0.5, 0.5, 0.5) and info.embedding_dim == 1280


def test_weight_sources_are_explicit_and_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ValueError, match="packaged holds tf_efficientnet_lite0 weights"):
        create_backbone("efficientnet_b0", "packaged")
    with pytest.raises(FileNotFoundError, match="neither 'packaged', 'hub' nor an existing file"):
        create_backbone("efficientnet_b0", str(tmp_path / "missing.pth"))
    backbone, _ = create_backbone("tf_efficientnet_lite0", "packaged")
    weights = tmp_path / "lite0.pth"
    torch.save(backbone.state_dict(), weights)
    _, info = create_backbone("tf_efficientnet_lite0", str(weights))
    assert info.weights == f"file:{weights}" and len(info.weights_sha256) == 64


def test_frames_are_batched_at_a_fixed_size_across_event_boundaries():
    lengths = [3, 7, 1, 5, 5]
    samples = [{"__key__": f"e{i}", "frames": torch.arange(n) + 100 * i} for i, n in enumerate(lengths)]
    seen_batches = []

    def encode(frames):
        seen_batches.append(len(frames))
        return frames[:, None].float() * 2

    results = list(embed_stream(iter(samples), encode, batch_frames=4))
    assert seen_batches == [4, 4, 4, 4, 4, 1]  # only the last batch is short
    assert [s["__key__"] for s, _ in results] == [f"e{i}" for i in range(5)]
    for sample, embeddings in results:
        torch.testing.assert_close(embeddings[:, 0], sample["frames"].float() * 2)


def test_lossless_frame_cache_gives_the_embeddings_of_raw_frames(tiny_events, decoded, embedded, tmp_path):
    """The default h264 cache is lossless: embedding shards are byte-identical to those made from raw npy frames."""
    from conftest import TINY_DECODE

    run_decode(tiny_events, tmp_path / "npy", DecodeConfig(**{**TINY_DECODE.__dict__, "frame_format": "npy"}))
    run_embed(tmp_path / "npy", tmp_path / "embedded", EmbedConfig(batch_frames=32))
    for shard in embedded.glob("*.tar"):
        assert (tmp_path / "embedded" / shard.name).read_bytes() == shard.read_bytes()
    raw = sum(p.stat().st_size for p in (tmp_path / "npy").glob("*.tar"))
    assert sum(p.stat().st_size for p in decoded.glob("*.tar")) < raw


def test_multithreaded_ranks_beyond_the_cores_are_refused_with_a_remedy(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(os.sched_getaffinity(0))))
    with pytest.raises(ValueError, match="cpu_threads: 1"):
        build_encoder(EmbedConfig(device="cpu", cpu_threads=2))
