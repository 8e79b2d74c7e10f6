import numpy as np
import torch

from spectral.embed import EmbedConfig, build_encoder
from spectral.models.audio import AudioEncoder
from spectral.models.fusion import SpectralFusionModel
from spectral.models.sensor import SensorEncoder


def test_raw_frames_and_cached_embeddings_give_the_same_logits():
    torch.manual_seed(0)
    encoder, _, _ = build_encoder(EmbedConfig(precision="fp32"))
    model = SpectralFusionModel(15, frame_encoder=encoder).eval()
    frames = torch.randint(0, 256, (2, 3, 224, 224, 3), dtype=torch.uint8)
    audio, sensors = torch.randn(2, 220_500) * 0.1, torch.randn(2, 15)
    with torch.no_grad():
        cached = encoder(frames.flatten(0, 1)).view(2, 3, -1)
        from_raw = model(frames, audio, sensors)
        from_cache = model(cached, audio, sensors)
        from_fp16_cache = model(cached.half(), audio, sensors)
    torch.testing.assert_close(from_raw, from_cache)
    torch.testing.assert_close(from_raw, from_fp16_cache, atol=1e-3, rtol=1e-3)


def test_shapes_match_the_spec():
    model = SpectralFusionModel(15).eval()
    assert model.fusion[0].in_features == 1600 and model.fusion[3].out_features == 128
    assert model.classifier.out_features == 4
    assert model.sensors.mlp[0].in_features == 30  # 15 values + 15 missing-indicators
    index, confidence, probabilities = model.predict(torch.randn(3, 5, 1280), torch.zeros(3, 220_500),
                                                     torch.randn(3, 15))
    assert index.shape == (3,) and torch.allclose(probabilities.sum(dim=1), torch.ones(3))
    assert torch.all(confidence == probabilities.max(dim=1).values)


def test_log_mel_of_digital_silence_is_finite_and_has_spec_shape():
    encoder = AudioEncoder().eval()
    mel = encoder.log_mel(torch.zeros(2, 220_500))
    assert mel.shape == (2, 128, 431) and torch.isfinite(mel).all()
    assert torch.isfinite(encoder(torch.zeros(2, 220_500))).all()


def test_missing_sensor_values_are_imputed_and_flagged():
    encoder = SensorEncoder(3).eval()
    encoder.set_statistics(torch.tensor([10.0, 0.0, 5.0]), torch.tensor([2.0, 0.0, 1.0]))
    assert encoder.std.tolist() == [2.0, 1.0, 1.0]  # zero std would divide by zero
    with_nan = torch.tensor([[np.nan, 1.0, 5.0]])
    at_mean = torch.tensor([[10.0, 1.0, 5.0]])
    out_nan, out_mean = encoder(with_nan), encoder(at_mean)
    assert torch.isfinite(out_nan).all()
    assert not torch.allclose(out_nan, out_mean)  # the missing-indicator tells them apart
