"""Shared fixtures of the PyTorch-side tests: one small model with a frozen part and BatchNorm,
and that model saved as safetensors. torch is imported only inside fixtures, so test modules
that do not use them (the Keras ones) do not pay for it."""

import pytest


def _small_net():
    import torch
    from torch import nn

    class SmallNet(nn.Module):
        """conv (frozen) -> BatchNorm -> linear head."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Linear(8, 4)
            for p in self.features[0].parameters():
                p.requires_grad_(False)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    net = SmallNet()
    # one training step so the BatchNorm statistics are not their initial values
    net.train()
    net(torch.randn(4, 3, 6, 6))
    return net.eval()


@pytest.fixture
def small_net():
    """A fresh ``SmallNet``: ``features.0`` Conv2d(3, 8, 3) frozen, ``features.1`` BatchNorm2d(8),
    ``head`` Linear(8, 4)."""
    return _small_net()


@pytest.fixture
def small_net_file(tmp_path, small_net):
    """``(path, state_dict)``: ``small_net``'s state dict saved with safetensors."""
    from safetensors.torch import save_file

    path = tmp_path / "small_net.safetensors"
    state = {k: v.contiguous() for k, v in small_net.state_dict().items()}
    save_file(state, str(path))
    return path, state
