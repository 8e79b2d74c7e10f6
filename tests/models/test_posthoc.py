import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from spectral.models.calibration import MAX_LABEL_NOISE, calibrated_probabilities
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import describe, presence_patterns
from spectral.models.posthoc import (
    BIAS_RIDGE,
    branch_outputs,
    fit_calibration,
    fit_class_bias,
    fit_pattern_biases,
    fit_posthoc,
    nll,
)


def _labels_from(true_logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=generator)[:, 0]


def test_calibration_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z); the model reports 3z (overconfident): the fitted T is ~3, no label
    noise is invented, and NLL drops."""
    true_logits = torch.from_numpy(np.random.default_rng(0).normal(0, 1.5, (4000, 4)))
    labels = _labels_from(true_logits)
    temperature, label_noise = fit_calibration(3 * true_logits, labels)
    assert abs(temperature - 3) < 0.25 and label_noise < 0.01
    assert nll(3 * true_logits, labels, temperature, label_noise) < nll(3 * true_logits, labels)
    assert fit_calibration(3 * true_logits, labels) == (temperature, label_noise)  # a grid: same logits, same fit


def test_calibration_recovers_a_known_label_noise_where_temperature_alone_is_hijacked():
    """A calibrated, confident model (labels drawn from softmax(z)) whose labels are then flipped to
    another class 3 % of the time, as the demo's generator does: the joint fit finds ε ≈ 3 % with T ≈ 1,
    while temperature alone (ε held at 0) must soften every event to pay for the flips."""
    rng = np.random.default_rng(1)
    # confident, but no event beyond the odds min_temperature allows at T = 1 (a gap of log(1 / MIN_RESIDUAL))
    true_logits = torch.from_numpy(rng.normal(0, 6.0, (4000, 4)).clip(-5, 5))
    labels = _labels_from(true_logits, seed=1)
    flipped = torch.from_numpy(rng.random(4000) < 0.03)
    labels[flipped] = (labels[flipped] + torch.from_numpy(rng.integers(1, 4, int(flipped.sum())))) % 4
    temperature, label_noise = fit_calibration(true_logits, labels)
    assert abs(label_noise - 0.03) < 0.01 and abs(temperature - 1) < 0.15
    temperature_alone, no_noise = fit_calibration(true_logits, labels, label_noise=False)
    assert temperature_alone > 1.25 and no_noise == 0.0
    assert nll(true_logits, labels, temperature, label_noise) < nll(true_logits, labels, temperature_alone)


def test_calibration_leaves_every_validation_event_some_doubt():
    """An easy validation split, every event right by a wide margin: the NLL fit alone would take the smallest T
    of its grid and every answer would be softmax = 1, all events one vector. The fit stops where the most
    confident event still leaves MIN_RESIDUAL (1e-5) to the other classes."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (60,), generator=generator)
    logits = torch.randn(60, 4, generator=generator) + 12 * torch.nn.functional.one_hot(labels, 4)
    temperature, label_noise = fit_calibration(logits, labels)
    assert temperature > 0.05  # above the grid's floor, where the NLL alone would put it
    softmax = torch.softmax(logits.double() / temperature, dim=1)
    assert (1 - softmax.max(dim=1).values).min() >= 0.9e-5
    answers = calibrated_probabilities(logits.double(), temperature, label_noise)
    assert len({tuple(row) for row in answers.numpy().round(6).tolist()}) == 60


def test_calibration_never_changes_the_predicted_class():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(2))  # pure noise
    fitted = fit_calibration(logits, labels)
    for temperature, label_noise in (fitted, (0.05, MAX_LABEL_NOISE), (20.0, MAX_LABEL_NOISE)):
        probabilities = calibrated_probabilities(logits, temperature, label_noise)
        assert torch.equal(probabilities.argmax(dim=1), logits.argmax(dim=1))
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(50))


def test_class_bias_recovers_a_known_shift_and_the_ridge_bounds_a_separable_class():
    """Labels drawn from softmax(z); the model reports z with class 3 pushed up by 2 (a shifted boundary, as
    an absent-modality path can learn): the fit moves it back by ~2 relative to the others, and the
    predictions it changes become right more often than wrong. Calibrated logits get ~no bias; a class the
    logits separate perfectly is not pushed to infinity with the ridge the pipeline uses."""
    true_logits = torch.from_numpy(np.random.default_rng(2).normal(0, 2.0, (20000, 4)))
    labels = _labels_from(true_logits, seed=2)
    shifted = true_logits + torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    bias = fit_class_bias(shifted, labels, ridge=1e-6)
    assert torch.allclose(bias - bias[:3].mean(), torch.tensor([0.0, 0.0, 0.0, -2.0]), atol=0.12)
    before, after = shifted.argmax(dim=1), (shifted + bias).argmax(dim=1)
    changed = before != after
    assert (after[changed] == labels[changed]).float().mean() > (before[changed] == labels[changed]).float().mean()
    assert fit_class_bias(true_logits, labels, ridge=1e-6).abs().max() < 0.1
    never = torch.from_numpy(np.random.default_rng(3).normal(0, 1.0, (200, 4)))
    never_labels = torch.tensor([0, 1, 2] * 66 + [0, 1])  # class 3 never occurs: its unridged bias runs off
    assert fit_class_bias(never, never_labels, ridge=1e-6).abs().max() > 5
    assert fit_class_bias(never, never_labels, ridge=BIAS_RIDGE).abs().max() < 2.5


