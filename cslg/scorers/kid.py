"""KID: Kernel Inception Distance of a set of images to a reference set (lower is better).

Definition (Bińkowski et al. 2018, "Demystifying MMD GANs", arXiv:1801.01401): the unbiased squared MMD between the
two sets' 2048-d Inception-v3 pool features with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
``subsets`` random subsets of ``subset_size`` images of each set (its standard deviation over the subsets beside it),
computed by torch-fidelity (``kid_features_to_metric``) on torch-fidelity's Inception features (see ``inception``).
Unlike FID it is unbiased for small sets, but each set needs at least ``subset_size`` images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .inception import InceptionSetScorer


class KID(InceptionSetScorer):
    """Kernel Inception Distance of ``images`` to ``reference``: mean and std over random subsets (torch-fidelity)."""

    name: ClassVar[str] = "kid"
    citation: ClassVar[str] = "Bińkowski et al. 2018 (arXiv:1801.01401); torch-fidelity (Obukhov et al.)"
    columns: ClassVar[tuple[str, ...]] = ("kid", "kid_std")

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, features: int | str = 2048, subsets: int = 100, subset_size: int = 1000,
                 seed: int = 2020):
        for option, value in (("subsets", subsets), ("subset_size", subset_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"kid: {option} must be an integer of at least 2, not {value!r}")
        self.subsets, self.subset_size, self.seed = subsets, subset_size, int(seed)
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size, features=features)

    def score_set(self, images: Sequence, reference: Sequence | str | os.PathLike) -> dict[str, float]:
        from torch_fidelity import metric_kid

        generated, real = self.set_features(images, reference, least=2)
        smallest = min(len(generated), len(real))
        if smallest < self.subset_size:
            raise ValueError(f"kid: subset_size={self.subset_size} but the smaller set holds {smallest} images; "
                             f"pass subset_size <= {smallest} (--kid-subset-size) or score more images")
        value = metric_kid.kid_features_to_metric(generated, real, kid_subsets=self.subsets,
                                                  kid_subset_size=self.subset_size, rng_seed=self.seed, verbose=False)
        return {"kid": value[metric_kid.KEY_METRIC_KID_MEAN], "kid_std": value[metric_kid.KEY_METRIC_KID_STD]}
