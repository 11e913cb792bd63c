"""The model registry: which weights exist, where to find them, and whether a file is the right one.

Why: weights are the one input a user cannot check by eye. Every model is described once in
``Resources/models.json`` (id, version, input geometry, file name, SHA256, source, licence, optional
download URL); code asks for a model by id and gets a verified file path, or an error that says
exactly where to put the file or which command downloads it.

Where a model's file is looked for, in order:

1. a file the user chose (any existing path: accepted as is, its SHA256 is reported, not checked);
2. the bundled folder ``Models/`` beside the registry file (small weights the project trains and commits);
3. the per-user cache ``$COCHLEA_TOOLKIT_CACHE/models/<id>-v<version>/`` (default
   ``~/.cache/CochleaToolkit/models/...``), where downloads and imports go;
4. each folder in ``$COCHLEA_TOOLKIT_MODEL_DIRS`` (``os.pathsep``-separated; directly or in
   ``<id>-v<version>/``): shared network folders, offline installs, test fixtures;
5. a download from the entry's URL, only when allowed (``allow_download=True``), SHA256-checked.

Every file found in 2-4 is checked against the registry's SHA256 (once per path, modification time
and size); a mismatch is an error, never a silent fallback to another copy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_output
from .downloads import Fetcher, fetch_verified, sha256_file
from .errors import InputFileError, InvalidInputError, ModelWeightsError
from .progress import Progress

log = logging.getLogger(__name__)

#: Version of the ``models.json`` layout this code reads and writes.
SCHEMA_VERSION = 1
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "Resources"
DEFAULT_REGISTRY_PATH = RESOURCES_DIR / "models.json"
CACHE_ENV = "COCHLEA_TOOLKIT_CACHE"
MODEL_DIRS_ENV = "COCHLEA_TOOLKIT_MODEL_DIRS"
#: File endings that make an unknown model name read as a path (for a clearer error).
WEIGHT_SUFFIXES = (".h5", ".keras", ".pt", ".pth", ".ckpt", ".safetensors", ".onnx", ".npz")

_REQUIRED = ("id", "version", "task", "input", "file", "sha256", "source", "license", "format")
_OPTIONAL = ("url", "citation", "description")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_cache_root() -> Path:
    """The per-user CochleaToolkit cache folder: ``$COCHLEA_TOOLKIT_CACHE`` or ``~/.cache/CochleaToolkit``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "CochleaToolkit"


def env_model_dirs() -> list[Path]:
    """The extra model folders named in ``$COCHLEA_TOOLKIT_MODEL_DIRS``."""
    raw = os.environ.get(MODEL_DIRS_ENV, "")
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: what it is, which file holds its weights and how to check that file."""

    id: str
    version: str
    task: str
    input: dict[str, Any]
    file: str
    sha256: str
    source: str
    license: str
    url: str | None = None
    format: str = ""
    citation: str = ""
    description: str = ""

    @property
    def key(self) -> str:
        """``<id>-v<version>``: the name of this model's cache folder (versions never overwrite each other)."""
        return f"{self.id}-v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in ``models.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the model entry") -> ModelEntry:
        """Validate one ``models.json`` entry; raise :class:`InputFileError` saying what is wrong and where."""
        if not isinstance(data, dict):
            raise InputFileError(f"{where} must be a JSON object, not {type(data).__name__}.")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise InputFileError(f"{where} lacks the field(s) {', '.join(missing)}.")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise InputFileError(f"{where} has unknown field(s) {', '.join(unknown)} "
                                 f"(allowed: {', '.join(_REQUIRED + _OPTIONAL)}).")
        for key in ("id", "version", "task", "file", "sha256", "source", "license", "format"):
            if not isinstance(data[key], str) or not data[key].strip():
                raise InputFileError(f"{where}: '{key}' must be a non-empty string.")
        for key in ("citation", "description"):
            if not isinstance(data.get(key, ""), str):
                raise InputFileError(f"{where}: '{key}' must be a string.")
        if not _ID.match(data["id"]):
            raise InputFileError(
                f"{where}: id '{data['id']}' may only use lower-case letters, digits, '.', '_' and '-'.")
        if not _VERSION.match(data["version"]):
            raise InputFileError(
                f"{where}: version '{data['version']}' may only use letters, digits, '.', '_', '+', '-'.")
        name = data["file"]
        if "/" in name or "\\" in name or name in (".", ".."):
            raise InputFileError(f"{where}: 'file' must be a bare file name, not the path '{name}'.")
        sha = data["sha256"].lower()
        if not _SHA256.match(sha):
            raise InputFileError(f"{where}: 'sha256' must be 64 hexadecimal digits, got '{data['sha256']}'.")
        url = data.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("https://", "http://", "file://"))):
            raise InputFileError(f"{where}: 'url' must be null or an https://, http:// or file:// address.")
        if not isinstance(data["input"], dict):
            raise InputFileError(f"{where}: 'input' must be a JSON object (patch, spacing_mm, classes, ...).")
        _check_input(data["input"], where)
        return cls(**{**data, "sha256": sha, "input": dict(data["input"])})


