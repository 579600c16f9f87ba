"""Kill a real `mobile-vla train` process with SIGKILL at a chosen instant, from inside it.

Run as a script, this is `mobile-vla train` (``mobile_vla.cli.main``) with the test's ``FakeBackbone``
registered as backbone profile ``fake``, and with every instant that matters to what a crash leaves on disk
counted as an *event*:

    step        entering ``optimizer.step`` (a training step in progress)
    batch       a batch's features reaching the head (``train`` or ``val``: mid-epoch, mid-validation)
    save_file   a safetensors file written by the checkpoint code (resume state, best/last head)
    write       a file's content written: ``Path.write_text`` or ``utils.files.atomic_write_bytes``
                (config.json, state.json, summary.json, metrics.jsonl, CURRENT, ...)
    append      a ``metrics.jsonl`` row appended
    fsync       a file flushed to disk by the checkpoint code
    replace     an ``os.replace`` (every atomic rename: checkpoints, resume state, manifest, cache entries)

``MOBILE_VLA_FAULT=LABEL:N[:TEXT]`` (LABEL one of the above, or ``any``) makes the process SIGKILL itself at
the N-th event with that label (counting only events whose detail contains TEXT, when given; paths in
details read ``RUN/...`` for the run directory and ``CACHE/...`` for ``$MOBILE_VLA_CACHE``): writes are cut half-way (the file holds the first half of its bytes), renames
and steps are killed right after / right before they happen. ``MOBILE_VLA_FAULT_LOG=FILE`` appends one line
per event (``N LABEL DETAIL``), so a test can enumerate the instants of an uninterrupted run and pick some.

Under torchrun, ``MOBILE_VLA_FAULT_RANK=R`` arms the fault in rank R only, and only rank 0 writes the log.

A kill here is the real thing (``os.kill(os.getpid(), SIGKILL)``): no handler, no ``finally``, no flush.
"""

from __future__ import annotations

import builtins
import os
import pathlib
import signal
import sys

LABELS = ("step", "batch", "save_file", "write", "append", "fsync", "replace")


