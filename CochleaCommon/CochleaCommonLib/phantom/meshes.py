"""Surface meshes of the phantom's structures, with vertex correspondence across cases where possible.

Why parametric: scala tympani, scala vestibuli and modiolus are swept from the same analytic
cross-sections the image is drawn from, sampled at fixed *relative* positions (fraction of the
spiral's length, position around the cross-section, height fraction and azimuth from the round
window), so vertex ``n`` of one case corresponds to vertex ``n`` of every other case. Statistical
shape models and point-to-point (P2P) errors can use them directly. The rest of the labyrinth
(vestibule, canals) has no such parameterisation and is extracted with VTK's discrete flying edges
from a fine sampling of the same implicit functions (no correspondence).

Each mesh carries point arrays ``theta_deg`` (angle about the modiolar axis from the round window)
where meaningful.
"""

from __future__ import annotations

import numpy as np

from ..mesh_io import Mesh
from .anatomy import Scene

N_THETA = 240
N_ARC = 24
N_FLAT = 6


def _tube(rings: np.ndarray) -> np.ndarray:
    """Triangles joining consecutive closed rings (n_rings, n_per_ring) plus fan caps at both ends."""
    n_r, n_p = rings.shape[:2]
    tris = []
    for r in range(n_r - 1):
        a = r * n_p + np.arange(n_p)
        b = r * n_p + (np.arange(n_p) + 1) % n_p
        tris.append(np.stack([a, b, a + n_p], axis=1))
        tris.append(np.stack([b, b + n_p, a + n_p], axis=1))
    return np.concatenate(tris)


def _with_caps(vertices: np.ndarray, n_r: int, n_p: int) -> tuple[np.ndarray, np.ndarray]:
    tris = _tube(vertices.reshape(n_r, n_p, 3))
    first = vertices[:n_p].mean(axis=0)
    last = vertices[-n_p:].mean(axis=0)
    c0, c1 = len(vertices), len(vertices) + 1
    ring = np.arange(n_p)
    cap0 = np.stack([np.full(n_p, c0), (ring + 1) % n_p, ring], axis=1)
    cap1 = np.stack([np.full(n_p, c1), (n_r - 1) * n_p + ring, (n_r - 1) * n_p + (ring + 1) % n_p], axis=1)
    return np.concatenate([vertices, first[None], last[None]]), np.concatenate([tris, cap0, cap1])


def _scala_rings(scene: Scene, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cochlear-frame vertices (N_THETA * ring, 3) of scala vestibuli (upper) or tympani, and angles."""
    c = scene.ear.cochlea
    t = np.linspace(0.0, c.theta_max, N_THETA)
    ar, az, wp = c.table("ar", t), c.table("az", t), c.table("wp", t)
    rc, zc = c.table("r_c", t), c.table("z_c", t)
    a0 = np.arcsin(np.clip(wp / az, -1.0, 1.0))
    s = np.linspace(0.0, 1.0, N_ARC)
    if upper:  # arc above the partition, from the lateral to the medial end
        alpha = a0[:, None] + (np.pi - 2 * a0[:, None]) * s[None, :]
    else:  # arc below the partition, from the medial to the lateral end
        alpha = (np.pi - a0[:, None]) + (np.pi + 2 * a0[:, None]) * s[None, :]
    u = ar[:, None] * np.cos(alpha)
    w = az[:, None] * np.sin(alpha)
    f = np.linspace(0.0, 1.0, N_FLAT + 2)[1:-1]
    u_flat = u[:, -1:] + (u[:, :1] - u[:, -1:]) * f[None, :]
    w_flat = np.repeat(wp[:, None], N_FLAT, axis=1)
    u = np.concatenate([u, u_flat], axis=1)
    w = np.concatenate([w, w_flat], axis=1)
    r = rc[:, None] + u
    pts = np.stack([r * np.cos(t)[:, None], r * np.sin(t)[:, None], zc[:, None] + w], axis=-1)
    return pts.reshape(-1, 3), np.repeat(np.degrees(t), N_ARC + N_FLAT)


def _modiolus(scene: Scene) -> tuple[np.ndarray, int, int]:
    c = scene.ear.cochlea
    z = np.linspace(c.z_lo, c.z_hi + 0.5 * c.az_apex, 60)
    r = np.maximum(np.interp(z, c.mod_z, c.mod_r), 0.05)
    phi = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    pts = np.stack([r[:, None] * np.cos(phi)[None], r[:, None] * np.sin(phi)[None],
                    np.repeat(z[:, None], phi.size, axis=1)], axis=-1)
    return pts.reshape(-1, 3), z.size, phi.size


def _to_world(scene: Scene, pts_c: np.ndarray) -> np.ndarray:
    m = scene.cochlear_to_world()
    return pts_c @ m[:3, :3].T + m[:3, 3]


def _oriented(scene: Scene, tris: np.ndarray) -> np.ndarray:
    """Flip the winding when the cochlear frame is mirrored, so normals point outwards in the world."""
    return tris[:, ::-1] if np.linalg.det(scene.cochlear_to_world()[:3, :3]) < 0 else tris


def labyrinth_mesh(scene: Scene, pitch: float = 0.25) -> Mesh:
    """Vestibule, canals and the vestibular end of the scala vestibuli by discrete flying edges (no correspondence)."""
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    ear = scene.ear
    lo, hi = ear._box
    axes = [np.arange(lo[a], hi[a] + pitch, pitch, dtype=np.float32) for a in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    ev = ear._labyrinth(xx.ravel(), yy.ravel(), zz.ravel())
    mask = ev["labyrinth"].reshape(xx.shape).astype(np.uint8)
    img = vtk.vtkImageData()
    img.SetDimensions(len(axes[0]), len(axes[1]), len(axes[2]))
    img.SetSpacing(pitch, pitch, pitch)
    img.SetOrigin(float(axes[0][0]), float(axes[1][0]), float(axes[2][0]))
    img.GetPointData().SetScalars(numpy_to_vtk(mask.ravel(), deep=True))
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 1)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(fe.GetOutputPort())
    smooth.SetNumberOfIterations(15)
    smooth.SetPassBand(0.1)
    smooth.NormalizeCoordinatesOn()
    smooth.Update()
    poly = smooth.GetOutput()
    if poly.GetNumberOfPoints() == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), name="rest of labyrinth")
    pts_ear = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    polys = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    m = scene.ear_to_world()
    tris = polys[:, ::-1] if np.linalg.det(m[:3, :3]) < 0 else polys
    return Mesh(pts_ear @ m[:3, :3].T + m[:3, 3], tris, name="rest of labyrinth")


def case_meshes(scene: Scene) -> list[Mesh]:
    """Meshes of scala tympani, scala vestibuli, modiolus (with correspondence) and the rest of the labyrinth."""
    out = []
    for name, upper in (("scala tympani", False), ("scala vestibuli", True)):
        pts, theta = _scala_rings(scene, upper)
        verts, tris = _with_caps(pts, N_THETA, N_ARC + N_FLAT)
        theta = np.concatenate([theta, [0.0, float(theta[-1])]])
        tris = tris[:, ::-1]  # the cross-section contours run clockwise in (u, w): flip to face outwards
        out.append(Mesh(_to_world(scene, verts), _oriented(scene, tris), name=name, point_data={"theta_deg": theta}))
    pts, n_r, n_p = _modiolus(scene)
    verts, tris = _with_caps(pts, n_r, n_p)
    out.append(Mesh(_to_world(scene, verts), _oriented(scene, tris), name="modiolus"))
    out.append(labyrinth_mesh(scene))
    return out