def _check_input(geometry: dict[str, Any], where: str) -> None:
    patch = geometry.get("patch")
    if patch is not None and not (isinstance(patch, list) and patch
                                  and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in patch)):
        raise InputFileError(f"{where}: input 'patch' must be a list of positive integers, got {patch!r}.")
    spacing = geometry.get("spacing_mm")
    values = spacing if isinstance(spacing, list) else [spacing]
    if spacing is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                       for v in values):
        raise InputFileError(f"{where}: input 'spacing_mm' must be a positive number (or list), got {spacing!r}.")
    classes = geometry.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise InputFileError(f"{where}: input 'classes' must be a list of names, got {classes!r}.")


def parse_registry(data: Any, where: str = "models.json") -> list[ModelEntry]:
    """Validate a decoded ``models.json`` document and return its entries."""
    if not isinstance(data, dict):
        raise InputFileError(f"{where} must hold a JSON object with 'schema_version' and 'models'.")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputFileError(f"{where} has no integer 'schema_version'.")
    if version > SCHEMA_VERSION:
        raise InputFileError(f"{where} uses registry schema {version}, but this CochleaToolkit reads schema "
                             f"{SCHEMA_VERSION}. Update CochleaToolkit.")
    models = data.get("models")
    if not isinstance(models, list):
        raise InputFileError(f"{where} must have a 'models' list.")
    entries, seen = [], set()
    for index, item in enumerate(models):
        label = item.get("id") if isinstance(item, dict) else None
        entry = ModelEntry.from_dict(item, f"{where}, model {index + 1}" + (f" ('{label}')" if label else ""))
        if entry.id in seen:
            raise InputFileError(f"{where} lists the model id '{entry.id}' twice; ids must be unique.")
        seen.add(entry.id)
        entries.append(entry)
    return entries


def registry_document(entries: list[ModelEntry]) -> dict[str, Any]:
    """The JSON document for ``entries`` (what :func:`parse_registry` reads back)."""
    return {"schema_version": SCHEMA_VERSION, "models": [e.to_dict() for e in entries]}


