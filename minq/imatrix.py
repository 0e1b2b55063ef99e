"""Chapter 08 — importance matrices: which input columns of each linear matter, as llama.cpp measures it.

Rounding a weight ``W[o, j]`` by ``e`` changes output ``o`` by ``e x_j`` on every token, so the
squared output error of a rounding ``dW`` over calibration tokens ``X [tokens, in]`` is

    ||dW X^T||^2 = tr(dW H dW^T),      H = X^T X                          (chapter 06's GPTQ Hessian)
                 ~ sum_o sum_j dW[o, j]^2 H[j, j]                          (keeping only its diagonal)

The diagonal ``H[j, j] = sum_t x_tj^2`` is all that ``llama-imatrix`` collects: for every linear of the
blocks ("blk.*" in GGUF names; not the output head), the sum of ``x_j^2`` per input column over the
calibration tokens, and the token count. ``llama-quantize --imatrix`` divides the two — the
**importance** of column j is the mean of ``x_j^2`` — and weights each block's rounding error by it
(``minq.kquants.quantize(x, qtype, imatrix=importance)``). Every token counts the same; calibration
windows play llama-imatrix's chunks (``chunk_size`` = window length).

    im = collect_imatrix(model, calibration)       # IMatrix: sums and counts per linear
    im.importance("blk.0.ffn_down")                # float32 [in] = sums / tokens = diag(H) / tokens
    write_imatrix(im, "model.imatrix.gguf")        # the GGUF imatrix format, or ".dat": the legacy one
    im = read_imatrix("model.imatrix.gguf", model) # files from llama-imatrix too

File formats (llama.cpp's ``tools/imatrix/imatrix.cpp``, names are GGUF tensor names
``blk.0.attn_q.weight``):

- GGUF (``general.type = "imatrix"``, ``imatrix.datasets``, ``imatrix.chunk_count``,
  ``imatrix.chunk_size``; llama-quantize refuses a file without all three): per linear a float32
  tensor ``<name>.in_sum2`` (the sums) and ``<name>.counts`` (the token count). gguf-py's writer also
  adds ``general.architecture = "imatrix"``, which llama.cpp ignores.
- legacy ``.dat``: int32 entry count; per entry int32 name length, the name, int32 ``ncall``, int32
  length, float32 ``(sums / count) * ncall`` with ``ncall`` = chunks seen; then int32 chunk count,
  int32 dataset-name length and the name. A reader divides by ``ncall`` again.

Notebook: ``notebooks/08_kquants.ipynb``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minq._io import atomic_path
from minq.calibration import calibrate, check_calibration

__all__ = ["IMatrix", "collect_imatrix", "write_imatrix", "read_imatrix"]


@dataclass
class IMatrix:
    """Per linear: ``sums[name]`` float64 ``[in]`` (sum over tokens of ``x_j^2``) and ``counts[name]`` tokens."""

    sums: dict
    counts: dict
    chunk_size: int = 0
    datasets: list = field(default_factory=list)

    @property
    def chunk_count(self) -> int:
        """Chunks (calibration windows) seen: the largest token count over the chunk size."""
        top = max(self.counts.values(), default=0)
        return top // self.chunk_size if self.chunk_size else 0

    def importance(self, name: str) -> np.ndarray:
        """float32 ``[in]``: the mean of ``x_j^2`` over the tokens (ones where no token was seen, as llama.cpp)."""
        if name not in self.sums:
            raise KeyError(f"name {name!r}: no imatrix entry; entries are linears such as {next(iter(self.sums), '')!r}")
        n = self.counts[name]
        return (self.sums[name] / n).astype(np.float32) if n > 0 else np.ones(len(self.sums[name]), np.float32)


class _SumOfSquares:
    """An observer of ``minq.calibration.calibrate``: ``x_j^2`` summed per input column, and tokens."""

    def __init__(self):
        self.sums, self.n = None, 0

    def update(self, X):
        X = np.asarray(X, np.float32).reshape(-1, np.shape(X)[-1])         # [tokens, in]
        s = np.einsum("ti,ti->i", X, X, dtype=np.float64)
        self.sums = s if self.sums is None else self.sums + s
        self.n += X.shape[0]


def collect_imatrix(model, calibration, *, batch_size: int = 4, progress: bool = True,
                    dataset: str = "") -> IMatrix:
    """The importance matrix of every linear of ``model`` over calibration windows ``[n, seq_len]``.

    The forward and the hooks are those GPTQ and AWQ calibrate with (``minq.calibration.calibrate``);
    linears that read the same input share one sum (q/k/v, gate/up), as their entries in llama.cpp's file
    hold equal values. ``dataset`` names the calibration text in the file."""
    ids = check_calibration(calibration)
    obs = calibrate(model, ids, lambda name: _SumOfSquares(), batch_size=batch_size, progress=progress)
    if not np.isfinite([float(o.sums.sum()) for o in obs.values()]).all():
        raise ValueError("calibration: the model's activations overflow float32 (non-finite x^2 sums)")
    return IMatrix({k: o.sums for k, o in obs.items()}, {k: o.n for k, o in obs.items()},
                   chunk_size=ids.shape[1], datasets=[dataset] if dataset else [])


# ---- files ----------------------------------------------------------------------------------------

def _format(path, fmt):
    fmt = fmt or ("dat" if Path(path).suffix == ".dat" else "gguf")
    if fmt not in ("gguf", "dat"):
        raise ValueError(f"format must be 'gguf' or 'dat', got {fmt!r}")
    return fmt


def write_imatrix(im: IMatrix, path, *, format: str | None = None) -> Path:
    """Write ``im`` as llama.cpp's GGUF imatrix (default) or legacy ``.dat`` (``format="dat"`` or a ``.dat``
    suffix), atomically; entries in sorted name order, names as GGUF tensor names (``<linear>.weight``)."""
    fmt, path = _format(path, format), Path(path)
    names = sorted(im.sums)
    with atomic_path(path) as tmp:
        if fmt == "gguf":
            import gguf

            w = gguf.GGUFWriter(tmp, arch="imatrix", endianess=gguf.GGUFEndian.LITTLE)
            w.add_type("imatrix")
            # llama-quantize requires all three imatrix.* keys; gguf-py writes no empty array, so a
            # collection without a dataset name is written as "unnamed"
            w.add_array(gguf.Keys.IMatrix.DATASETS, list(im.datasets) or ["unnamed"])
            w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, im.chunk_count)
            w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, im.chunk_size)
            for name in names:
                w.add_tensor(f"{name}.weight.in_sum2", np.asarray(im.sums[name], np.float32))     # [in]
                w.add_tensor(f"{name}.weight.counts", np.array([im.counts[name]], np.float32))    # [1]
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        else:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<i", len(names)))
                for name in names:
                    key = f"{name}.weight".encode()
                    n = im.counts[name]
                    ncall = -(-n // im.chunk_size) if im.chunk_size else 1                 # ceil: no zeros
                    v = im.importance(name) * np.float32(ncall)
                    f.write(struct.pack("<i", len(key)) + key + struct.pack("<ii", ncall, len(v)))
                    f.write(np.asarray(v, "<f4").tobytes())
                ds = (im.datasets[-1] if im.datasets else "").encode()
                f.write(struct.pack("<ii", im.chunk_count, len(ds)) + ds)
    return path


def _read_dat(path: Path) -> IMatrix:
    b = path.read_bytes()
    o = 0

    def take(fmt):
        nonlocal o
        size = struct.calcsize(fmt)
        if o + size > len(b):
            raise ValueError(f"path {str(path)!r}: truncated legacy imatrix file (at byte {o} of {len(b)})")
        v = struct.unpack_from(fmt, b, o)
        o += size
        return v

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1 << 20:
        raise ValueError(f"path {str(path)!r}: not an imatrix file ({n_entries} entries)")
    sums, counts = {}, {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = bytes(take(f"<{length}s")[0]).decode(errors="replace")
        ncall, nval = take("<ii")
        v = np.array(take(f"<{nval}f"), np.float64)
        key = name.removesuffix(".weight")
        sums[key], counts[key] = v, max(int(ncall), 0)     # importance = sums / ncall, as llama-quantize
    datasets = []
    if o + 8 <= len(b):
        _, length = take("<ii")
        datasets = [bytes(take(f"<{length}s")[0]).decode(errors="replace")] if length > 0 else []
    return IMatrix(sums, counts, chunk_size=1, datasets=datasets)


def _read_gguf(path: Path) -> IMatrix:
    import gguf

    r = gguf.GGUFReader(path)
    kind = r.fields.get("general.type")
    if kind is None or bytes(kind.parts[-1]).decode() != "imatrix":
        raise ValueError(f"path {str(path)!r}: a GGUF file but not an imatrix (general.type is not 'imatrix')")
    t = {x.name: np.asarray(x.data, np.float64) for x in r.tensors}
    sums, counts = {}, {}
    for name in t:
        if name.endswith(".in_sum2"):
            key = name.removesuffix(".in_sum2").removesuffix(".weight")
            c = t.get(name.removesuffix(".in_sum2") + ".counts")
            if c is None:
                raise ValueError(f"path {str(path)!r}: {name} has no .counts tensor")
            sums[key], counts[key] = t[name].reshape(-1), int(c.reshape(-1)[0])
    size = r.fields.get(gguf.Keys.IMatrix.CHUNK_SIZE)
    ds = r.fields.get(gguf.Keys.IMatrix.DATASETS)
    datasets = [bytes(ds.parts[i]).decode() for i in ds.data] if ds is not None else []
    return IMatrix(sums, counts, chunk_size=int(size.parts[-1][0]) if size is not None else 0, datasets=datasets)


def read_imatrix(path, model=None, *, format: str | None = None) -> IMatrix:
    """Read a GGUF or legacy ``.dat`` imatrix (minq's or llama-imatrix's). With ``model``, check that every
    entry names one of its linears with the right input width (a file for another model is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: no such imatrix file")
    fmt = _format(path, format)
    if fmt == "gguf" and path.read_bytes()[:4] != b"GGUF":
        fmt = "dat"
    try:
        im = _read_gguf(path) if fmt == "gguf" else _read_dat(path)
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise ValueError(f"path {str(path)!r}: corrupt imatrix file ({e})") from None
    for name, s in im.sums.items():
        if not np.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"path {str(path)!r}: entry {name} has negative or non-finite values")
    if model is not None:
        widths = {n: model.weights[n].shape[1] for n in model.linear_names()}
        for name, s in im.sums.items():
            if name not in widths:
                raise ValueError(f"path {str(path)!r}: entry {name} is not a linear of this model (another model's imatrix?)")
            if len(s) != widths[name]:
                raise ValueError(f"path {str(path)!r}: entry {name} has {len(s)} columns, the model's linear "
                                 f"{widths[name]} (another model's imatrix?)")
    return im
