"""Every per-case parameter of a phantom, drawn from published ranges and validated with clear errors.

Why one flat dataclass: ``case.json`` must record *every* number that made a case, so a case can be
regenerated, audited and compared with the clinical ranges; a flat record of plain floats is that
file. Drawing uses one ``numpy.random.Generator`` seeded by the case seed, always in the same order,
so the same seed gives the same case bit for bit, with or without user overrides.

Each entry of :data:`SPECS` names the range cases are drawn from (``draw``), the wider range a user
may ask for (``allowed``) and the source of the numbers. Values outside ``allowed`` raise
:class:`~CochleaCommonLib.errors.InvalidInputError` naming the parameter and the range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError

KINDS = ("ct", "cbct", "postop")
SIDES = ("left", "right")
PATHS = ("lateral", "perimodiolar")


@dataclass(frozen=True)
class Spec:
    """Drawing range, accepted range, unit and source of one scalar parameter."""

    draw: tuple[float, float]
    allowed: tuple[float, float]
    unit: str
    source: str
    integer: bool = False


#: Published (or, where marked "model choice", plausible) ranges. Sources are abbreviated; the
#: package docstring (``CochleaCommonLib.phantom``) gives the full references.
SPECS: dict[str, Spec] = {
    # --- cochlea --------------------------------------------------------------------------------
    "a_value_mm": Spec((7.5, 10.5), (6.0, 12.0), "mm",
                       "issue 3; 8.75 +- 0.31 mm (PMC6449142), 8.04-10.03 mm (JoVE 2026, 112 ears)"),
    "b_ratio": Spec((0.70, 0.82), (0.60, 0.90), "", "B/A about 0.75 (OTOPLAN A/B series; model choice)"),
    "turns": Spec((2.25, 3.0), (1.5, 3.5), "turns", "issue 3; 2.5-2.75 turns (anatomy texts)"),
    "height_mm": Spec((3.0, 5.5), (2.5, 6.5), "mm", "issue 3 (height along the modiolar axis)"),
    "spiral_decay_deg": Spec((200.0, 300.0), (100.0, 600.0), "deg",
                             "Escude 2006 L(theta)=2.62 A ln(1+theta/235): radius ~ 1/(1+theta/235)"),
    "height_gamma": Spec((0.9, 1.5), (0.5, 2.5), "", "model choice (flat basal turn, Siebrecht 2024)"),
    "lumen_radial_mm": Spec((0.9, 1.1), (0.5, 1.4), "mm", "basal duct width about 2 mm (model choice)"),
    "lumen_axial_mm": Spec((0.8, 1.0), (0.4, 1.3), "mm", "basal duct height about 1.7 mm (model choice)"),
    "lumen_apex_ratio": Spec((0.42, 0.58), (0.25, 0.8), "",
                             "ST radius 0.32 mm near 720 deg (Hussain 2023) vs ~0.9 mm at the base"),
    "apex_gap_mm": Spec((0.15, 0.35), (0.05, 1.0), "mm", "model choice (modiolus core at the apex)"),
    "partition_base": Spec((0.0, 0.2), (-0.5, 0.5), "",
                           "basilar membrane height in the basal duct (ST larger basally; model choice)"),
    "partition_apex": Spec((-0.2, 0.0), (-0.5, 0.5), "", "model choice (SV larger apically)"),
    "osl_fraction": Spec((0.40, 0.55), (0.1, 0.8), "", "osseous spiral lamina spans about half the duct"),
    "otic_capsule_mm": Spec((1.2, 2.0), (0.5, 3.0), "mm", "dense capsule 1-2 mm thick (model choice)"),
    "promontory_mm": Spec((0.8, 1.5), (0.3, 3.0), "mm", "bone between basal turn and middle ear"),
    "scc_radius_mm": Spec((2.9, 3.5), (2.0, 4.5), "mm", "SCC arc diameter about 6-7 mm"),
    "scc_lumen_mm": Spec((0.35, 0.45), (0.2, 0.7), "mm", "canal lumen about 0.8-0.9 mm wide"),
    "vestibule_scale": Spec((0.9, 1.1), (0.6, 1.5), "", "vestibule about 5 x 3.5 x 3.5 mm"),
    "iac_radius_mm": Spec((1.8, 2.6), (1.0, 4.0), "mm", "IAC diameter 4-5 mm"),
    "axis_jitter_deg": Spec((0.0, 10.0), (0.0, 25.0), "deg", "inter-subject variation of the cochlear axis"),
    # --- temporal bone ---------------------------------------------------------------------------
    "mastoid_cell_mm": Spec((2.0, 4.5), (1.0, 8.0), "mm", "mastoid air cells of a few mm"),
    "septum_mm": Spec((0.2, 0.45), (0.1, 1.0), "mm", "thin bony septa"),
    "pneumatisation": Spec((0.3, 1.0), (0.0, 1.0), "", "0 = sclerotic, 1 = fully pneumatised mastoid"),
    # --- tissue values (HU, clinical CT) ----------------------------------------------------------
    "capsule_extra_hu": Spec((150.0, 600.0), (0.0, 1500.0), "HU", "otic capsule denser than the petrous bone"),
    "hu_bone": Spec((1400.0, 1900.0), (500.0, 2500.0), "HU", "petrous / cortical bone"),
    "hu_modiolus": Spec((500.0, 900.0), (100.0, 1500.0), "HU", "spongy modiolus with nerve canals"),
    "hu_fluid": Spec((0.0, 20.0), (-50.0, 80.0), "HU", "perilymph, CSF"),
    "hu_soft": Spec((30.0, 60.0), (-50.0, 120.0), "HU", "soft tissue / brain"),
    # --- pose and placement ----------------------------------------------------------------------
    "pose_angle_deg": Spec((0.0, 30.0), (0.0, 45.0), "deg", "issue 3: head pose within +-30 deg"),
    "position_fraction": Spec((0.0, 0.6), (0.0, 1.0), "",
                              "where the cochlea sits: 0 = FOV centre, 1 = as far off-centre as fits"),
    # --- imaging ---------------------------------------------------------------------------------
    "spacing_mm": Spec((0.2, 0.4), (0.05, 1.0), "mm", "issue 3: 0.1-0.5 mm, anisotropic allowed"),
    "fov_mm": Spec((34.0, 48.0), (12.0, 260.0), "mm", "issue 3: 30 mm crop to a 512 x 512 head slab"),
    "psf_fwhm_mm": Spec((0.35, 0.65), (0.0, 2.0), "mm", "high-resolution temporal-bone CT / CBCT"),
    "noise_hu": Spec((15.0, 60.0), (0.0, 400.0), "HU", "white noise of a sharp bone kernel"),
    "noise_corr_hu": Spec((10.0, 40.0), (0.0, 400.0), "HU", "correlated (low-frequency) noise"),
    "noise_corr_mm": Spec((0.5, 1.5), (0.1, 5.0), "mm", "correlation length of the correlated noise"),
    "cbct_gain": Spec((0.35, 1.0), (0.05, 3.0), "", "CBCT grey = gain * HU + offset (not calibrated)"),
    "cbct_offset": Spec((300.0, 1200.0), (-2000.0, 3000.0), "", "CBCT grey offset"),
    "cbct_cupping": Spec((0.05, 0.2), (0.0, 0.5), "", "relative dip of the centre (cupping)"),
    "cbct_contrast": Spec((0.6, 0.9), (0.2, 1.0), "", "bone contrast kept by CBCT (scatter)"),
    # --- electrode (post-operative) ---------------------------------------------------------------
    "insertion_angle_deg": Spec((300.0, 720.0), (90.0, 1080.0), "deg",
                                "issue 3; median AID 429 deg (373-512), PMC7187917"),
    "n_contacts": Spec((12, 24), (1, 32), "contacts", "12-24 contacts (MED-EL 12, AB 16, Cochlear 22)",
                       integer=True),
    "contact_length_mm": Spec((0.3, 0.6), (0.1, 1.5), "mm", "platinum contact bands / pads"),
    "carrier_radius_mm": Spec((0.25, 0.4), (0.1, 0.8), "mm", "silicone carrier 0.5-0.8 mm wide"),
    "photons": Spec((2.0e4, 2.0e5), (1.0e2, 1.0e7), "photons/ray", "unattenuated counts per ray"),
}


@dataclass(frozen=True)
class PhantomParams:
    """All numbers of one phantom case. Lengths in mm, angles in degrees, intensities in HU."""

    kind: str = "ct"
    seed: int = 0
    side: str = "right"
    spacing_mm: tuple[float, float, float] = (0.3, 0.3, 0.3)
    fov_mm: tuple[float, float, float] = (40.0, 40.0, 40.0)
    # cochlea
    a_value_mm: float = 9.0
    b_ratio: float = 0.76
    turns: float = 2.6
    height_mm: float = 4.2
    spiral_decay_deg: float = 250.0
    height_gamma: float = 1.1
    lumen_radial_mm: float = 0.95
    lumen_axial_mm: float = 0.85
    lumen_apex_ratio: float = 0.48
    apex_gap_mm: float = 0.25
    partition_base: float = 0.1
    partition_apex: float = -0.1
    osl_fraction: float = 0.48
    otic_capsule_mm: float = 1.6
    promontory_mm: float = 1.1
    scc_radius_mm: float = 3.2
    scc_lumen_mm: float = 0.4
    vestibule_scale: float = 1.0
    iac_radius_mm: float = 2.2
    axis_jitter_deg: float = 0.0
    axis_jitter_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    # temporal bone
    mastoid_cell_mm: float = 3.0
    septum_mm: float = 0.3
    pneumatisation: float = 0.7
    capsule_extra_hu: float = 400.0
    hu_bone: float = 1350.0
    hu_modiolus: float = 700.0
    hu_fluid: float = 10.0
    hu_soft: float = 45.0
    # pose and placement
    pose_angle_deg: float = 0.0
    pose_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    position_fraction: float = 0.0
    position_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    # imaging
    psf_fwhm_mm: float = 0.5
    noise_hu: float = 30.0
    noise_corr_hu: float = 20.0
    noise_corr_mm: float = 1.0
    cbct_gain: float = 0.6
    cbct_offset: float = 700.0
    cbct_cupping: float = 0.1
    cbct_contrast: float = 0.75
    # electrode
    insertion_angle_deg: float = 450.0
    n_contacts: int = 16
    electrode_path: str = "lateral"
    contact_length_mm: float = 0.4
    carrier_radius_mm: float = 0.3
    photons: float = 5.0e4
    texture_salt: int = 1
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extras":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def theta_max_deg(self) -> float:
        """Angular length of the spiral from the round window (0 deg) to the helicotrema."""
        return 360.0 * float(self.turns)


def _unit_vector(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v) + 1e-12
    return tuple(float(c) for c in v)


def _draw(rng: np.random.Generator, name: str) -> float:
    lo, hi = SPECS[name].draw
    if SPECS[name].integer:
        return int(rng.integers(int(lo), int(hi) + 1))
    return float(rng.uniform(lo, hi))


def _as3(value: Any, name: str) -> tuple[float, float, float]:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a number or three numbers, got {value!r}.") from exc
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise InvalidInputError(f"{name} must be a number or three numbers (i, j, k), got {arr.size} values.")
    return tuple(float(v) for v in arr)


def draw_params(kind: str = "ct", seed: int = 0, **overrides: Any) -> PhantomParams:
    """Draw a case's parameters from the published ranges; ``overrides`` fix chosen ones.

    The generator always draws every parameter in the same order, so overriding one parameter
    leaves all the others as they were for this seed. If the drawn anatomy is geometrically
    impossible (turns touching each other), the free parameters are redrawn (deterministically);
    when the overrides themselves make it impossible an :class:`InvalidInputError` says why.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    try:
        seed = int(seed)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"seed must be an integer, got {seed!r}.") from exc
    if seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed}.")
    known = {f.name for f in dataclasses.fields(PhantomParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(
            f"Unknown phantom parameter(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
        )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for name in ("spacing_mm", "fov_mm"):
        if name in overrides:
            overrides[name] = _as3(overrides[name], name)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0C1EA]))
    last_error: InvalidInputError | None = None
    for _attempt in range(200):
        values: dict[str, Any] = {"kind": kind, "seed": seed}
        values["side"] = SIDES[int(rng.integers(0, 2))]
        s = _draw(rng, "spacing_mm")
        aniso = float(rng.uniform(1.0, 1.6)) if rng.uniform() < 0.3 else 1.0
        values["spacing_mm"] = (s, s, min(0.5, s * aniso) if aniso > 1.0 else s)
        f = _draw(rng, "fov_mm")
        values["fov_mm"] = (f, f, f * float(rng.uniform(0.8, 1.0)))
        for name in ("a_value_mm", "b_ratio", "turns", "height_mm", "spiral_decay_deg", "height_gamma",
                     "lumen_radial_mm", "lumen_axial_mm", "lumen_apex_ratio", "apex_gap_mm", "partition_base",
                     "partition_apex", "osl_fraction", "otic_capsule_mm", "promontory_mm", "scc_radius_mm",
                     "scc_lumen_mm", "vestibule_scale", "iac_radius_mm", "axis_jitter_deg", "mastoid_cell_mm",
                     "septum_mm", "pneumatisation", "capsule_extra_hu", "hu_bone", "hu_modiolus", "hu_fluid",
                     "hu_soft", "pose_angle_deg", "position_fraction", "psf_fwhm_mm", "noise_hu",
                     "noise_corr_hu", "noise_corr_mm", "cbct_gain", "cbct_offset", "cbct_cupping",
                     "cbct_contrast", "insertion_angle_deg", "n_contacts", "contact_length_mm",
                     "carrier_radius_mm", "photons"):
            values[name] = _draw(rng, name)
        values["axis_jitter_dir"] = _unit_vector(rng)
        values["pose_axis"] = _unit_vector(rng)
        values["position_dir"] = _unit_vector(rng)
        values["electrode_path"] = PATHS[int(rng.integers(0, 2))]
        values["texture_salt"] = int(rng.integers(1, 2**31 - 1))
        # Pose angles are drawn uniformly in rotation angle, but a third of cases stay near standard.
        if rng.uniform() < 0.33:
            values["pose_angle_deg"] *= 0.2
        if kind == "cbct":
            values["psf_fwhm_mm"] *= 0.8
        values.update(overrides)
        params = PhantomParams(**values)
        try:
            validate(params)
        except InvalidInputError as exc:
            last_error = exc
            if getattr(exc, "parameter", None) in overrides or _only_overrides_involved(exc, overrides):
                raise
            continue
        return params
    assert last_error is not None
    raise last_error


