"""A PNG of three orthogonal sections through the modiolus with the ground truth drawn on them.

Why these planes: the two mid-modiolar sections (containing the modiolar axis; one through the
round window, one perpendicular to it) are where a radiologist checks the turns, and the third
plane, perpendicular to the axis through the basal turn, is the "cochlear view" used to measure the
A value. Sections are resampled obliquely from the volume (trilinear), labels by nearest neighbour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from ..image import Image

LABEL_COLOURS = {1: "#ff4040", 2: "#40c040", 3: "#4080ff", 4: "#ffd040"}
LANDMARK_COLOURS = {"Helicotrema": "#ff00ff", "Modiolus base": "#00ffff", "Round Window": "#ff9900"}


def _sample(image: Image, pts_ras: np.ndarray, order: int) -> np.ndarray:
    ijk = pts_ras @ image.ras_to_ijk[:3, :3].T + image.ras_to_ijk[:3, 3]
    arr = image.array
    nk, nj, ni = arr.shape
    if order == 0:
        idx = np.floor(ijk + 0.5).astype(int)
        ok = np.all((idx >= 0) & (idx < [ni, nj, nk]), axis=1)
        out = np.zeros(len(pts_ras), dtype=arr.dtype)
        out[ok] = arr[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        return out
    f = np.floor(ijk).astype(int)
    w = ijk - f
    out = np.zeros(len(pts_ras), dtype=np.float64)
    inside = np.all((f >= 0) & (f < np.array([ni, nj, nk]) - 1), axis=1)
    fi, wi = f[inside], w[inside]
    acc = np.zeros(inside.sum())
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wt = (wi[:, 0] if dx else 1 - wi[:, 0]) * (wi[:, 1] if dy else 1 - wi[:, 1]) * \
                     (wi[:, 2] if dz else 1 - wi[:, 2])
                acc += wt * arr[fi[:, 2] + dz, fi[:, 1] + dy, fi[:, 0] + dx]
    out[inside] = acc
    out[~inside] = np.nan
    return out


def section_planes(cochlear_to_world: np.ndarray, basal_height_mm: float = 0.4) -> list[tuple[str, np.ndarray,
                                                                                              np.ndarray, np.ndarray]]:
    """(title, centre, u axis, v axis) in world RAS for the three sections."""
    m = np.asarray(cochlear_to_world)
    o = m[:3, 3]
    ex, ey, ez = (m[:3, i] / np.linalg.norm(m[:3, i]) for i in range(3))
    return [
        ("mid-modiolar, through the round window", o + ez * 1.5, ex, ez),
        ("mid-modiolar, perpendicular", o + ez * 1.5, ey, ez),
        ("cochlear view (perpendicular to the axis)", o + ez * basal_height_mm, ex, ey),
    ]


def render_preview(image: Image, labels: Image | None, cochlear_to_world: np.ndarray, path: str | os.PathLike,
                   landmarks: dict[str, np.ndarray] | None = None, contacts: np.ndarray | None = None,
                   title: str = "", half_width_mm: float = 8.0, pixel_mm: float = 0.05,
                   window: tuple[float, float] | None = None) -> Path:
    """Write the three-section preview PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = int(round(2 * half_width_mm / pixel_mm)) + 1
    s = np.linspace(-half_width_mm, half_width_mm, n)
    uu, vv = np.meshgrid(s, s[::-1])
    if window is None:
        lo, hi = np.percentile(image.array, [1.0, 99.8])
        window = (float(lo), float(hi))
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.9), dpi=110)
    for ax, (name, centre, u, v) in zip(axes, section_planes(cochlear_to_world)):
        pts = centre + uu.reshape(-1, 1) * u + vv.reshape(-1, 1) * v
        img = _sample(image, pts, 1).reshape(n, n)
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], extent=(-half_width_mm, half_width_mm,
                                                                             -half_width_mm, half_width_mm))
        if labels is not None:
            lab = _sample(labels, pts, 0).reshape(n, n)
            for value, colour in LABEL_COLOURS.items():
                mask = (lab == value).astype(float)
                if mask.any() and mask.min() < 1:
                    ax.contour(s, s[::-1], mask, levels=[0.5], colors=[colour], linewidths=0.8)
        normal = np.cross(u, v)
        for lname, pos in (landmarks or {}).items():
            rel = np.asarray(pos) - centre
            if abs(rel @ normal) <= 1.5:
                ax.plot(rel @ u, rel @ v, "+", color=LANDMARK_COLOURS.get(lname, "w"), ms=10, mew=2)
        if contacts is not None and len(contacts):
            rel = np.asarray(contacts) - centre
            near = np.abs(rel @ normal) <= 1.0
            ax.plot(rel[near] @ u, rel[near] @ v, "o", mfc="none", mec="#ffff00", ms=5, mew=1)
        ax.set_title(f"{name} (mm)", fontsize=9)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=c, lw=2) for c in LABEL_COLOURS.values()]
    names = ["scala tympani", "scala vestibuli", "modiolus", "rest of labyrinth"]
    handles += [plt.Line2D([], [], color=c, marker="+", ls="", mew=2, ms=9) for c in LANDMARK_COLOURS.values()]
    names += list(LANDMARK_COLOURS)
    if contacts is not None and len(contacts):
        handles.append(plt.Line2D([], [], color="#ffff00", marker="o", mfc="none", ls="", ms=6))
        names.append("electrode contacts")
    fig.legend(handles, names, loc="lower center", ncol=8, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out = Path(path)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
