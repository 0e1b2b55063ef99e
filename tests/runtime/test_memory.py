"""minq.runtime.memory (rss, release_memory) and what keeps memory resident: no tensor of a loaded GGUF is a
view of the file's memory map (the map would stay in the process for as long as the model lives)."""

import numpy as np

from minq.runtime.memory import release_memory, rss


def test_rss_and_release():
    r = rss()
    assert isinstance(r, int) and r > 0
    a = np.arange(1_000_000, dtype=np.float64)
    keep = a.copy()
    del a
    assert release_memory() in (True, False)
    assert np.array_equal(keep, np.arange(1_000_000, dtype=np.float64))      # nothing live is touched


def _owns_memory(a) -> bool:
    """False when ``a`` is (a view of) a memory-mapped file."""
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return False
        a = getattr(a, "base", None)
    return True


def test_loaded_gguf_tensors_are_copies(smollm2):
    for g in smollm2.norms.values():                       # F32 tensors in the file: copied out of the map
        assert _owns_memory(g), "a norm is a view of the GGUF file's memory map"
    assert _owns_memory(smollm2.embedding)
