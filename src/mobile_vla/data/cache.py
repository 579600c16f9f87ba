"""On-disk cache of frozen-backbone features: each frame costs one backbone pass, ever.

The seed's trainer ran the frozen Kosmos-2 inside every training step of every epoch of every case, although
the backbone never changes: the same computation repeated hundreds of times per frame. This cache stores a
feature the first time it is computed and serves it afterwards, across epochs, runs, cases and processes.

What identifies an entry:
    namespace                   `feature_namespace`: a hash of everything that changes a feature: the
                                backbone's fingerprint (weights, config, dtype, preprocessing parameters), the
                                device type, the versions of torch / transformers / Pillow / numpy /
                                torchvision, the exact processor classes, and the source code of the functions
                                that compute it (`source_digest`); a change to any of them is a new namespace,
                                so an edit to resize or pooling code can never be served stale features, and
                                nobody has to remember to bump a version number
    feature kind                (`vision`, `image_tokens`, `clip_image`, `text`, ...)
    key                         `{episode content hash}/{frame index}` for frame features,
                                `text/{sha256 of the string}` for instruction features (one per distinct string)
A changed episode file has a new content hash, so its old entries are simply never asked for again.

Layout (one small safetensors file per entry; measured against one packed file per episode in
`benchmarks/README.md`: packed files write and read faster in bulk, but filling them lazily means rewriting
them, and two processes filling one file lose each other's frames; per-entry files need no merge at all):

    ROOT/{namespace}/backbone.json                    the backbone's fingerprint + the namespace record
    ROOT/{namespace}/{kind}/{content hash}/{frame:05d}.safetensors
    ROOT/{namespace}/{kind}/text/{sha256}.safetensors
    ROOT/{namespace}/.groups/{group id}                 empty: "every entry of this group is written"

Safety:
- A write goes to a unique temporary file in the entry's directory, is fsynced, then `os.replace`d onto the
  entry's name. A reader sees either no entry or a whole one; a killed writer leaves only a `.tmp` file, which
  readers ignore and `cache clear` removes.
- Every entry records its key, backbone, kind, byte length and CRC-32 in its header; an entry that fails any
  check (a disk error, a copy cut short, a file from elsewhere) is counted as corrupt and recomputed.
- Two processes computing the same entry both write whole files; the last rename wins and both are valid,
  so no lock is needed (the DDP ranks of one run share a cache this way).
- The entries computed by one backbone call form a *group*, committed by a marker file
  (`ROOT/{namespace}/.groups/{id}`) written after the last of them. An entry of an uncommitted group (its
  writer died half-way through storing the batch) is not served: the whole batch is computed again, in the
  same composition. A batched forward's floating-point sums depend on what else is in the batch, so a
  partial batch recomputed alone would give features a few ulps off those an uninterrupted run computed,
  and a resumed run would no longer end bit-identical to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import struct
import types
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from mobile_vla.utils.files import TMP_SUFFIX, atomic_write_bytes  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

FORMAT = "mobile_vla.feature/1"
ENTRY_SUFFIX = ".safetensors"
TEXT_GROUP = "text"
GROUPS_DIR = ".groups"  # commit markers of the entry groups (see "Safety" above)

# Feature kinds a backbone computes itself, and the `Backbone` method that computes each
# (see docs/CONTRACTS.md). Other kinds (Case 2's `clip_image`, ...) are cached through `get_or_compute`
# with the caller's encoder.
BACKBONE_ENCODERS = {
    "vision": "encode_images",
    "image_tokens": "encode_image_tokens",
    "text": "encode_texts",
}
IMAGE_KINDS = ("vision", "image_tokens")


def default_cache_root() -> Path:
    """`$MOBILE_VLA_CACHE/features` when set, else `~/.cache/mobile_vla/features`."""
    base = os.environ.get("MOBILE_VLA_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "mobile_vla") / "features"


def frame_key(content_hash: str, frame: int, mirrored: bool = False) -> str:
    """The key of one frame's features: the episode file's content hash and the frame's index in the file;
    its left/right mirror image (``mobile_vla.data.mirror``) is another entry, suffixed ``-mirror``."""
    if not content_hash or any(c not in "0123456789abcdef" for c in content_hash):
        raise ValueError(f"content hash must be lowercase hex (Episode.content_hash), got {content_hash!r}")
    if int(frame) < 0:
        raise ValueError(f"frame index must be >= 0, got {frame}")
    return f"{content_hash}/{int(frame):05d}" + ("-mirror" if mirrored else "")


def text_key(text: str) -> str:
    """The key of one instruction's features: the sha256 of the exact string."""
    return f"{TEXT_GROUP}/{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


