"""Chapter 12 — rotations: randomized Hadamard matrices fused into a Llama (QuaRot-style incoherence).

An orthogonal ``R`` (``R R^T = I``) changes no linear map: ``Y = X W^T = (X R)(W R)^T``. Rotating the
inputs of a linear by a *randomized Hadamard* matrix spreads every outlier channel over all channels
("incoherence"), so that one rounding grid fits every weight row and every activation token better:

    H_n          an n x n matrix of +-1 with H_n H_n^T = n I (a Hadamard matrix)
    R = D H_n / sqrt(n)     D = diag(+-1), random signs: R is orthogonal, and x R mixes every x_j
                            into every output with weight +-1/sqrt(n)

Sizes. Sylvester's construction gives every power of two (``H_2m = [[H_m, H_m], [H_m, -H_m]]``);
SmolLM2 needs 576 = 36 * 16 and 1536 = 12 * 128, so ``H_n = H_K (x) H_P`` (Kronecker) with a
Paley matrix ``H_K`` (12 from the prime 11, 36 from the prime 17) and a Sylvester ``H_P``, P = 2^m.
The product ``x R`` costs O(n log n) with the fast Walsh-Hadamard transform (butterflies over the
Sylvester factor, a K x K matmul for the rest): ``hadamard_transform`` — ``_fwht_reference`` is the
readable NumPy/torch version, ``_fwht_kernel`` the same butterflies in Numba, row by row in threads;
both equal the plain matrix product with ``random_hadamard`` (tests/test_rotation.py).

Fusing into a pre-norm Llama (``rotate``), rows are tokens (``Y = X W^T``), ``W [out, in]``:

    1. fold each RMSNorm gamma into the linears that read it: W <- W diag(gamma), gamma <- 1.
       RMSNorm without gamma commutes with R (it divides by ||x||, which R keeps): rms(x R) = rms(x) R.
    2. R1 [d, d] on the residual stream: embedding E <- E R1; readers of the stream (q, k, v, gate, up,
       the head) W <- W R1; writers to it (o, down) W <- R1^T W. The head is untied from E (it took
       the final gamma, and E R1 is not E diag(gamma) R1).
    3. R2 [hd, hd] per head on the values: v rows of each KV head W_v,h <- R2^T W_v,h, o columns of each
       query head W_o[:, h] <- W_o[:, h] R2 (attention mixes positions, not channels: (p V) R2 = p (V R2)).
    4. online (optional): the down projection's input m [tokens, hidden] is rotated at run time,
       m <- m R4, with W_down <- W_down R4: the one rotation that cannot be fused (SwiGLU is not linear).

Every step leaves the float function unchanged (the rotated model's logits equal the original's
within float32 rounding, tests/test_rotation.py); quantizing the rotated weights and activations is
where it pays. Not done, and why: QuaRot also rotates the o projection's input across heads online,
which needs a Hadamard of order n_heads = 9 (none exists: orders are 1, 2 and multiples of 4); RMSNorm
folding is exact without the embedding mean subtraction QuaRot's code also applies (exact only for
LayerNorm). Rotating keys for a quantized KV cache is the cache's option (``minq.kvcache_quant``,
``-had``).

Papers: Ashkboos et al., "QuaRot" (2024, arXiv:2404.00456); Liu et al., "SpinQuant" (2024); Chee et
al., "QuIP" (2023) for incoherence. Schemes: ``minq.rotation_model``. Notebook:
notebooks/12_rotations_and_hqq.ipynb.
"""

from __future__ import annotations

import numpy as np

from minq._backend import is_torch
from minq._checks import check_float_array, check_int
from minq._jit import njit, prange

__all__ = ["hadamard", "random_hadamard", "random_signs", "hadamard_transform", "hadamard_sizes", "rotate",
           "fold_norms", "OnlineHadamard", "kurtosis", "PALEY"]

# Paley orders minq builds (order: (construction, prime q)). Paley I: q = 3 mod 4, order q + 1;
# Paley II: q = 1 mod 4, order 2 (q + 1). Any n = K * 2^m with K here (or K = 1) has a Hadamard matrix.
PALEY = {12: ("I", 11), 20: ("I", 19), 28: ("II", 13), 36: ("II", 17), 44: ("I", 43), 60: ("I", 59)}


def _chi(q: int):
    """The quadratic character mod the prime q: ``chi[a]`` = 0 (a = 0), 1 (a a square), -1 (otherwise)."""
    chi = -np.ones(q, np.int64)
    chi[0] = 0
    chi[(np.arange(1, q) ** 2) % q] = 1
    return chi