def test_pattern_biases_fit_each_pattern_on_the_events_that_have_its_modalities():
    """Events recorded without audio stay out of every pattern that keeps audio; a pattern with too few
    events gets no bias, and a refit starts from zero rather than from the previous biases."""
    torch.manual_seed(0)
    model = SpectralFusionModel(15).eval()
    parts = [torch.randn(60, 1280), torch.randn(60, 256), torch.randn(60, 64)]
    present = torch.ones(60, 3, dtype=torch.bool)
    present[:10, 1] = False  # recorded without audio
    labels = np.random.default_rng(0).integers(0, 4, 60)
    reference = SpectralFusionModel(15).eval()
    reference.load_state_dict(model.state_dict())  # pattern_bias zero: the raw logits

    def expected(pattern: tuple[bool, bool, bool], rows: slice) -> list[float]:
        mask = torch.tensor(pattern).expand(60, 3)[rows]
        with torch.no_grad():
            logits = reference.classify(*[p[rows] for p in parts], mask)
        return fit_class_bias(logits, torch.from_numpy(labels[rows])).tolist()

    biases = fit_pattern_biases(model, parts, present, labels, min_events=5)
    assert len(biases) == 6 and not model.pattern_bias[-1].any()
    assert biases["without video"] == pytest.approx(expected((False, True, True), slice(10, 60)), abs=1e-4)
    assert biases["only sensors"] == pytest.approx(expected((False, False, True), slice(0, 60)), abs=1e-4)
    assert biases["without audio"] == pytest.approx(expected((True, False, True), slice(0, 60)), abs=1e-4)
    biases = fit_pattern_biases(model, parts, present, labels, min_events=55)
    assert biases["without video"] is None and biases["only sensors"] is not None
    index = presence_patterns().index((False, True, True))
    assert not model.pattern_bias[index].any()


def test_ood_detector_fits_each_pattern_on_the_events_that_have_its_modalities():
    """Events recorded without audio stay out of the statistics and thresholds of every pattern that keeps
    audio (masked, they are "without audio", whose features differ), and count for the patterns that drop it."""
    torch.manual_seed(0)
    model = SpectralFusionModel(15).eval()
    reference = SpectralFusionModel(15).eval()
    reference.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    loaders = []
    for size in (60, 40):  # train, val
        present = torch.ones(size, 3, dtype=torch.bool)
        present[:10, 1] = False  # recorded without audio
        tensors = (torch.randn(size, 2, 1280, generator=generator), torch.randn(size, 8192, generator=generator),
                   torch.randn(size, 15, generator=generator), present,
                   torch.randint(0, 4, (size,), generator=generator))
        loaders.append(DataLoader(TensorDataset(*tensors), batch_size=16))
    fitted = fit_posthoc(model, *loaders)
    (train_parts, _, train_labels), (val_parts, _, _) = (branch_outputs(reference, loader) for loader in loaders)
    for pattern, rows in (((True, True, True), slice(10, None)), ((False, True, True), slice(10, None)),
                          ((True, False, True), slice(None))):
        index = presence_patterns().index(pattern)
        with torch.no_grad():
            train = reference.fused([p[rows] for p in train_parts], torch.tensor(pattern).expand(60, 3)[rows])
            reference.ood.fit_pattern(index, train, torch.from_numpy(train_labels[rows]))
            val_mask = torch.tensor(pattern).expand(40, 3)[rows]
            reference.ood.set_threshold(index, reference.ood.score(reference.fused(
                [p[rows] for p in val_parts], val_mask), val_mask))
        torch.testing.assert_close(model.ood.means[index], reference.ood.means[index])
        torch.testing.assert_close(model.ood.precision[index], reference.ood.precision[index])
        assert fitted["ood_thresholds"][describe(pattern)] == pytest.approx(
            float(reference.ood.threshold[index]), abs=1e-4)