# --- what a feature depends on -----------------------------------------------------------------------------

# Libraries whose code computes features (resize kernels, tokenisers, matmuls): a new version is a new namespace.
FEATURE_LIBRARIES = ("torch", "transformers", "Pillow", "numpy", "torchvision")
_SIMPLE = (bool, int, float, str, bytes, type(None))


def library_versions() -> dict[str, str | None]:
    """Installed versions of `FEATURE_LIBRARIES` (None when one is not installed)."""
    out: dict[str, str | None] = {}
    for name in FEATURE_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # defined in a REPL or by exec: only its name is known
        return f"<no source: {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}>"


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, lambdas, comprehensions
            names |= _code_names(const)
    return names


def _functions_of(obj: Any) -> list[types.FunctionType]:
    if inspect.isclass(obj):
        out = []
        for value in vars(obj).values():
            value = getattr(value, "__func__", value)  # staticmethod / classmethod
            value = getattr(value, "fget", value)  # property
            value = getattr(value, "func", value)  # functools.cached_property
            if isinstance(value, types.FunctionType):
                out.append(value)
        return out
    obj = getattr(obj, "__func__", obj)  # a bound method
    return [obj] if isinstance(obj, types.FunctionType) else []


def _is_constant(value: Any) -> bool:
    """A plain module constant (number, string, or a tuple / list / dict of them): its value is hashed."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, _SIMPLE) and isinstance(v, _SIMPLE) for k, v in value.items())
    return isinstance(value, (tuple, list, frozenset)) and all(isinstance(v, _SIMPLE) for v in value)


def _followed(module: str, root_modules: set[str]) -> bool:
    return module in root_modules or module.split(".")[0] == "mobile_vla"


def source_digest(*roots: Any) -> str:
    """sha256 of the source of ``roots`` (classes, functions, bound methods) and of what they use.

    Follows, from each function's code, the global names it reads: functions and classes of this package or
    of a root's own module (their source, recursively), and plain module constants (their value, e.g. a
    normalisation mean; arrays and other objects are not hashed). A class brings its methods and its base
    classes of this package along. Library code is covered by `library_versions` instead.
    """
    root_modules = {getattr(r, "__module__", None) or "" for r in roots}
    # Entries name objects by qualified name without their module, so moving code between modules (a
    # refactor) keeps the digest; what the code *is* decides.
    entries: set[str] = set()
    visited: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        obj = obj if inspect.isclass(obj) else getattr(obj, "__func__", obj)
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        kind = "class" if inspect.isclass(obj) else "def"
        entries.add(f"{kind} {getattr(obj, '__qualname__', repr(obj))}\n{_source(obj)}")
        if inspect.isclass(obj):
            stack += [b for b in obj.__mro__[1:] if _followed(b.__module__, root_modules)]
        for fn in _functions_of(obj):
            namespace = fn.__globals__
            for name in sorted(_code_names(fn.__code__)):
                if name not in namespace:
                    continue  # an attribute, a builtin or a local
                value = namespace[name]
                if _is_constant(value):
                    entries.add(f"const {name} = {value!r}")
                elif (inspect.isclass(value) or inspect.isfunction(value)) and _followed(
                    getattr(value, "__module__", "") or "", root_modules
                ):
                    stack.append(value)
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode() + b"\n\0")
    return digest.hexdigest()


def _processor_classes(encoder: Any) -> list[str]:
    """The exact classes of an encoder's pre-processors (a fast and a slow image processor differ)."""
    processor = getattr(encoder, "processor", None)
    found = [processor, getattr(processor, "image_processor", None), getattr(processor, "tokenizer", None)]
    found.append(getattr(encoder, "tokenizer", None))
    return [f"{type(p).__module__}.{type(p).__qualname__}" for p in found if p is not None]


