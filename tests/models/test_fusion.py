import numpy as np
import pytest
import torch

from spectral.models.artifact import load_model
from spectral.models.audio import AudioEncoder
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import pattern_index
from spectral.models.sensor import SensorEncoder


def test_shapes_match_the_spec():
    model = SpectralFusionModel(15).eval()
    assert model.fusion[0].in_features == 1600 and model.fusion[3].out_features == 128
    assert model.classifier.out_features == 4
    assert model.sensors.mlp[0].in_features == 30  # 15 values + 15 missing-indicators
    out = model.predict(torch.randn(3, 5, 1280), torch.zeros(3, 220_500), torch.randn(3, 15))
    assert out["index"].shape == (3,) and torch.allclose(out["probabilities"].sum(dim=1), torch.ones(3))
    assert torch.all(out["confidence"] == out["probabilities"].max(dim=1).values)
    assert out["ood_score"].shape == (3,) and out["in_distribution"].dtype == torch.bool


def test_an_absent_modality_is_its_learned_embedding_whatever_the_input():
    torch.manual_seed(0)
    model = SpectralFusionModel(15).eval()
    with torch.no_grad():
        model.absent["audio"].normal_()
    video, sensors = torch.randn(2, 5, 1280), torch.randn(2, 15)
    no_audio = torch.tensor([[True, False, True]] * 2)
    with torch.no_grad():
        silent = model(video, torch.zeros(2, 220_500), sensors, no_audio)
        loud = model(video, torch.randn(2, 220_500), sensors, no_audio)
        present = model(video, torch.randn(2, 220_500), sensors)
    torch.testing.assert_close(silent, loud, rtol=0, atol=0)
    assert not torch.allclose(silent, present)


def test_embeddings_beyond_the_training_range_are_clipped_for_the_classifier_not_for_the_ood_score():
    """A branch embedding far outside what training produced (white noise through the audio CNN) reaches the
    classifier as the nearest training-range value, so the logits stay within reach of the training events';
    the OOD detector sees it as it is."""
    from spectral.models.posthoc import fit_embedding_bounds

    torch.manual_seed(0)
    model = SpectralFusionModel(15).eval()
    parts = [torch.randn(20, 1280), torch.randn(20, 256), torch.randn(20, 64)]
    present = torch.ones(20, 3, dtype=torch.bool)
    fit_embedding_bounds(model, parts, present)
    far = [parts[0][:2], 50 * parts[1][:2], parts[2][:2]]
    clipped = [parts[0][:2], (50 * parts[1][:2]).clamp(parts[1].min(dim=0).values, parts[1].max(dim=0).values),
               parts[2][:2]]
    with torch.no_grad():
        torch.testing.assert_close(model.classify(*far, present[:2]), model.classify(*clipped, present[:2]))
        assert not torch.allclose(model.fused(far, present[:2], bounded=False), model.fused(clipped, present[:2]))
        inside = [p[:2] for p in parts]  # training embeddings themselves pass unchanged
        torch.testing.assert_close(model.fused(inside, present[:2]), model.fused(inside, present[:2], bounded=False))


def test_the_pattern_bias_shifts_only_its_own_patterns_logits():
    torch.manual_seed(0)
    model = SpectralFusionModel(15).eval()
    parts = [torch.randn(4, 1280), torch.randn(4, 256), torch.randn(4, 64)]
    masks = torch.tensor([[True, True, True], [False, True, True], [True, True, False], [False, False, False]])
    with torch.no_grad():
        plain = torch.stack([model.classify(*parts, masks[i:i + 1].expand(4, 3))[i] for i in range(4)])
        model.pattern_bias[pattern_index(masks[1:2])] = torch.tensor([0.0, 1.0, -2.0, 3.0])
        biased = model.classify(*parts, masks)
    torch.testing.assert_close(biased - plain, torch.tensor([[0.0] * 4, [0.0, 1.0, -2.0, 3.0], [0.0] * 4, [0.0] * 4]))


def test_log_mel_of_digital_silence_is_finite_and_has_spec_shape():
    encoder = AudioEncoder().eval()
    mel = encoder.log_mel(torch.zeros(2, 220_500))
    assert mel.shape == (2, 1, 128, 431) and torch.isfinite(mel).all()
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


def test_an_events_audio_features_do_not_depend_on_its_batch():
    """AmplitudeToDB's top_db floor is per example: a loud batch-mate must not lift a quiet clip's floor."""
    torch.manual_seed(0)
    encoder = AudioEncoder().eval()
    quiet = torch.randn(1, 220_500) * 1e-3
    quiet[:, 1000:2000] = 0.0
    loud = torch.randn(1, 220_500) * 0.9
    alone = encoder.log_mel(quiet)
    together = encoder.log_mel(torch.cat([loud, quiet]))[1:]
    torch.testing.assert_close(alone, together)
    batch_floor = encoder.to_db(encoder.mel(torch.cat([loud, quiet])))[1:]  # the old [B, mels, time] call
    assert (batch_floor - alone[:, 0]).abs().max() > 5  # which this test would have caught
    with torch.no_grad():
        torch.testing.assert_close(encoder(quiet), encoder(torch.cat([loud, quiet, quiet]))[1:2])


def test_a_model_file_of_an_earlier_format_is_refused_with_the_remedy(tmp_path):
    torch.save({"format": "spectral-model/3", "config": {}, "state_dict": {}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"spectral-model/3.*dvc repro train"):
        load_model(tmp_path / "old.pt")