def _paley(K: int):
    """The Paley Hadamard matrix of order K (int64 [K, K] of +-1)."""
    kind, q = PALEY[K]
    i = np.arange(q)
    Q = _chi(q)[(i[None, :] - i[:, None]) % q]             # Jacobsthal matrix, Q[i, j] = chi(j - i)
    one = np.ones((1, q), np.int64)
    if kind == "I":                                          # Q antisymmetric: H = I + [[0, 1], [-1, Q]]
        S = np.block([[np.zeros((1, 1), np.int64), one], [-one.T, Q]])
        return np.eye(q + 1, dtype=np.int64) + S
    C = np.block([[np.zeros((1, 1), np.int64), one], [one.T, Q]])   # Q symmetric, C = C^T, zero diagonal
    A, B = np.array([[1, 1], [1, -1]]), np.array([[1, -1], [-1, -1]])
    return np.kron(C, A) + np.kron(np.eye(q + 1, dtype=np.int64), B)   # 0 -> B, +-1 -> +-A


def _sylvester(P: int):
    """The Sylvester Hadamard matrix of order P = 2^m: H_1 = [1], H_2m = [[H_m, H_m], [H_m, -H_m]]."""
    H = np.ones((1, 1), np.int64)
    while H.shape[0] < P:
        H = np.block([[H, H], [H, -H]])
    return H


def _split(n) -> tuple[int, int]:
    """``(K, P)`` with ``n = K * P``, ``P`` a power of two and ``K`` 1 or a ``PALEY`` order; ValueError
    naming ``n`` when there is none."""
    n = check_int(n, "n", lo=1)
    for K in (1, *PALEY):
        P = n // K
        if n % K == 0 and P & (P - 1) == 0:
            return K, P
    raise ValueError(f"n = {n} has no Hadamard matrix minq builds: it must be K * 2^m with K in "
                     f"{[1, *PALEY]} (see hadamard_sizes)")


def hadamard_sizes(limit: int = 4096) -> list[int]:
    """Every n <= ``limit`` that ``hadamard`` builds (ValueError naming ``limit`` when it is not an int >= 1)."""
    check_int(limit, "limit", lo=1)
    return sorted({K * 2 ** m for K in (1, *PALEY) for m in range(13) if K * 2 ** m <= limit})


def hadamard(n: int):
    """A Hadamard matrix of order ``n``: int64 ``[n, n]`` of +-1 with ``H H^T = n I``.

    ``H_K (x) H_P`` for ``n = K * P`` (``_split``): Sylvester for the power of two, Paley for K.
    Raises ValueError naming ``n`` for an order minq does not build (``hadamard_sizes()`` lists them).
    """
    K, P = _split(n)
    return np.kron(_paley(K), _sylvester(P)) if K > 1 else _sylvester(P)


def random_signs(n: int, seed: int = 0):
    """``n`` random signs (float32 +-1) from ``seed``: the diagonal D of ``random_hadamard``."""
    check_int(n, "n", lo=1)
    check_int(seed, "seed", lo=0)
    return np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0).astype(np.float32)


def random_hadamard(n: int, seed: int = 0):
    """The orthogonal ``R = diag(random_signs(n, seed)) H_n / sqrt(n)``, float64 ``[n, n]``."""
    return random_signs(n, seed)[:, None].astype(np.float64) * hadamard(n) / np.sqrt(n)


def hadamard_transform(x, signs=None, *, kernel: bool = True):
    """``x diag(signs) H_n / sqrt(n)`` along the last axis, fast: ``x [..., n] -> [..., n]`` (NumPy or torch,
    ``x``'s dtype and device). ``signs`` float ``[n]`` of +-1, or None for all +1.

    Equals ``x @ random_hadamard(n, seed)`` for ``signs = random_signs(n, seed)`` within float32 rounding
    (tests: ``|difference| <= 2^-19 * sqrt(n) * max|x|``): butterflies over the Sylvester factor (each
    stage adds and subtracts pairs ``h`` apart), then the small ``H_K`` as a matmul. ``kernel=True`` runs
    a NumPy array through the Numba ``_fwht_kernel`` (the same butterflies row by row, in threads;
    bit-identical to ``kernel=False``'s ``_fwht_reference`` when n is a power of two, within the bound
    above otherwise: its ``H_K`` sums run in another order); torch tensors always take the reference.
    """
    check_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis (the last is transformed), got shape {tuple(x.shape)}")
    n = x.shape[-1]
    K, P = _split(n)
    s = np.ones(n, np.float32) if signs is None else np.asarray(signs, np.float32).reshape(-1)
    if s.shape != (n,) or not np.isin(s, (-1, 1)).all():
        raise ValueError(f"signs must be [{n}] values of +-1 (x's last axis), got shape {s.shape}")
    if is_torch(x) or not kernel or x.dtype not in (np.float32, np.float64):
        return _fwht_reference(x, s, K, P)
    X = np.ascontiguousarray(x).reshape(-1, n)                                  # [rows, n]
    out = np.empty_like(X)
    _fwht_kernel(X, s.astype(X.dtype), _paley(K).astype(X.dtype) if K > 1 else np.ones((1, 1), X.dtype),
                 np.full(1, 1.0 / np.sqrt(n), X.dtype), out)
    return out.reshape(x.shape)


