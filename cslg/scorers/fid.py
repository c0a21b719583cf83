"""FID: Fréchet Inception Distance of a set of images to a reference set (lower is better).

Definition (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv:1706.08500): with ``mu, Sigma`` the mean and covariance of the 2048-d Inception-v3 pool features
of each set,

    FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2)),

computed by torch-fidelity (``fid_features_to_statistics`` / ``fid_statistics_to_metric``) on torch-fidelity's
Inception features (see ``inception``). FID is biased for small sets: compare methods on equal numbers of images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from .inception import InceptionSetScorer


class FID(InceptionSetScorer):
    """Fréchet Inception Distance of ``images`` to ``reference`` (torch-fidelity)."""

    name: ClassVar[str] = "fid"
    citation: ClassVar[str] = "Heusel et al. 2017 (arXiv:1706.08500); torch-fidelity (Obukhov et al.)"
    columns: ClassVar[tuple[str, ...]] = ("fid",)

    def score_set(self, images: Sequence, reference: Sequence | str | os.PathLike) -> dict[str, float]:
        from torch_fidelity import metric_fid

        generated, real = self.set_features(images, reference, least=2)
        value = metric_fid.fid_statistics_to_metric(metric_fid.fid_features_to_statistics(generated),
                                                    metric_fid.fid_features_to_statistics(real), verbose=False)
        return {"fid": value[metric_fid.KEY_METRIC_FID]}