def _only_overrides_involved(exc: InvalidInputError, overrides: dict[str, Any]) -> bool:
    involved = getattr(exc, "involved", ())
    return bool(involved) and all(name in overrides for name in involved)


def _range_error(name: str, value: Any, extra: str = "") -> InvalidInputError:
    spec = SPECS[name]
    lo, hi = spec.allowed
    unit = f" {spec.unit}" if spec.unit else ""
    exc = InvalidInputError(
        f"Phantom parameter {name}={value!r} is out of range: allowed {lo:g}..{hi:g}{unit}"
        f" (cases are drawn from {spec.draw[0]:g}..{spec.draw[1]:g}{unit}; {spec.source}).{extra}"
    )
    exc.parameter = name  # type: ignore[attr-defined]
    return exc


def check_range(name: str, value: Any) -> None:
    """Raise :class:`InvalidInputError` naming ``name`` and its allowed range if ``value`` is outside."""
    lo, hi = SPECS[name].allowed
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _range_error(name, value) from None
    if not np.isfinite(v) or v < lo or v > hi:
        raise _range_error(name, value)


def validate(params: PhantomParams) -> None:
    """Check every parameter against its allowed range and the anatomy for self-consistency."""
    if params.kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, got {params.kind!r}.")
    if params.side not in SIDES:
        raise InvalidInputError(f"side must be 'left' or 'right', got {params.side!r}.")
    if params.electrode_path not in PATHS:
        raise InvalidInputError(f"electrode_path must be one of {', '.join(PATHS)}, got {params.electrode_path!r}.")
    for axis, s in zip("ijk", params.spacing_mm):
        if not (np.isfinite(s) and SPECS["spacing_mm"].allowed[0] <= s <= SPECS["spacing_mm"].allowed[1]):
            raise _range_error("spacing_mm", tuple(params.spacing_mm), f" The {axis} spacing {s:g} mm is not.")
    for axis, f in zip("ijk", params.fov_mm):
        if not (np.isfinite(f) and SPECS["fov_mm"].allowed[0] <= f <= SPECS["fov_mm"].allowed[1]):
            raise _range_error("fov_mm", tuple(params.fov_mm), f" The {axis} field of view {f:g} mm is not.")
    n_vox = np.prod([max(1, round(f / s)) for f, s in zip(params.fov_mm, params.spacing_mm)])
    if n_vox > 512 * 512 * 400:
        exc = InvalidInputError(
            f"The phantom would have {n_vox / 1e6:.0f} million voxels (fov_mm={tuple(params.fov_mm)}, "
            f"spacing_mm={tuple(params.spacing_mm)}); at most 512 x 512 x 400 are supported. "
            "Use a smaller field of view or a coarser spacing."
        )
        exc.parameter = "fov_mm"  # type: ignore[attr-defined]
        raise exc
    for name, spec in SPECS.items():
        if name in ("spacing_mm", "fov_mm"):
            continue
        check_range(name, getattr(params, name))
        if spec.integer and int(getattr(params, name)) != getattr(params, name):
            raise _range_error(name, getattr(params, name), " It must be a whole number.")
    # Anatomical consistency: evaluated on the spiral itself (imported here to avoid a cycle).
    from .cochlea import CochleaShape

    CochleaShape(params).check()
    if params.kind == "postop":
        max_angle = params.theta_max_deg - 60.0
        if params.insertion_angle_deg > max_angle:
            exc = InvalidInputError(
                f"Phantom parameter insertion_angle_deg={params.insertion_angle_deg:g} is more than this cochlea "
                f"can hold: its spiral ends at {params.theta_max_deg:g} deg ({params.turns:g} turns), so the "
                f"apical contact must stay at or below {max_angle:g} deg; allowed "
                f"{SPECS['insertion_angle_deg'].allowed[0]:g}..{max_angle:g} deg."
            )
            exc.parameter = "insertion_angle_deg"  # type: ignore[attr-defined]
            exc.involved = ("insertion_angle_deg", "turns")  # type: ignore[attr-defined]
            raise exc