def _fwht_reference(x, s, K: int, P: int):
    """The readable transform (NumPy or torch): signs, log2(P) butterfly stages on ``[..., K, P]``, ``H_K``."""
    torch = is_torch(x)
    if torch:
        import torch as xp
    else:
        xp = np
    x = x * (xp.as_tensor(s, dtype=x.dtype, device=x.device) if torch else s.astype(x.dtype))
    lead = tuple(x.shape[:-1])
    y = x.reshape(*lead, K, P)                                                  # [..., K, P]
    h = 1
    while h < P:                                                                # y <- y H_P, log2(P) stages
        y = y.reshape(*lead, K, P // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = xp.stack([a + b, a - b], -2)
        h *= 2
    y = y.reshape(*lead, K, P)
    if K > 1:                                                                   # y <- H_K^T y, one GEMM
        HK = _paley(K).astype(np.float32)
        HK = xp.as_tensor(HK, dtype=x.dtype, device=x.device) if torch else HK.astype(x.dtype)
        y = (y.swapaxes(-1, -2).reshape(-1, K) @ HK).reshape(*lead, P, K).swapaxes(-1, -2)   # [..., K, P]
    return y.reshape(*lead, K * P) * (1.0 / float(np.sqrt(K * P)))


@njit(parallel=True)
def _fwht_kernel(X, s, HK, scale, out):
    # X [rows, n] -> out [rows, n] = X diag(s) (H_K (x) H_P) * scale[0], n = K * P; one row per thread step
    rows, n = X.shape
    K = HK.shape[0]
    P = n // K
    for r in prange(rows):
        y = out[r]
        for i in range(n):
            y[i] = X[r, i] * s[i]
        h = 1
        while h < P:                                       # the same butterflies as the reference, in place
            for k in range(K):
                for start in range(k * P, (k + 1) * P, 2 * h):
                    for i in range(start, start + h):
                        a, b = y[i], y[i + h]
                        y[i], y[i + h] = a + b, a - b
            h *= 2
        if K > 1:                                          # column p of [K, P]: y[:, p] <- H_K^T y[:, p]
            col = np.empty(K, y.dtype)
            for p in range(P):
                for c in range(K):
                    col[c] = 0                             # sums in x's dtype, a = 0, 1, ... in order
                    for a in range(K):
                        col[c] += HK[a, c] * y[a * P + p]
                for c in range(K):
                    y[c * P + p] = col[c]
        for i in range(n):
            y[i] *= scale[0]


class OnlineHadamard:
    """A runtime hook (the model protocol's ``fn(name, X)``) that rotates a linear's input: ``X -> X R``
    with ``R = diag(signs) H / sqrt(n)`` (``hadamard_transform``). The linear's weight must hold ``W R``."""

    def __init__(self, signs):
        self.signs = np.asarray(signs, np.float32)
        _split(self.signs.size)
        self._x = self._y = None

    def __repr__(self):
        return f"OnlineHadamard(n={self.signs.size})"

    def __call__(self, name, X):
        if X is not self._x:                   # the linears that read one X share one transform
            self._x, self._y = X, hadamard_transform(X, self.signs)
        return self._y


def kurtosis(x, axis=None):
    """Excess-free (Pearson) kurtosis ``E[(x - mean)^4] / var^2`` along ``axis`` (None: all values),
    float64. A Gaussian has 3; a few large outliers make it large; rotation pulls it towards 3."""
    x = np.asarray(x, np.float64)
    d = x - x.mean(axis=axis, keepdims=True)
    var = (d * d).mean(axis=axis)
    return (d ** 4).mean(axis=axis) / np.where(var > 0, var * var, 1.0)


# --- the fused rotations of a Llama -------------------------------------------------------------------


def _llama(model):
    from minq.models.llama_weights import LlamaWeights

    if not isinstance(model, LlamaWeights):
        raise TypeError(f"rotations fold into a pre-norm Llama decoder's parameters (minq.load_model('smollm2')); "
                        f"got a {type(model).__name__} (rotate the float model, then quantize or wrap it)")
    return model


def fold_norms(model):
    """``model`` with every RMSNorm gamma folded into the linears that read the norm (``W diag(gamma)``) and
    the final gamma into the head (untied from the embedding), every gamma set to 1: the same function
    (float64 products rounded once to float32). A new float model; ``model`` is unchanged."""
    W, head = _folded(model)
    return _rebuild(model, W, model.embedding, head)


def _folded(model):
    """``(W, head)`` of ``fold_norms``, float64: ``{name: [out, in]}`` of every linear and ``[vocab, d]``."""
    _llama(model)
    W = {n: np.asarray(model.weights[n].dequantize(), np.float64) for n in model.linear_names()}
    for i in range(model.config.n_layers):
        for norm, readers in (("attn_norm", ("attn_q", "attn_k", "attn_v")), ("ffn_norm", ("ffn_gate", "ffn_up"))):
            g = np.asarray(model.norms[f"blk.{i}.{norm}"], np.float64)
            for r in readers:
                W[f"blk.{i}.{r}"] = W[f"blk.{i}.{r}"] * g[None, :]          # W diag(gamma)
    E = model.embedding if model.output is None else model.output
    return W, np.asarray(E, np.float64) * np.asarray(model.norms["output_norm"], np.float64)[None, :]


def _rebuild(model, W: dict, embedding, head):
    from minq.models.weights import DenseWeight

    ones = np.ones(model.config.dim, np.float32)
    ones.setflags(write=False)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)                  # noqa: E731
    return type(model)(model.config, {n: DenseWeight(f32(a), copy=False) for n, a in W.items()},
                       {n: ones for n in model.norms}, f32(embedding), output=f32(head), tokenizer=model.tokenizer)


