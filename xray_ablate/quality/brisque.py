"""BRISQUE of grayscale images with the project's verified SVM weights.

piq 0.8.0's ``piq.brisque`` computes the natural-scene features, scales them and scores them
with an SVR whose weights it fetches through torch.hub (unsafe unpickling, no hash check). This
is the same computation on piq's own feature functions, with the SVR step fed the tensors that
quality/weights.py loaded and checked; it gives piq's scores exactly (tests/test_reliability_weights.py).
"""

from __future__ import annotations

import torch

from xray_ablate.quality.weights import svm_weights

# The SVR's other constants, hard-coded in piq's _score_svr (shared/models/README.md).
_GAMMA = 0.05
_RHO = -153.591
_SCALES = 2


def brisque(x: torch.Tensor, kernel_size: int = 7, kernel_sigma: float = 7 / 6,
            data_range: float = 255.0) -> torch.Tensor:
    """One score per image of ``x`` ((N, 1, H, W), values 0..data_range); lower is better.

    As piq, degenerate images (constant, two flat halves) raise an AssertionError.
    """
    # here, not at the top: piq imports torchvision (~1.5 s), which every process importing the
    # config schema (through quality.filter) would pay
    from piq.brisque import _natural_scene_statistics, _rbf_kernel, _scale_features
    from piq.functional import imresize

    assert x.dim() == 4 and x.size(1) == 1, f"expected (N, 1, H, W) grayscale, got {tuple(x.shape)}"
    assert kernel_size % 2 == 1, f"Kernel size must be odd, got [{kernel_size}]"
    # As piq; not the identity in float32 for data_range 255, kept so that scores equal piq's.
    x = x / float(data_range) * 255
    features = []
    for _ in range(_SCALES):
        features.append(_natural_scene_statistics(x, kernel_size, kernel_sigma))
        x = imresize(x, sizes=(x.size(2) // 2, x.size(3) // 2))
    scaled = _scale_features(torch.cat(features, dim=-1))
    sv_coef, sv = svm_weights()
    kernel = _rbf_kernel(features=scaled, sv=sv.t().to(scaled), gamma=_GAMMA)
    return kernel @ sv_coef.to(scaled) - _RHO
