"""Files that survive interruptions and shared folders: atomic writes, JSON lines, locks held by live processes only,
settings stamps that keep a folder to one set of settings, and a check that an image file is complete."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from filelock import FileLock, Timeout


TEMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place. The file gets the
    user's umask (not mkstemp's owner-only mode); the temporary name carries the writer's pid, so
    ``remove_stale_temps`` can tell a crashed writer's leftovers from a live one's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_MARK + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, str(path)) from e  # name the file the user knows, not the temporary one
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object as one line, all or nothing: a write that fails (a full disk, a file-size limit) is
    undone (the file is cut back to its previous end) before the error is raised; the line is fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        end = f.seek(0, os.SEEK_END)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            f.truncate(end)
            raise


def read_jsonl(path: str | os.PathLike, torn: str = "error") -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-empty line; a bad line raises naming file and line.

    ``torn``: what to do with a last line that a crash cut short (not valid JSON, no final newline): ``"error"``,
    ``"skip"`` it, or ``"repair"`` the file (cut it back to its last complete line; the caller writes the row
    again). A bad line anywhere else is always an error.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from None
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: line {lineno} is not valid UTF-8 ({e.reason})") from None
        except json.JSONDecodeError as e:
            if lineno == len(lines) and torn != "error":  # the last line, without its newline: a torn append
                if torn == "repair":
                    with open(path, "r+b") as f:
                        f.truncate(len(data) - len(raw))
                return
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {lineno} is not a JSON object")
        yield lineno, obj


def check_writable(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it, or raise ``ValueError`` naming it (so
    a run fails before the model loads, not after its first image)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".cslg-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write there ({e.strerror})") from None
    return folder


_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]*" + re.escape(TEMP_MARK))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> int:
    """Delete the temporary files of interrupted ``atomic_write`` calls below ``folder`` whose writer is gone (a live
    writer's are kept), for files called ``name`` (a glob); returns how many."""
    removed = 0
    for path in Path(folder).rglob(f".{name}.*{TEMP_MARK}*"):
        match = _TEMP.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class LockedError(RuntimeError):
    """Another live process holds a lock."""


@contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True, held_by: str = "another process") -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) while the context is held, through ``filelock`` (an OS lock
    that dies with its process, so a crashed run never leaves it held). ``wait=False``: raise ``LockedError`` if it
    is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=-1 if wait else 0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(f"{path} is locked by {held_by}") from None
    try:
        yield
    finally:
        lock.release()


def settings_stamp(path: str | os.PathLike, wanted: Mapping[str, Any], what: str, remedy: str, if_corrupt: str) -> None:
    """Keep a folder to one set of settings: write ``wanted`` to ``path`` (JSON), or, when it exists, raise
    ``ValueError`` naming every setting that differs (``what``: the folder's content; ``remedy`` / ``if_corrupt``:
    what to do when the settings differ / the file is unreadable). The check and the first write happen under a
    lock, so two processes cannot both stamp a fresh folder."""
    path = Path(path)
    wanted = json.loads(json.dumps(dict(wanted)))  # as stored: tuples are lists
    with file_lock(path.with_name(path.name + ".lock")):
        if not path.exists():
            atomic_write_json(path, wanted)
            return
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(found, dict):
                raise ValueError("not a JSON object")
            if any(isinstance(v, float) and not math.isfinite(v) for v in found.values()):
                raise ValueError("it stores a non-finite number")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is corrupt ({e}); {if_corrupt}") from None
    changed = [f"{k} {found.get(k)!r} -> {v!r}" for k, v in wanted.items() if found.get(k) != v]
    if changed:
        raise ValueError(f"{path.parent} holds {what} with other settings ({', '.join(changed)}); {remedy}")


def image_problem(path: str | os.PathLike) -> str:
    """Why ``path`` is not a complete, decodable image (``""`` when it is)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return f"missing image {path}"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as e:
        return f"unreadable image {path}: {e}"
    return ""


def rgb(image: Any) -> Any:
    """``image`` as 8-bit RGB (palette, alpha, 16-bit and greyscale modes converted; alpha composited on white;
    16-bit values scaled by 255 / 65535)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        # 16-bit modes span 0-65535; 32-bit "I" holds either range (8-bit data widened, or a 16-bit file)
        top = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
        return Image.fromarray((array / top * 255).round().astype("uint8")).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