def _read_registry_file(path: Path) -> list[ModelEntry]:
    if not path.is_file():
        raise InputFileError(f"The model registry {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"The model registry {path} cannot be read: {exc}.") from exc
    except json.JSONDecodeError as exc:
        raise InputFileError(f"The model registry {path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    return parse_registry(data, str(path))


@dataclass(frozen=True)
class ResolvedModel:
    """A model file that was found (and verified where the registry knows its checksum).

    ``origin`` is one of ``"your file"``, ``"bundled"``, ``"cache"``, ``"search dir"``, ``"downloaded"``.
    ``entry`` is the registry entry, or for a user's file the entry with the same SHA256 (else None).
    """

    path: Path
    sha256: str
    origin: str
    entry: ModelEntry | None = None


@dataclass(frozen=True)
class ModelStatus:
    """Whether one registered model is available: ``state`` is ``"ok"``, ``"missing"`` or ``"mismatch"``."""

    entry: ModelEntry
    state: str
    path: Path | None = None
    origin: str = ""
    actual_sha256: str | None = None
    looked_in: tuple[Path, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``cochlea info --json``)."""
        return {"id": self.entry.id, "version": self.entry.version, "task": self.entry.task,
                "file": self.entry.file, "state": self.state,
                "path": str(self.path) if self.path else None, "origin": self.origin or None,
                "expected_sha256": self.entry.sha256, "actual_sha256": self.actual_sha256,
                "downloadable": bool(self.entry.url)}


class ModelRegistry:
    """The registered models and the folders their files are looked for in (see the module docstring)."""

    def __init__(self, entries: list[ModelEntry], path: Path | None = None, *, bundled_dir: Path | None = None,
                 cache_dir: Path | None = None, search_dirs: list[Path] | None = None) -> None:
        self._entries = tuple(entries)
        self.path = Path(path) if path is not None else None
        self._bundled_dir = Path(bundled_dir) if bundled_dir is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._search_dirs = [Path(d) for d in search_dirs] if search_dirs is not None else None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, bundled_dir: Path | None = None,
             cache_dir: Path | None = None, search_dirs: list[Path] | None = None) -> ModelRegistry:
        """Read and validate a registry file (default: the bundled ``Resources/models.json``).

        ``bundled_dir`` defaults to ``Models/`` beside the registry file; ``cache_dir`` and ``search_dirs``
        default to the environment (read at each lookup, so tests and users can change them).
        """
        p = Path(path) if path is not None else DEFAULT_REGISTRY_PATH
        return cls(_read_registry_file(p), p, bundled_dir=bundled_dir, cache_dir=cache_dir, search_dirs=search_dirs)

    # --- the entries ---------------------------------------------------------------------
    @property
    def entries(self) -> tuple[ModelEntry, ...]:
        """All registered models, in registry order."""
        return self._entries

    @property
    def ids(self) -> list[str]:
        """The registered model ids."""
        return [e.id for e in self._entries]

    def __contains__(self, model_id: object) -> bool:
        return any(e.id == model_id for e in self._entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_id: str) -> ModelEntry:
        """The entry with id ``model_id``; an unknown id raises :class:`InvalidInputError` listing the known ids."""
        for entry in self._entries:
            if entry.id == model_id:
                return entry
        known = ", ".join(self.ids) or "none"
        raise InvalidInputError(f"Unknown model '{model_id}'. Known models: {known}.")

    # --- the folders ---------------------------------------------------------------------
    @property
    def bundled_dir(self) -> Path | None:
        """Folder of weights shipped with the extension (``Models/`` beside the registry file)."""
        if self._bundled_dir is not None:
            return self._bundled_dir
        return self.path.parent / "Models" if self.path is not None else None

    @property
    def cache_dir(self) -> Path:
        """Root of the per-user model cache (each model in its own ``<id>-v<version>`` folder)."""
        return self._cache_dir if self._cache_dir is not None else default_cache_root() / "models"

    @property
    def search_dirs(self) -> list[Path]:
        """Extra folders searched after the cache (default: ``$COCHLEA_TOOLKIT_MODEL_DIRS``)."""
        return list(self._search_dirs) if self._search_dirs is not None else env_model_dirs()

    def cache_path(self, entry: ModelEntry) -> Path:
        """Where ``entry``'s file lives in the per-user cache (downloads and imports go here)."""
        return self.cache_dir / entry.key / entry.file

    def candidates(self, entry: ModelEntry) -> list[tuple[str, Path]]:
        """Every (origin, path) where ``entry``'s file is looked for, in search order."""
        found: list[tuple[str, Path]] = []
        if self.bundled_dir is not None:
            found.append(("bundled", self.bundled_dir / entry.file))
        found.append(("cache", self.cache_path(entry)))
        for folder in self.search_dirs:
            found += [("search dir", folder / entry.file), ("search dir", folder / entry.key / entry.file)]
        return found

    # --- finding files -------------------------------------------------------------------
    def _verify(self, entry: ModelEntry, origin: str, path: Path, progress: Progress) -> ResolvedModel:
        actual = sha256_file(path, progress)
        if actual != entry.sha256:
            fix = (f"delete it and run `cochlea models download {entry.id}`" if entry.url else
                   "replace it with the right file")
            raise ModelWeightsError(
                f"The weights file {path} for model '{entry.id}' (version {entry.version}) is corrupt or a "
                f"different version (SHA256 {actual}, expected {entry.sha256}); {fix}, or choose the right file."
            )
        return ResolvedModel(path, actual, origin, entry)

    def _missing_error(self, entry: ModelEntry) -> ModelWeightsError:
        looked = "; ".join(str(p) for _, p in self.candidates(entry))
        where = self.cache_path(entry).parent
        if entry.url:
            how = (f"Download it with `cochlea models download {entry.id}` (from {entry.url}), or download that "
                   f"address with a web browser and run `cochlea models import {entry.id} FILE`, or put the file "
                   f"into {where}.")
        else:
            how = (f"This model has no download address: copy {entry.file} into {where}"
                   + (f" or {self.bundled_dir}" if self.bundled_dir else "") + ", or choose the file directly.")
        return ModelWeightsError(f"The weights of model '{entry.id}' (version {entry.version}, file {entry.file}) "
                                 f"were not found. Looked in: {looked}. {how}")

    def find(self, model_id: str, *, progress: Progress | None = None) -> ResolvedModel | None:
        """The first existing, verified copy of ``model_id``'s file; None if there is none; corrupt raises."""
        entry = self.get(model_id)
        for origin, path in self.candidates(entry):
            if path.is_file():
                return self._verify(entry, origin, path, Progress.ensure(progress))
        return None

    def locate(self, id_or_path: str | os.PathLike, *, allow_download: bool = False, fetcher: Fetcher | None = None,
               progress: Progress | None = None) -> ResolvedModel:
        """Find a model by id (or accept a user's file) and return where it is and its SHA256.

        See the module docstring for the search order. Raises :class:`ModelWeightsError` when the file is
        missing or corrupt, :class:`InvalidInputError` for an unknown id, :class:`InputFileError` for a
        path that does not exist.
        """
        prog = Progress.ensure(progress)
        text = os.fspath(id_or_path)
        user_path = Path(text).expanduser()
        if isinstance(id_or_path, os.PathLike) or text not in self:
            if user_path.is_file():
                actual = sha256_file(user_path, prog)
                match = next((e for e in self._entries if e.sha256 == actual), None)
                log.info("Using the model file %s (SHA256 %s%s).", user_path, actual,
                         f", identical to registered model '{match.id}'" if match else "")
                return ResolvedModel(user_path, actual, "your file", match)
            if user_path.is_dir():
                raise InputFileError(f"{user_path} is a folder; choose the model weights file inside it.")
            if isinstance(id_or_path, os.PathLike) or os.sep in text or "/" in text or text.lower().endswith(
                    WEIGHT_SUFFIXES):
                raise InputFileError(f"The model file {user_path} does not exist. Check the path.")
        entry = self.get(text)
        found = self.find(entry.id, progress=prog)
        if found is not None:
            return found
        if not allow_download or not entry.url:
            raise self._missing_error(entry)
        return self.download(entry.id, fetcher=fetcher, progress=prog)

    def resolve(self, id_or_path: str | os.PathLike, *, allow_download: bool = False, fetcher: Fetcher | None = None,
                progress: Progress | None = None) -> Path:
        """The path of a verified weights file for a model id, or a user's file (see :meth:`locate`)."""
        return self.locate(id_or_path, allow_download=allow_download, fetcher=fetcher, progress=progress).path

    # --- adding files --------------------------------------------------------------------
    def download(self, model_id: str, *, fetcher: Fetcher | None = None, progress: Progress | None = None,
                 force: bool = False) -> ResolvedModel:
        """Download ``model_id`` into the per-user cache and verify it; a valid cached copy is kept unless ``force``.

        A corrupt cached copy is replaced. A failed or cancelled download leaves the cache as it was.
        """
        entry = self.get(model_id)
        prog = Progress.ensure(progress)
        dest = self.cache_path(entry)
        if dest.is_file() and not force:
            if sha256_file(dest) == entry.sha256:
                return ResolvedModel(dest, entry.sha256, "cache", entry)
            log.warning("The cached file %s is corrupt; downloading it again.", dest)
        if not entry.url:
            raise self._missing_error(entry)
        try:
            fetch_verified(entry.url, dest, entry.sha256, fetcher=fetcher, progress=prog)
        except ModelWeightsError as exc:
            raise ModelWeightsError(
                f"{exc} Model '{entry.id}' could not be downloaded. Offline alternative: download {entry.url} with "
                f"a web browser and run `cochlea models import {entry.id} FILE`, or copy it into {dest.parent}."
            ) from exc
        except InputFileError as exc:  # the cache folder cannot be created
            raise ModelWeightsError(f"{exc} Set {CACHE_ENV} to a folder you can write to.") from exc
        return ResolvedModel(dest, entry.sha256, "downloaded", entry)

    def import_file(self, model_id: str, source: str | os.PathLike, *, progress: Progress | None = None) -> Path:
        """Copy a user-supplied weights file into the cache after checking it is this model's file (offline install)."""
        entry = self.get(model_id)
        src = Path(source).expanduser()
        if not src.is_file():
            raise InputFileError(f"The file {src} does not exist. Check the path.")
        actual = sha256_file(src, progress)
        if actual != entry.sha256:
            raise ModelWeightsError(f"{src} is not the weights file of model '{entry.id}' version {entry.version} "
                                    f"(SHA256 {actual}, expected {entry.sha256} for {entry.file}).")
        dest = self.cache_path(entry)
        try:
            with atomic_output(dest) as tmp:
                shutil.copyfile(src, tmp)
        except OSError as exc:
            raise ModelWeightsError(f"Cannot copy {src} into the model cache {dest.parent}: {exc}. "
                                    f"Set {CACHE_ENV} to a folder you can write to.") from exc
        return dest

    # --- reporting -----------------------------------------------------------------------
    def status(self) -> list[ModelStatus]:
        """For each entry: found where and whether its checksum holds, or missing (for ``cochlea info``)."""
        result = []
        for entry in self._entries:
            places = self.candidates(entry)
            hit = next(((origin, path) for origin, path in places if path.is_file()), None)
            if hit is None:
                result.append(ModelStatus(entry, "missing", looked_in=tuple(p for _, p in places)))
                continue
            origin, path = hit
            try:
                actual = sha256_file(path)
            except OSError as exc:
                log.warning("Cannot read %s: %s", path, exc)
                actual = "unreadable"
            state = "ok" if actual == entry.sha256 else "mismatch"
            result.append(ModelStatus(entry, state, path, origin, actual, tuple(p for _, p in places)))
        return result


def register_user_model(entry: ModelEntry, registry_path: str | os.PathLike, *, replace: bool = False) -> Path:
    """Add a project-trained model to a registry file (created if absent), written atomically.

    An entry with the same id is an error unless ``replace``. Returns the registry path.
    """
    path = Path(registry_path)
    checked = ModelEntry.from_dict(entry.to_dict(), f"the new model entry '{entry.id}'")
    entries = _read_registry_file(path) if path.exists() else []
    if any(e.id == checked.id for e in entries) and not replace:
        raise InvalidInputError(f"The registry {path} already has a model '{checked.id}'; choose another id "
                                "or replace it explicitly.")
    entries = [e for e in entries if e.id != checked.id] + [checked]
    text = json.dumps(registry_document(entries), indent=2, ensure_ascii=False) + "\n"
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputFileError(f"Cannot write the model registry {path}: {exc}.") from exc
    return path

