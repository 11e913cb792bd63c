"""Synthetic temporal-bone CT / CBCT phantoms with exact ground truth.

No real temporal-bone CT can be shipped, so the project makes its own: these phantoms are the
training data of the bundled models, the fixtures of the tests and the sample data of the Slicer
modules. Every case is drawn from a seed; every parameter is recorded in ``case.json``.

Anatomy and the published ranges it is drawn from (see :data:`.params.SPECS` for all numbers):

* A value 7.5-10.5 mm (issue 3; 8.75 +- 0.31 mm, Medan et al., PMC6449142; 8.04-10.03 mm in 112
  ears, JoVE 2026), B/A 0.70-0.82, 2.25-3 turns, cochlear height 3-5.5 mm along the modiolar axis.
* Lateral-wall spiral after Escude et al. 2006 (CDL(theta) = 2.62 A ln(1 + theta/235 deg)); the
  resulting duct lengths are checked against the lateral-wall and organ-of-Corti formulas of
  Koch et al. 2017 (CDL_LW = 3.86 A + 4.99, CDL_OC = 4.16 A - 5.05) and Alexiades et al. 2015
  (CDL_OC = 4.16 A - 4), and reported in ``case.json`` next to the exact lengths of the phantom.
* Duct tapering to the apex (ST radius about 0.32 mm near 720 deg, Hussain et al. 2023),
  split into scala tympani and scala vestibuli by the osseous spiral lamina / basilar membrane.
* Landmarks in the consensus cochlear coordinate system (Verbist et al., Otol Neurotol 2010;
  31:722-730): ``Helicotrema``, ``Modiolus base`` (origin), ``Round Window`` (0 deg reference);
  exact definitions in :mod:`.groundtruth`.
* Post-operative arrays inserted to 300-720 deg (median angular insertion depth 429 deg,
  range 373-512, PMC7187917), 12-24 contacts, lateral-wall or perimodiolar path.

Imaging: spacing 0.1-0.5 mm (anisotropic allowed), fields of view from a 30 mm crop to a
512 x 512 head slab, sub-voxel sampling near the labyrinth, Gaussian PSF, white plus correlated
noise; CT in HU, CBCT as uncalibrated grey values with cupping and compressed contrast; metal
artefacts from a polychromatic forward projection with photon starvation and filtered back-
projection (:mod:`.metal`).

These are *synthetic* images: realistic in geometry and grey values where it matters for the
algorithms, simplified elsewhere (no facial nerve, carotid or jugular bulb; idealised shapes).
"""

from __future__ import annotations

from .api import PhantomCase, build_suite, case_id_for, generate_case, iter_cases
from .groundtruth import LANDMARK_DEFINITIONS, LANDMARK_NAMES
from .params import SPECS, PhantomParams, draw_params

__all__ = ["PhantomCase", "PhantomParams", "SPECS", "LANDMARK_NAMES", "LANDMARK_DEFINITIONS", "build_suite",
           "case_id_for", "draw_params", "generate_case", "iter_cases"]
