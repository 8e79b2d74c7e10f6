"""The backbone's weights have an identity whatever their source (file, package, hub)."""

import torch
from torch import nn

from spectral.models.backbone import _tensors_sha256


def test_hub_weights_are_identified_by_their_loaded_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    same = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    same.load_state_dict(model.state_dict())
    assert _tensors_sha256(model) == _tensors_sha256(same)
    with torch.no_grad():
        same[0].weight[0, 0, 0, 0] += 1e-6
    assert _tensors_sha256(model) != _tensors_sha256(same)
    same.load_state_dict(model.state_dict())
    same[1].num_batches_tracked += 1  # buffers count: other BatchNorm statistics are other weights
    assert _tensors_sha256(model) != _tensors_sha256(same)
