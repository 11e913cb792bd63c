"""The 3D detector's weight file: every pass's network, its cube geometry and the training record, in one ``.pt``.

Why one file for all passes: the coarse and fine passes only work as a pair (the fine cube is sized
for the coarse pass's errors), and the global pass is optional; one file with one SHA256 in the
registry keeps them together. The file holds plain tensors and JSON-able dicts and is read with
``torch.load(weights_only=True)``, so loading a weight file never runs code from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from CochleaCommonLib.atomic import atomic_output
from CochleaCommonLib.devices import require_torch
from CochleaCommonLib.errors import ModelWeightsError

from .detector_model import ARCHITECTURE, ARCHITECTURE_VERSION, build_network
from .detector_stages import StageGeometry

#: ``format`` of detector weights in the model registry.
DETECTOR_FORMAT = "cochlea-detector-pt"
TASK = "landmarks-detector"


def save_detector_weights(networks: dict[str, Any], stages: dict[str, StageGeometry], path: str | os.PathLike, *,
                          source: dict[str, Any]) -> Path:
    """Write the passes' state dicts, geometries and ``source`` (training record) atomically."""
    torch = require_torch()
    payload = {
        "architecture": ARCHITECTURE, "architecture_version": ARCHITECTURE_VERSION, "format": DETECTOR_FORMAT,
        "stages": {name: {"geometry": stages[name].to_dict(),
                          "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
                   for name, net in networks.items()},
        "source": source,
    }
    out = Path(path)
    with atomic_output(out) as tmp:
        torch.save(payload, tmp)
    return out


def load_detector_weights(path: str | os.PathLike, device: Any = "cpu"
                          ) -> tuple[dict[str, Any], dict[str, StageGeometry], dict[str, Any]]:
    """(eval-mode networks, geometries, source) by pass name; :class:`ModelWeightsError` when it is not ours."""
    torch = require_torch()
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a readable weight file"
        raise ModelWeightsError(f"{p} is not a readable 3D-detector weight file ({type(exc).__name__}: {exc}). "
                                "Choose a file written by `cochlea train detector`.") from exc
    if not isinstance(payload, dict) or payload.get("architecture") != ARCHITECTURE:
        raise ModelWeightsError(f"{p} is not a CochleaToolkit 3D-detector weight file (architecture "
                                f"{payload.get('architecture') if isinstance(payload, dict) else '?'!r}, expected "
                                f"{ARCHITECTURE!r}). For SMICNet weights choose the SMICNet method.")
    if int(payload.get("architecture_version", -1)) != ARCHITECTURE_VERSION:
        raise ModelWeightsError(f"{p} was written for detector architecture version "
                                f"{payload.get('architecture_version')}, this CochleaToolkit runs version "
                                f"{ARCHITECTURE_VERSION}; retrain it with `cochlea train detector`.")
    networks, stages = {}, {}
    for name, entry in payload["stages"].items():
        geometry = StageGeometry.from_dict(entry["geometry"])
        net = build_network(len(geometry.channels), geometry.widths)
        try:
            net.load_state_dict(entry["state_dict"])
        except RuntimeError as exc:
            raise ModelWeightsError(f"The {name} pass in {p} does not match its recorded geometry: {exc}") from exc
        net.eval().to(device)
        networks[name], stages[name] = net, geometry
    missing = {"coarse", "fine"} - set(networks)
    if missing:
        raise ModelWeightsError(f"{p} lacks the {' and '.join(sorted(missing))} pass(es) of the 3D detector.")
    return networks, stages, dict(payload.get("source") or {})