def feature_namespace(encoder: Any, *, code: Sequence[Any] = ()) -> tuple[str, dict[str, Any]]:
    """The cache namespace of the features ``encoder`` computes, and the record it is the hash of.

    The record holds the encoder's fingerprint (or, without one, its ``fingerprint_hash``), its dtype and
    device type, `library_versions`, its processor classes and the `source_digest` of its class plus
    ``code`` (the caller's functions that turn its outputs into cached features).
    """
    fingerprint = getattr(encoder, "fingerprint", None)
    record = {
        "format": FORMAT,
        "fingerprint": dict(fingerprint) if fingerprint is not None else None,
        "fingerprint_hash": str(encoder.fingerprint_hash),
        "dtype": str(getattr(encoder, "dtype", None)),
        "device_type": torch.device(getattr(encoder, "device", None) or "cpu").type,
        # the executor (torch | onnxruntime, `backbones.vision_runtime`): same function, other float rounding
        "runtime": getattr(encoder, "vision_runtime", None),
        "versions": library_versions(),
        "processors": _processor_classes(encoder),
        "code": source_digest(type(encoder), *code),
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], record


@dataclass
class CacheStats:
    """What a cache did, for tests and reports.

    Attributes:
        requests: features asked for (a batch of 8 frames x 2 kinds is 16).
        hits: requests served without computing (`memory_hits + disk_hits`, plus repeats inside one call).
        memory_hits: served from the in-process memory copy.
        disk_hits: read from an entry file.
        misses: distinct features that had to be computed.
        corrupt: entry files that failed their checks and were recomputed.
        uncommitted: entry files of a group whose writer died before committing it (recomputed).
        backbone_calls: encoder invocations made by the cache (one per batch of misses and kind group).
        backbone_items: inputs passed to those invocations.
        writes: entry files written.
    """

    requests: int = 0
    hits: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    corrupt: int = 0
    uncommitted: int = 0
    backbone_calls: int = 0
    backbone_items: int = 0
    writes: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for name in self.to_dict():
            setattr(self, name, 0)


class CorruptEntryError(ValueError):
    """An entry file that is not a whole, matching entry (never returned; the feature is recomputed)."""


def encode_entry(
    feature: torch.Tensor, *, backbone: str, kind: str, key: str, group: str | None = None
) -> bytes:
    """The bytes of one entry file: a safetensors file whose header names the entry (and its group, when it was
    computed with others) and checksums it."""
    feature = feature.detach().to("cpu").contiguous()
    payload = feature.reshape(-1).view(torch.uint8).numpy().tobytes()  # the exact bytes safetensors stores
    metadata = {
        "format": FORMAT,
        "backbone": backbone,
        "kind": kind,
        "key": key,
        "nbytes": str(len(payload)),
        "crc32": str(zlib.crc32(payload)),
    }
    if group is not None:
        metadata["group"] = group
    return save_safetensors({"feature": feature}, metadata=metadata)


