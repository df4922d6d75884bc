"""Arrays of an index version on disk (arrays.py): small ones compressed, large ones plain .npy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from threatqa import arrays


def test_a_small_compressible_array_is_saved_compressed_and_read_back_exactly(tmp_path: Path) -> None:
    counts = (np.arange(100_000) % 3).astype(np.uint8)
    written = arrays.save(tmp_path / "counts.npy", counts)
    assert written.name == "counts.npy.br" and not (tmp_path / "counts.npy").exists()
    assert written.stat().st_size < 0.1 * counts.nbytes
    assert arrays.stored(tmp_path / "counts.npy") == written
    back = arrays.load(tmp_path / "counts.npy")
    assert back.dtype == np.uint8 and back.shape == counts.shape and np.array_equal(back, counts)
    assert back.flags.writeable and back.flags.owndata  # its own memory, as a plain file read in


def test_arrays_that_do_not_compress_or_are_large_stay_plain(tmp_path: Path, monkeypatch) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)
    assert arrays.save(tmp_path / "noise.npy", noise).name == "noise.npy"  # would not save a tenth
    monkeypatch.setattr(arrays, "PACK_BELOW", 1000)
    zeros = np.zeros(1000, np.int32)
    assert arrays.save(tmp_path / "zeros.npy", zeros).name == "zeros.npy"  # 4,000 bytes: too large to pack
    for name, array in (("noise", noise), ("zeros", zeros)):
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), array)  # plain files numpy reads
        assert np.array_equal(arrays.load(tmp_path / f"{name}.npy"), array)


def test_a_plain_array_above_the_limit_is_memory_mapped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(arrays, "PACK_BELOW", 0)
    monkeypatch.setattr(arrays, "MAP_ABOVE_BYTES", 1000)
    arrays.save(tmp_path / "big.npy", np.arange(1000, dtype=np.int64))
    arrays.save(tmp_path / "small.npy", np.arange(10, dtype=np.int64))
    big, small = arrays.load(tmp_path / "big.npy"), arrays.load(tmp_path / "small.npy")
    assert isinstance(big.base, np.memmap) and not isinstance(small.base, np.memmap)  # a view of the map; read in
    assert int(big[999]) == 999 and small.tolist() == list(range(10))


def test_a_damaged_compressed_array_is_a_value_error(tmp_path: Path) -> None:
    written = arrays.save(tmp_path / "counts.npy", np.zeros(10_000, np.int64))
    data = written.read_bytes()
    written.write_bytes(data[:-4])
    with pytest.raises(ValueError, match=r"counts\.npy\.br cannot be decompressed"):
        arrays.load(tmp_path / "counts.npy")
