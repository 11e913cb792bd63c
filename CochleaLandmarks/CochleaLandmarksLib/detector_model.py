"""The 3D landmark network: a small U-Net that predicts, on a stride-2 grid, a heatmap and a displacement per landmark.

Why this shape (seed-methods.md sections 2 and 5, combined):

* From SkullEngine's vdnet: a fully convolutional encoder-decoder over a 3D crop at fixed spacing,
  so one forward pass scores every position of the crop for every landmark, and a focal loss on the
  heatmap, so the few positive voxels are not drowned by the background.
* From Noothout's global-to-local network: a per-cell displacement to each landmark, so the answer
  is sub-voxel (cell centre + displacement, averaged over the cells around the peak) and the output
  grid can be coarser than the input (stride 2: one eighth of the cells, four times less decoder work).
* Not taken: vdnet's GroupNorm on logits and its full-resolution decoder (too slow for a laptop CPU),
  Noothout's 16-million-parameter ResNet-34 and its unthresholded average over all cells (section 5.3:
  far, weak cells pull the answer).

Layout (input ``(N, 1, D, H, W)``, D, H, W multiples of 8; widths ``(c1, c2, c3)``)::

    e1 = conv3 s2 (1->c1), conv3 (c1->c1)                          stride 2
    e2 = conv3 s2 (c1->c2), conv3 (c2->c2)                         stride 4
    e3 = conv3 s2 (c2->c3), conv3 (c3->c3), conv3 (c3->c3)         stride 8
    d2 = conv3 (up(e3) ++ e2 -> c2)                                stride 4
    d1 = conv3 (up(d2) ++ e1 -> c1), conv3 (c1->c1)                stride 2
    heat = conv1 (c1 -> L)            logits; sigmoid = heatmap
    disp = conv1 (c1 -> 3L)           displacement (cube voxels / DISPLACEMENT_SCALE) to each landmark, i, j, k

Every conv3 is followed by BatchNorm and ReLU. torch is imported lazily (``build_network``), so the
module imports without PyTorch.
"""

from __future__ import annotations

import functools
from typing import Any

from CochleaCommonLib.devices import require_torch

ARCHITECTURE = "cochlea-heat-displacement-unet"
ARCHITECTURE_VERSION = 1
#: Output cells are this many cube voxels apart; cell c is centred on cube voxel STRIDE * c.
OUTPUT_STRIDE = 2
#: The input edge must be a multiple of this (three stride-2 levels).
SIZE_MULTIPLE = 8
#: Displacements are predicted in cube voxels divided by this, so targets stay around +-1.
DISPLACEMENT_SCALE = 8.0


@functools.lru_cache(maxsize=1)
def _network_class() -> type:
    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    def conv(cin: int, cout: int, stride: int = 1) -> Any:
        return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

    class HeatDisplacementNet(nn.Module):
        """Heatmap logits ``(N, L, D/2, H/2, W/2)`` and displacements ``(N, L, 3, D/2, H/2, W/2)``."""

        def __init__(self, n_landmarks: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
            super().__init__()
            c1, c2, c3 = (int(w) for w in widths)
            self.n_landmarks = int(n_landmarks)
            self.widths = (c1, c2, c3)
            self.e1 = nn.Sequential(conv(1, c1, 2), conv(c1, c1))
            self.e2 = nn.Sequential(conv(c1, c2, 2), conv(c2, c2))
            self.e3 = nn.Sequential(conv(c2, c3, 2), conv(c3, c3), conv(c3, c3))
            self.d2 = conv(c3 + c2, c2)
            self.d1 = nn.Sequential(conv(c2 + c1, c1), conv(c1, c1))
            self.heat = nn.Conv3d(c1, self.n_landmarks, 1)
            self.disp = nn.Conv3d(c1, 3 * self.n_landmarks, 1)
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(self.disp.weight)
            nn.init.zeros_(self.disp.bias)
            nn.init.constant_(self.heat.bias, -4.0)  # start near "nothing here": stable focal loss

        def forward(self, x: Any) -> tuple[Any, Any]:
            e1 = self.e1(x)
            e2 = self.e2(e1)
            e3 = self.e3(e2)
            d2 = self.d2(torch.cat([F.interpolate(e3, size=e2.shape[2:], mode="nearest"), e2], dim=1))
            d1 = self.d1(torch.cat([F.interpolate(d2, size=e1.shape[2:], mode="nearest"), e1], dim=1))
            disp = self.disp(d1)
            n, _, d, h, w = disp.shape
            return self.heat(d1), disp.view(n, self.n_landmarks, 3, d, h, w)

    return HeatDisplacementNet


def build_network(n_landmarks: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> Any:
    """A freshly initialised :class:`HeatDisplacementNet` (needs PyTorch)."""
    return _network_class()(n_landmarks, widths)


def parameter_count(network: Any) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in network.parameters() if p.requires_grad))
