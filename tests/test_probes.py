"""Linear probes find planted linear structure and nothing in noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hookedclip.probes import head_probe_grid, probe_accuracy


def test_probe_reads_planted_label_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    noise = rng.normal(size=(600, 20))
    planted = noise.copy()
    planted[:, 5] += 4.0 * labels  # the label is linearly readable from one feature
    assert probe_accuracy(planted, labels) > 0.95
    assert probe_accuracy(noise, labels) < 0.5
    with pytest.raises(ValueError, match="two classes"):
        probe_accuracy(noise, np.zeros(600, dtype=int))


def test_head_probe_grid_shape_and_order():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    heads = torch.from_numpy(rng.normal(size=(6, 200, 8)))
    heads[4, :, 0] += 5.0 * torch.from_numpy(labels)  # head L1H1 of a 3-head model carries the label
    grid = head_probe_grid(heads, labels, n_layers=2, n_heads=3)
    assert grid.shape == (2, 3) and grid.argmax() == 4 and grid[1, 1] > 0.95


def test_head_probe_grid_refuses_a_wrong_head_count():
    heads = torch.zeros(5, 10, 4)
    with pytest.raises(ValueError, match="n_layers \\* n_heads = 2 \\* 3 = 6"):
        head_probe_grid(heads, np.arange(10) % 2, n_layers=2, n_heads=3)