class _Faults:
    def __init__(self, spec: str, log_path: str | None) -> None:
        self.label, self.nth, self.text = None, 0, ""
        self.matched = 0
        if spec:
            label, nth, self.text = (spec.split(":", 2) + [""])[:3]
            if label not in LABELS + ("any",):
                raise SystemExit(f"MOBILE_VLA_FAULT: unknown label {label!r}; use one of {LABELS + ('any',)}")
            self.label, self.nth = label, int(nth)
        self.counts = dict.fromkeys(LABELS + ("any",), 0)
        self.prefixes: list[tuple[str, str]] = []  # paths in details are shown relative to RUN/ and CACHE/
        self.log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 (lives until exit)

    def hit(self, label: str, detail: str = "") -> bool:
        """Count one event; True when this is the one to die at."""
        for prefix, name in self.prefixes:
            detail = detail.replace(prefix, name)
        self.counts[label] += 1
        self.counts["any"] += 1
        if self.log is not None:
            self.log.write(f"{self.counts['any']} {label} {detail}\n")
        if self.label not in (label, "any") or self.text not in detail:
            return False
        self.matched += 1
        return self.matched == self.nth

    @staticmethod
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def _install(faults: _Faults) -> None:
    import torch

    from mobile_vla.training import checkpoints, trainer

    # step: the optimizer step of a training batch
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        if faults.hit("step"):
            faults.die()
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = step

    # batch: features about to reach the head, in training (grad on) or validation (no_grad); the helper is
    # `policies.predict.to_device` (imported by the trainer), `trainer._to_device` in older code
    modules = [trainer]
    try:
        from mobile_vla.policies import predict

        modules.append(predict)
    except ImportError:
        pass
    for module in modules:
        for name in ("to_device", "_to_device"):
            if hasattr(module, name):
                setattr(module, name, _counting_to_device(getattr(module, name), faults, torch))

    # save_file: the checkpoint module's safetensors writes, cut half-way
    original_save_file = checkpoints.save_file

    def save_file(tensors, filename, metadata=None):
        original_save_file(tensors, filename, metadata=metadata)
        if faults.hit("save_file", str(filename)):
            _truncate_half(filename)
            faults.die()

    checkpoints.save_file = save_file

    # fsync: the checkpoint module's flushes (killed right after one; older code had none)
    original_fsync = getattr(checkpoints, "_fsync", None)

    def fsync(path):
        original_fsync(path)
        if faults.hit("fsync", str(path)):
            faults.die()

    if original_fsync is not None:
        checkpoints._fsync = fsync

    # write: every Path.write_text, cut half-way
    original_write_text = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if faults.hit("write", str(self)):
            original_write_text(self, data[: len(data) // 2], *args, **kwargs)
            faults.die()
        return original_write_text(self, data, *args, **kwargs)

    pathlib.Path.write_text = write_text

    # write: every atomic write of utils.files (its temporary file holds half the bytes when the kill comes;
    # callers that imported the function by name, e.g. the feature cache, show up as `replace` events)
    try:
        from mobile_vla.utils import files
    except ImportError:  # older code had no utils layer
        files = None
    if files is not None:
        original_atomic = files.atomic_write_bytes

        def atomic_write_bytes(path, data, *args, **kwargs):
            if faults.hit("write", str(path)):
                path = pathlib.Path(path)
                with builtins.open(path.with_name(f".{path.name}.{os.getpid()}.cut.tmp"), "wb") as f:
                    f.write(data[: len(data) // 2])
                faults.die()
            return original_atomic(path, data, *args, **kwargs)

        files.atomic_write_bytes = atomic_write_bytes

    # append: the metrics.jsonl rows (`open(..., "a")` of the module that appends them), cut half-way
    def appending_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
        if "a" not in mode:
            return handle
        return _CutAppend(handle, faults, str(file))

    try:
        from mobile_vla.runs import directory

        directory.open = appending_open
    except ImportError:  # older code appended in the trainer
        trainer.open = appending_open

    # MOBILE_VLA_DRAW_LOG=FILE: each rank appends the (episode, frame) items of every training batch to
    # FILE.rank<RANK>, one JSON line per step: [epoch, step, [[episode_id, frame_index], ...]]
    draw_log = os.environ.get("MOBILE_VLA_DRAW_LOG")
    if draw_log:
        _log_draws(trainer, f"{draw_log}.rank{os.environ.get('RANK', '0')}")

    # replace: every rename (killed right after it happened)
    original_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        original_replace(src, dst, *args, **kwargs)
        if faults.hit("replace", f"{src} -> {dst}"):
            faults.die()

    os.replace = replace


def _counting_to_device(original, faults: _Faults, torch):
    def to_device(features, device):
        if faults.hit("batch", "train" if torch.is_grad_enabled() else "val"):
            faults.die()
        return original(features, device)

    return to_device


def _log_draws(trainer, path: str) -> None:
    import json

    original = trainer.make_loader

    def make_loader(dataset, batch_size, *, shuffle, seed, epoch, **kwargs):
        loader = original(dataset, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, **kwargs)
        if not shuffle:  # validation / prediction
            return loader

        class Logged:
            def __iter__(self):
                with open(path, "a") as log:
                    for step, batch in enumerate(loader):
                        items = [
                            [e, int(f)]
                            for e, f in zip(batch["episode_id"], batch["frame_index"], strict=True)
                        ]
                        log.write(json.dumps([epoch, step, items]) + "\n")
                        log.flush()
                        yield batch

            def __len__(self):
                return len(loader)

        return Logged()

    trainer.make_loader = make_loader


class _CutAppend:
    def __init__(self, handle, faults: _Faults, name: str) -> None:
        self.handle, self.faults, self.name = handle, faults, name

    def write(self, text: str) -> int:
        if self.faults.hit("append", self.name):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            self.faults.die()
        return self.handle.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def _truncate_half(filename) -> None:
    size = os.path.getsize(filename)
    with open(filename, "r+b") as f:
        f.truncate(size // 2)


def _register_fake_backbone() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fake_backbone import FakeBackbone

    from mobile_vla.backbones import register_backbone

    @register_backbone("fake")
    def _fake(*, device: str = "cpu", dtype: str = "fp32") -> FakeBackbone:
        return FakeBackbone(device=device, dtype=dtype)


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    _register_fake_backbone()
    # Under torchrun, MOBILE_VLA_FAULT_RANK=R arms the fault in rank R only (the other ranks just count).
    rank = os.environ.get("MOBILE_VLA_FAULT_RANK")
    armed = rank is None or rank == os.environ.get("RANK", "0")
    spec = os.environ.get("MOBILE_VLA_FAULT", "") if armed else ""
    log = os.environ.get("MOBILE_VLA_FAULT_LOG") if os.environ.get("RANK", "0") == "0" else None
    faults = _Faults(spec, log)
    if "--out" in argv:
        faults.prefixes.append((os.path.abspath(argv[argv.index("--out") + 1]), "RUN"))
    if os.environ.get("MOBILE_VLA_CACHE"):
        faults.prefixes.append((os.path.abspath(os.environ["MOBILE_VLA_CACHE"]), "CACHE"))
    _install(faults)
    from mobile_vla.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