def rotate(model, *, seed: int = 0, r2: bool = True, online: bool = True, progress: bool = False):
    """The rotated twin of a float Llama ``model`` (see the module docstring): norms folded, R1 on the
    residual stream, R2 per head on V/O (``r2``), and with ``online`` the down projection's input
    rotated at run time (then the result is an ``ActQuantModel`` — ``minq.w8a8``'s runtime-hook wrapper —
    around the rotated Llama, holding one ``OnlineHadamard`` per block).

    Weights are dequantized first, so give the float model. ``seed`` draws the random signs: R1 from
    ``seed``, R2 from ``seed + 1``, R4 from ``seed + 2``. Guarantee (tests/test_rotation.py): the logits
    equal ``model``'s within float32 rounding. Raises TypeError for a model that is not a Llama.
    """
    _llama(model)
    check_int(seed, "seed", lo=0)
    c = model.config
    d, hd, nh, nkv = c.dim, c.head_dim, c.n_heads, c.n_kv_heads
    for n, what, used in ((d, "dim", True), (hd, "head_dim", r2), (c.hidden_dim, "hidden_dim", online)):
        if used:
            try:
                _split(n)
            except ValueError:
                raise ValueError(f"rotate: the model's {what} = {n} has no Hadamard matrix minq builds "
                                 f"(K * 2^m, K in {[1, *PALEY]})") from None
    W, head = _folded(model)
    s1, s2, s4 = (random_signs(n, seed + k) for k, n in enumerate((d, hd, c.hidden_dim)))
    T = hadamard_transform                                      # T(A, s) = A R along A's last axis (float64)
    from tqdm.auto import tqdm

    for i in tqdm(range(c.n_layers), desc="rotate", unit="block", disable=not progress, leave=False):
        p = f"blk.{i}."
        for n in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
            W[p + n] = T(W[p + n], s1)                                           # readers: W R1
        for n in ("attn_output", "ffn_down"):
            W[p + n] = T(W[p + n].T, s1).T                                       # writers: R1^T W = (W^T R1)^T
        if r2:
            Wv = W[p + "attn_v"].reshape(nkv, hd, d).transpose(0, 2, 1)          # [nkv, d, hd]
            W[p + "attn_v"] = T(Wv, s2).transpose(0, 2, 1).reshape(nkv * hd, d)  # R2^T W_v,h per KV head
            Wo = W[p + "attn_output"].reshape(d, nh, hd)                         # [d, nh, hd]
            W[p + "attn_output"] = T(Wo, s2).reshape(d, nh * hd)                 # W_o,h R2 per query head
        if online:
            W[p + "ffn_down"] = T(W[p + "ffn_down"], s4)                         # its input is rotated online
    E = T(np.asarray(model.embedding, np.float64), s1)                           # [vocab, d]: E R1
    head = T(head, s1)
    rotated = _rebuild(model, W, E, head)
    if not online:
        return rotated
    from minq.w8a8 import ActQuantModel

    hook = OnlineHadamard(s4)
    return ActQuantModel(rotated, {f"blk.{i}.ffn_down": hook for i in range(c.n_layers)})
