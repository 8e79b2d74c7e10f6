import pytest
import torch

from spectral.models.modalities import describe, pattern_index, presence_patterns
from spectral.models.ood import MahalanobisDetector


def test_pattern_index_covers_the_seven_modality_combinations():
    patterns = presence_patterns()
    assert len(patterns) == 7 and pattern_index(torch.tensor(patterns)).tolist() == list(range(7))
    assert describe(patterns[-1]) == "all" and describe((True, False, True)) == "without audio"
    assert describe((False, True, False)) == "only audio"
    with pytest.raises(ValueError, match="at least one modality"):
        pattern_index(torch.tensor([[False, False, False]]))


def test_mahalanobis_accepts_95_percent_of_its_distribution_and_flags_far_points():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [4.0] * 8])
    scales = torch.linspace(0.5, 2.0, 8)  # correlated-free but anisotropic: Euclidean would get it wrong

    def draw(n):
        labels = torch.randint(0, 2, (n,), generator=generator)
        return centres[labels] + torch.randn(n, 8, generator=generator) * scales, labels

    detector = MahalanobisDetector(num_classes=2, feature_dim=8)
    all_present = torch.ones(1, 3, dtype=torch.bool)
    pattern = int(pattern_index(all_present))
    train, labels = draw(4000)
    detector.fit_pattern(pattern, train, labels)
    val, _ = draw(4000)
    detector.set_threshold(pattern, detector.score(val, all_present.expand(4000, 3)))
    fresh, _ = draw(4000)
    accepted = detector.in_distribution(detector.score(fresh, all_present.expand(4000, 3)),
                                        all_present.expand(4000, 3)).float().mean()
    assert 0.93 < accepted < 0.97
    # 3 units off along the narrowest axis is ~6 sigma there; along the widest it is 1.5 sigma
    narrow, wide = torch.zeros(1, 8), torch.zeros(1, 8)
    narrow[0, 0], wide[0, -1] = 3.0, 3.0
    assert not detector.in_distribution(detector.score(narrow, all_present), all_present)
    assert detector.in_distribution(detector.score(wide, all_present), all_present)
    unfitted = pattern_index(torch.tensor([[True, False, False]]))
    assert detector.threshold[unfitted] == float("inf")  # a pattern never fitted flags nothing
