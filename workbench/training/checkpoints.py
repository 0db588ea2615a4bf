"""Checkpoint files: written atomically, read without running code, and found again for `ckpt_path=last`.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction, whose temp file lives in the system temp
folder; when that is another filesystem than the output folder, the final move is a copy, and a kill or a full
disk during it leaves a truncated file under the checkpoint's final name. `AtomicCheckpointIO` writes the
bytes to a temp file in the *same folder*, fsyncs it, renames it over the final name (atomic on POSIX) and
fsyncs the folder, so a checkpoint path always holds a complete file or nothing. A temp file left by a killed
process (its pid is in the name) is removed by the next run that writes to the folder.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from workbench.config.errors import first_line

TEMP_SUFFIX = ".partial"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)" + re.escape(TEMP_SUFFIX) + "$")


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}{TEMP_SUFFIX}"


def write_atomic(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write `data` to `path` so that `path` never holds a partial file: same-folder temp file, fsync,
    rename, fsync of the folder. On any failure the temp file is removed and the error names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a write() error names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files in `folder` whose writing process no longer exists; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with `write_atomic` as the final write (plugins=[AtomicCheckpointIO()])."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())


# -- reading -----------------------------------------------------------------------------------------------


def load_metadata(path: Path) -> dict[str, Any]:
    """A checkpoint's entries without reading its tensors (mmap), refusing anything but plain data
    (weights_only: a checkpoint is an untrusted file and must not run code). Raises ValueError naming why."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ValueError(first_line(exc)) from exc


def candidates(folders: list[Path]) -> list[Path]:
    """The checkpoints in `folders`, newest first."""
    files = [p for f in folders if f.is_dir() for p in f.glob("*.ckpt") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