def entry_group(data: bytes) -> str | None:
    """The group recorded in an entry's header (None for an entry stored on its own or unreadable)."""
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + header_len])["__metadata__"].get("group")
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def decode_entry(data: bytes, *, backbone: str, kind: str, key: str, source: str = "entry") -> torch.Tensor:
    """The feature stored in `data`; raises `CorruptEntryError` naming `source` when anything does not match."""
    if len(data) < 8:
        raise CorruptEntryError(f"{source}: {len(data)} bytes, shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CorruptEntryError(f"{source}: header length {header_len} exceeds file size {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = header["__metadata__"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntryError(f"{source}: unreadable header ({exc})") from exc
    expected = {"format": FORMAT, "backbone": backbone, "kind": kind, "key": key}
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise CorruptEntryError(
            f"{source}: header does not match the entry (got {wrong}, expected {expected})"
        )
    payload = data[8 + header_len :]
    if str(len(payload)) != meta.get("nbytes"):
        raise CorruptEntryError(f"{source}: {len(payload)} data bytes, header says {meta.get('nbytes')}")
    if str(zlib.crc32(payload)) != meta.get("crc32"):
        raise CorruptEntryError(f"{source}: checksum mismatch")
    try:
        return load_safetensors(data)["feature"]
    except Exception as exc:  # safetensors raises its own error type
        raise CorruptEntryError(f"{source}: {exc}") from exc


# compute(missing keys, kinds) -> {kind: tensor with one row per missing key, in order}
ComputeFn = Callable[[list[str], tuple[str, ...]], Mapping[str, torch.Tensor]]


class FeatureCache:
    """Features on disk (plus a bounded copy in memory), computed lazily through the caller's encoder.

    Args:
        root: cache directory; default `default_cache_root()` (`$MOBILE_VLA_CACHE/features` or
            `~/.cache/mobile_vla/features`).
        memory_bytes: bound on the in-memory copy of entries (least recently used dropped first);
            0 turns it off. The default (1 GiB) holds ~250,000 pooled 1024-d features.
        durable: fsync each entry before renaming it into place (a power cut then cannot leave an empty
            entry behind a completed rename on file systems that reorder writes).

    `stats` counts requests, hits, misses, corrupt entries and encoder calls.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        memory_bytes: int = 1 << 30,
        durable: bool = True,
    ):
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.memory_bytes = int(memory_bytes)
        self.durable = durable
        self.stats = CacheStats()
        self._memory: OrderedDict[tuple[str, str, str], torch.Tensor] = OrderedDict()
        self._memory_used = 0
        self._described: set[str] = set()
        self._group: str | None = None  # the group being stored by `get_or_compute`
        self._committed: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------------------------
    def entry_path(self, backbone: str, kind: str, key: str) -> Path:
        _check_name("backbone hash", backbone)
        _check_name("feature kind", kind)
        return self.root / backbone / kind / f"{key}{ENTRY_SUFFIX}"

    def describe_backbone(self, backbone: str, fingerprint: Mapping[str, Any] | None) -> None:
        """Record the backbone's fingerprint beside its entries once (read by `cache info`/`cache clear`)."""
        if backbone in self._described or fingerprint is None:
            return
        path = self.root / backbone / "backbone.json"
        if not path.exists():
            text = json.dumps({"fingerprint_hash": backbone, "fingerprint": dict(fingerprint)}, default=str)
            atomic_write_bytes(path, text.encode(), durable=self.durable)
        self._described.add(backbone)

    # -- single entries ----------------------------------------------------------------------------------------
    def contains(self, backbone: str, kind: str, key: str) -> bool:
        """True when the entry is in memory or its file exists (not verified)."""
        return (backbone, kind, key) in self._memory or self.entry_path(backbone, kind, key).exists()

    def load(self, backbone: str, kind: str, key: str) -> torch.Tensor | None:
        """The cached feature, or None when absent or corrupt (counted in `stats.corrupt`)."""
        mem_key = (backbone, kind, key)
        if mem_key in self._memory:
            self._memory.move_to_end(mem_key)
            self.stats.memory_hits += 1
            return self._memory[mem_key]
        path = self.entry_path(backbone, kind, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            feature = decode_entry(data, backbone=backbone, kind=kind, key=key, source=str(path))
        except CorruptEntryError as exc:
            self.stats.corrupt += 1
            logger.warning("corrupt feature cache entry, recomputing it: %s", exc)
            return None
        group = entry_group(data)
        if group is not None and group != self._group and not self._is_committed(backbone, group):
            self.stats.uncommitted += 1  # its batch was cut short by a crash: computed again, whole
            return None
        self.stats.disk_hits += 1
        self._remember(mem_key, feature)
        return feature

    def store(self, backbone: str, kind: str, key: str, feature: torch.Tensor) -> None:
        """Write one entry atomically and keep it in memory."""
        feature = feature.detach().to("cpu").contiguous().clone()
        data = encode_entry(feature, backbone=backbone, kind=kind, key=key, group=self._group)
        atomic_write_bytes(self.entry_path(backbone, kind, key), data, durable=self.durable)
        self.stats.writes += 1
        self._remember((backbone, kind, key), feature)

    def _group_path(self, backbone: str, group: str) -> Path:
        _check_name("group", group)
        return self.root / backbone / GROUPS_DIR / group

    def _is_committed(self, backbone: str, group: str) -> bool:
        if (backbone, group) in self._committed:
            return True
        try:
            committed = self._group_path(backbone, group).exists()
        except ValueError:  # a malformed group name in a header
            return False
        if committed:
            self._committed.add((backbone, group))
        return committed

    @contextlib.contextmanager
    def _storing_group(self, backbone: str) -> Iterator[str]:
        """Entries stored inside are one group, committed (marker written) only when the block completes."""
        group = uuid.uuid4().hex
        self._group = group
        try:
            yield group
            atomic_write_bytes(self._group_path(backbone, group), b"", durable=self.durable)
            self._committed.add((backbone, group))
        finally:
            self._group = None

    def _remember(self, mem_key: tuple[str, str, str], feature: torch.Tensor) -> None:
        size = feature.numel() * feature.element_size()
        if size > self.memory_bytes:
            return
        old = self._memory.pop(mem_key, None)
        if old is not None:
            self._memory_used -= old.numel() * old.element_size()
        self._memory[mem_key] = feature
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, dropped = self._memory.popitem(last=False)
            self._memory_used -= dropped.numel() * dropped.element_size()

    def forget_memory(self) -> None:
        """Drop the in-memory copy (entries stay on disk): the next reads come from disk."""
        self._memory.clear()
        self._memory_used = 0

    # -- batches -------------------------------------------------------------------------------------------------
    def get_or_compute(
        self,
        backbone: str,
        kinds: Sequence[str],
        keys: Sequence[str],
        compute: ComputeFn,
        *,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{kind: (len(keys), ...)}` for every kind, computing only what no entry holds.

        `compute(missing_keys, kinds)` must return, for each of `kinds`, one row per missing key. Keys missing
        the same set of kinds go to one call, so a frame missing both `vision` and `image_tokens` can be
        computed in one backbone pass; a key repeated in `keys` is computed once.
        """
        kinds = tuple(dict.fromkeys(kinds))
        if not keys:
            raise ValueError("get_or_compute needs at least one key")
        found: dict[tuple[str, str], torch.Tensor] = {}
        missing_by_set: dict[tuple[str, ...], list[str]] = {}
        for key in dict.fromkeys(keys):
            absent = []
            for kind in kinds:
                feature = self.load(backbone, kind, key)
                if feature is None:
                    absent.append(kind)
                else:
                    found[(kind, key)] = feature
            if absent:
                missing_by_set.setdefault(tuple(absent), []).append(key)
        for missing_kinds, missing_keys in missing_by_set.items():
            # One call's entries are one group (also what `compute` stores itself, e.g. the other image kind).
            with self._storing_group(backbone):
                computed = compute(list(missing_keys), missing_kinds)
                self.stats.backbone_calls += 1
                self.stats.backbone_items += len(missing_keys)
                for kind in missing_kinds:
                    if kind not in computed:
                        raise KeyError(
                            f"compute() returned {sorted(computed)} but kind {kind!r} was asked for"
                        )
                    rows = computed[kind]
                    if rows.shape[0] != len(missing_keys):
                        raise ValueError(
                            f"compute() returned {rows.shape[0]} rows of {kind!r} for {len(missing_keys)} keys"
                        )
                    for key, row in zip(missing_keys, rows, strict=True):
                        self.store(backbone, kind, key, row)
                        found[(kind, key)] = self._memory.get((backbone, kind, key), row.detach().cpu())
                        self.stats.misses += 1
        self.stats.requests += len(keys) * len(kinds)
        self.stats.hits += len(keys) * len(kinds) - sum(len(k) * len(s) for s, k in missing_by_set.items())
        return {kind: torch.stack([found[(kind, key)] for key in keys]).to(device or "cpu") for kind in kinds}

    # -- maintenance ---------------------------------------------------------------------------------------------
    def backbones(self) -> list[dict[str, Any]]:
        """One record per backbone namespace under `root`: hash, profile, fingerprint (when recorded)."""
        records = []
        if not self.root.is_dir():
            return records
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            record: dict[str, Any] = {
                "fingerprint_hash": directory.name,  # the namespace (see `feature_namespace`)
                "backbone_fingerprint_hash": None,
                "profile": None,
                "fingerprint": None,
            }
            meta = directory / "backbone.json"
            if meta.exists():
                try:
                    fingerprint = json.loads(meta.read_text())["fingerprint"]
                    record["fingerprint"] = fingerprint
                    record["profile"] = fingerprint.get("profile") or fingerprint.get("name")
                    record["backbone_fingerprint_hash"] = fingerprint.get("backbone_fingerprint_hash")
                except (ValueError, KeyError, AttributeError):
                    logger.warning("%s: unreadable backbone record", meta)
            records.append(record)
        return records

    def info(self) -> dict[str, Any]:
        """Entries, bytes and episodes per backbone and kind, plus leftover temporary files."""
        out: dict[str, Any] = {
            "root": str(self.root),
            "backbones": [],
            "entries": 0,
            "bytes": 0,
            "tmp_files": 0,
        }
        for record in self.backbones():
            kinds = {}
            for kind_dir in sorted(
                p
                for p in (self.root / record["fingerprint_hash"]).iterdir()
                if p.is_dir() and not p.name.startswith(".")  # not the group markers
            ):
                entries = size = tmp = 0
                groups = set()
                for path in kind_dir.rglob("*"):
                    if not path.is_file():
                        continue
                    if path.name.endswith(TMP_SUFFIX):
                        tmp += 1
                    elif path.name.endswith(ENTRY_SUFFIX):
                        entries += 1
                        size += path.stat().st_size
                        groups.add(path.parent.name)
                kinds[kind_dir.name] = {
                    "entries": entries,
                    "bytes": size,
                    "episodes": len(groups - {TEXT_GROUP}),
                    "texts": entries if kind_dir.name == "text" else 0,
                }
                out["entries"] += entries
                out["bytes"] += size
                out["tmp_files"] += tmp
            out["backbones"].append({**record, "kinds": kinds})
        return out

    def clear(self, backbone: str | None = None) -> list[str]:
        """Delete every entry (or those of one backbone: by profile name, namespace prefix or backbone
        fingerprint-hash prefix).

        Returns the fingerprint hashes removed. Safe to run while nothing uses the cache; a concurrent writer
        simply recreates its entry.
        """
        removed = []
        for record in self.backbones():
            digest = record["fingerprint_hash"]
            of = record["backbone_fingerprint_hash"] or ""
            if (
                backbone is None
                or record["profile"] == backbone
                or digest.startswith(backbone)
                or (of and of.startswith(backbone))
            ):
                shutil.rmtree(self.root / digest, ignore_errors=True)
                removed.append(digest)
                self._described.discard(digest)
        if backbone is None:
            self.forget_memory()
        else:
            for mem_key in [k for k in self._memory if k[0] in removed]:
                dropped = self._memory.pop(mem_key)
                self._memory_used -= dropped.numel() * dropped.element_size()
        return removed


def _check_name(what: str, value: str) -> None:
    # Names become path components: refuse anything that could escape the cache directory.
    if not value or "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        raise ValueError(f"{what} must be a plain non-empty name, got {value!r}")


class FrameRef:
    """A frame of an episode file, not yet read: what frame features are keyed by.

    Datasets built with `lazy_images=True` put these in their items instead of decoded images, so a cached
    feature never costs a frame read. Picklable (it holds the `Episode`, which re-opens its file on demand),
    so DataLoader workers can pass it on.

    Args:
        episode: an `Episode` (anything with `content_hash` and `image(i) -> uint8 [H, W, 3]`).
        frame: the frame's index in the file.
        mirrored: the frame's left/right mirror image (`mobile_vla.data.mirror`): `load_image` flips it and
            `key` is its own (`-mirror`), so the flipped view's features are cached apart from the frame's.
    """

    __slots__ = ("episode", "frame", "mirrored")

    def __init__(self, episode: Any, frame: int, mirrored: bool = False):
        self.episode = episode
        self.frame = int(frame)
        self.mirrored = bool(mirrored)

    @property
    def content_hash(self) -> str:
        return str(self.episode.content_hash)

    @property
    def key(self) -> str:
        return frame_key(self.content_hash, self.frame, self.mirrored)

    def load_image(self) -> Image.Image:
        """The frame as an RGB PIL image (reads it from disk), flipped left-right when `mirrored`."""
        image = self.episode.image(self.frame)
        if self.mirrored:
            return Image.fromarray(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, ::-1]))
        return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))

    def __getstate__(self) -> tuple[Any, int, bool]:
        return self.episode, self.frame, self.mirrored

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.episode, self.frame = state[0], state[1]
        self.mirrored = bool(state[2]) if len(state) > 2 else False

    def __repr__(self) -> str:
        name = getattr(self.episode, "episode_id", "?")
        return f"FrameRef({name!r}, frame={self.frame}" + (", mirrored=True)" if self.mirrored else ")")


class CachedBackbone:
    """A frozen backbone whose features go through a `FeatureCache`.

    `image_features` / `text_features` return exactly what `backbone.encode_*` would, computing each frame's
    and each distinct string's features at most once per cache. A backbone with `encode_images_with_tokens`
    computes pooled features and tokens in one pass, so both are computed (and, with `keep_tokens`, both
    stored) whenever either is missing: a frame then costs one pass, whichever cases ask for it later.

    Args:
        backbone: a `mobile_vla.backbones.Backbone` (anything with `fingerprint_hash` and the `encode_*`
            methods of docs/CONTRACTS.md).
        cache: the cache; default a `FeatureCache` at the default root.
        keep_tokens: store the image tokens a pass computes even when only pooled features were asked for
            (a later resampler case then costs no pass). Disk per frame: 256 x 1024 float32 = 1 MiB for
            Kosmos-2, 49 x 1280 = 245 KiB for `lite`.
    """

    def __init__(self, backbone: Any, cache: FeatureCache | None = None, *, keep_tokens: bool = True):
        self.backbone = backbone
        self.cache = cache if cache is not None else FeatureCache()
        self.keep_tokens = keep_tokens
        self.fingerprint_hash = str(backbone.fingerprint_hash)
        # Entries live under a namespace that also covers library versions, device and the feature code.
        self.namespace, self.namespace_record = feature_namespace(
            backbone, code=(CachedBackbone._encode_images, CachedBackbone.text_features)
        )
        fingerprint = getattr(backbone, "fingerprint", None) or {}
        described = {**fingerprint, "backbone_fingerprint_hash": self.fingerprint_hash}
        self.cache.describe_backbone(self.namespace, {**described, "feature_cache": self.namespace_record})

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.backbone, "device", "cpu"))

    def _encode_images(self, images: list[Any], kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
        both = getattr(self.backbone, "encode_images_with_tokens", None)
        if set(kinds) == set(IMAGE_KINDS) and both is not None:
            vision, tokens = both(images)
            return {"vision": vision, "image_tokens": tokens}
        out = {}
        for kind in kinds:
            if kind not in IMAGE_KINDS:
                raise KeyError(f"unknown image feature kind {kind!r}; the backbone computes {IMAGE_KINDS}")
            out[kind] = getattr(self.backbone, BACKBONE_ENCODERS[kind])(images)
        return out

    def image_features(
        self,
        refs: Sequence[FrameRef],
        kinds: Sequence[str] = ("vision",),
        images: Sequence[Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{kind: (len(refs), ...)}` on the backbone's device.

        Images come from `images[i]` when given (already decoded), else from `refs[i].load_image()`, and
        only for frames the cache does not hold.
        """
        if images is not None and len(images) != len(refs):
            raise ValueError(f"got {len(images)} images for {len(refs)} frame references")
        by_key: dict[str, int] = {}
        for i, ref in enumerate(refs):
            by_key.setdefault(ref.key, i)

        joint = self.keep_tokens and hasattr(self.backbone, "encode_images_with_tokens")

        def compute(missing: list[str], kinds_: tuple[str, ...]) -> dict[str, torch.Tensor]:
            inputs = []
            for key in missing:
                i = by_key[key]
                inputs.append(images[i] if images is not None else refs[i].load_image())
            if not joint or len(kinds_) != 1:
                return self._encode_images(inputs, kinds_)
            out = self._encode_images(inputs, IMAGE_KINDS)  # the same single pass: keep the other kind too
            (other,) = set(IMAGE_KINDS) - set(kinds_)
            for key, feature in zip(missing, out[other], strict=True):
                if not self.cache.contains(self.namespace, other, key):
                    self.cache.store(self.namespace, other, key, feature)
            return {kinds_[0]: out[kinds_[0]]}

        return self.cache.get_or_compute(
            self.namespace, kinds, [r.key for r in refs], compute, device=self.device
        )

    def text_features(self, texts: Sequence[str], kind: str = "text") -> torch.Tensor:
        """`(len(texts), Dt)`: each distinct string encoded alone (so its feature never depends on the batch)."""
        by_key = {text_key(t): t for t in texts}

        def compute(missing: list[str], kinds_: tuple[str, ...]) -> dict[str, torch.Tensor]:
            # One call per string: padding a string with others' tokens must not change its feature.
            rows = [self.backbone.encode_texts([by_key[k]])[0] for k in missing]
            return {kind: torch.stack(rows)}

        return self.cache.get_or_compute(
            self.namespace, (kind,), [text_key(t) for t in texts], compute, device=self.device
        )[kind]


def build_cache(
    backbone: Any,
    episodes: Iterable[Any],
    *,
    cache: FeatureCache | None = None,
    kinds: Sequence[str] = ("vision",),
    batch_size: int = 16,
    progress: bool = True,
    mirrored: bool = False,
) -> CacheStats:
    """Precompute `kinds` for every frame of `episodes` and `text` for every distinct instruction; with
    `mirrored`, each frame's left/right mirror image too (what `TrainConfig.mirror` trains on).

    Frames already cached are skipped without reading their images; the rest go through the backbone in
    batches of `batch_size`. Returns the cache's statistics for this build.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unknown = [k for k in kinds if k not in IMAGE_KINDS]
    if unknown:
        raise ValueError(f"build_cache computes {IMAGE_KINDS}, got unknown kinds {unknown}")
    cached = CachedBackbone(backbone, cache, keep_tokens="image_tokens" in kinds)
    before = CacheStats(**cached.cache.stats.to_dict())
    episodes = list(episodes)
    views = (False, True) if mirrored else (False,)
    refs = [FrameRef(e, f, m) for e in episodes for f in range(e.num_frames) for m in views]
    todo = [r for r in refs if not all(cached.cache.contains(cached.namespace, k, r.key) for k in kinds)]

    bar = tqdm(
        total=len(refs),
        initial=len(refs) - len(todo),
        desc="caching features",
        unit="frame",
        disable=not progress,
    )
    with bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            cached.image_features(chunk, kinds)
            bar.update(len(chunk))
    texts = {e.instruction for e in episodes}
    if mirrored:
        from mobile_vla.data.mirror import mirror_instruction

        texts |= {mirror_instruction(t) for t in texts}
    texts = sorted(texts)
    if texts:
        cached.text_features(texts)
    after = cached.cache.stats.to_dict()
    return CacheStats(**{k: after[k] - v for k, v in before.to_dict().items()})
