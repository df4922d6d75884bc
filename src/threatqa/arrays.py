"""The arrays of an index version on disk: small ones compressed, large ones plain `.npy` files.

Much of a small index is fixed costs that do not shrink with its text: the vectors, n-grams and
statistics of its vocabulary, and offsets and counts kept as wide integers. At 1k passages (0.4 MB
of text) these made the index 4.2x its text. An array under PACK_BELOW bytes is therefore saved as
`<name>.npy.br` (its `.npy` file, Brotli-compressed) when that saves at least a tenth, and read in
whole when the index opens; a larger one stays `<name>.npy`, read in up to MAP_ABOVE_BYTES and
memory-mapped above (`load`). Either form is found under the array's `.npy` name (`load`, `stored`).
Measured on 2 cores (issue 17): the arrays of a 98k-passage index compress in 1.3 s at quality 5
(12.5 s at 9, for 1% smaller), and the index opens in 0.75 s instead of 0.50 (0.14 s of it
decompressing); at 1M passages the arrays above the limit stay plain and the open is as before.
"""

from __future__ import annotations

import io
from pathlib import Path

import brotli
import numpy as np

PACKED = ".br"  # suffix of a compressed array's file, after its .npy name
PACK_BELOW = 64 * 1024**2  # bytes of an array compressed when saved
PACK_QUALITY = 5
PACK_GAIN = 0.9  # kept compressed only when at most this fraction of its .npy file
# Index files up to this size are read into memory, larger ones memory-mapped. Read in, a file cannot
# be truncated under the server (a mapped one then ends it with SIGBUS), and searches are faster: an
# IVF index memory-mapped took 1.41 ms a question at 100k passages and 1.97 ms at 1M, read in 0.30 and
# 0.79 ms (2 cores, issue 17). Above it, pages load on demand and are shared between processes.
MAP_ABOVE_BYTES = 4 * 1024**3


def save(path: Path, array: np.ndarray) -> Path:
    """Save `array` under `path` (a `.npy` name), compressed when small and compressible; the file written."""
    array = np.asanyarray(array)
    if array.nbytes < PACK_BELOW:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        plain = buffer.getvalue()
        packed = brotli.compress(plain, quality=PACK_QUALITY)
        if len(packed) <= PACK_GAIN * len(plain):
            target = path.with_name(path.name + PACKED)
            target.write_bytes(packed)
            return target
    np.save(path, array, allow_pickle=False)
    return path


def stored(path: Path) -> Path:
    """The file that holds the array saved under `path`: compressed if there is one, else `path`."""
    packed = path.with_name(path.name + PACKED)
    return packed if packed.is_file() else path


def load(path: Path) -> np.ndarray:
    """The array saved under `path` (`save`): read in, or memory-mapped when a plain file above
    MAP_ABOVE_BYTES. A damaged file is a ValueError (OSError when missing or unreadable)."""
    file = stored(path)
    if file is path:
        return np.asarray(np.load(path, mmap_mode="r" if path.stat().st_size > MAP_ABOVE_BYTES else None))
    try:
        plain = brotli.decompress(file.read_bytes())
    except brotli.error as exc:
        raise ValueError(f"{file} cannot be decompressed ({exc})") from None
    # copied out of the bytes object into memory NumPy allocates, as a plain file is read in: writable, and
    # (for large arrays) on the huge pages NumPy asks for, which random reads of postings and lengths favour
    return np.array(np.load(io.BytesIO(plain), allow_pickle=False))
