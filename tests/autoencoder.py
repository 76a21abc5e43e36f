"""A user's own model for the open-loop tests: a digits autoencoder (a regression model, primary
metric "mse", lower is better), its data and its evaluate function."""
import torch
import torch.nn as nn

from pwfn_viz.data.datasets import create_dataset

DIGITS = create_dataset("digits")
IMAGES = torch.stack([DIGITS.train[i][0].flatten() for i in range(len(DIGITS.train))])
TEST_IMAGES = torch.stack([DIGITS.test[i][0].flatten() for i in range(len(DIGITS.test))])


class AutoEncoder(nn.Module):
    """Reconstructs an 8x8 digits image through 12 numbers: a regression model of the user's own."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(64, 12), nn.ReLU())
        self.decode = nn.Linear(12, 64)

    def forward(self, x):
        return self.decode(self.encode(x))


def reconstruction_error(model):
    out = model(TEST_IMAGES)
    return {"mse": nn.functional.mse_loss(out, TEST_IMAGES).item(), "mae": (out - TEST_IMAGES).abs().mean().item()}
