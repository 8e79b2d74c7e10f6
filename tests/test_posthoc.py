import numpy as np
import torch

from spectral.posthoc import fit_temperature, nll


def test_temperature_scaling_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z); the model reports 3z (overconfident): the fitted T is ~3 and lowers NLL."""
    rng = np.random.default_rng(0)
    true_logits = torch.from_numpy(rng.normal(0, 1.5, (4000, 4)))
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=torch.Generator().manual_seed(0))[:, 0]
    temperature = fit_temperature(3 * true_logits, labels)
    assert abs(temperature - 3) < 0.25
    assert nll(3 * true_logits, labels, temperature) < nll(3 * true_logits, labels)
    assert fit_temperature(3 * true_logits, labels) == temperature  # a grid: same logits, same T


def test_temperature_never_changes_the_predicted_class():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(2))
    temperature = fit_temperature(logits, labels)
    assert torch.equal((logits / temperature).argmax(dim=1), logits.argmax(dim=1))
