"""Pre-scores of float16 rows from an int8 copy, each within a proven bound of the float32 score.

Exact search (``search_index.ExactIndex``) uses this for float16 collections. A single query pays
for reading the whole matrix, and reads it cold: the text encoder's forward pass has just pushed it
out of cache. So bytes are the cost, and int8 codes with one scale per row are half a bf16 copy.
Every pre-score is within ``Int8Rows.prepare(queries).bounds`` of the float32 score ``q·x - bias``,
so re-scoring every row within twice that of the k-th best pre-score gives the exact top k.

Kernels, the first that works here is used (one query, 31,000 x 256, caches flushed first, 2-core
Xeon, one thread: onednn 0.93 ms, int8pack 1.20 ms, against 1.8 ms for the bf16 matrix-vector
product of a bf16 copy):

* ``onednn``: oneDNN's int8 matrix product, the op behind torch's x86 int8 inference. The query is
  quantised to uint8 here, products are summed exactly in int32, and the scales and the bias are
  applied in float32, so the bound depends on nothing inside the op. Checked once per process
  against exact integer arithmetic (an older CPU path could saturate) before it is trusted.
* ``int8pack``: torch's weight-only int8 kernel (AVX512 / AVX2 / NEON): the query in bf16,
  float32 sums, a bf16 result.
* ``bf16``: rows dequantised to bf16 block by block, then a bf16 matrix product (any build; the
  slow fallback for one query, and what int8pack hands batches of more than 16 queries to).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

KERNELS = ("onednn", "int8pack", "bf16")
WIDTH = 16  # codes are padded with zero columns to a multiple of this (the kernels' vector width)
PACK_ROWS = 1 << 20  # oneDNN packs rows in blocks of this many (a packed block cannot be sliced)
# |bf16 pre-score - float32 score| <= BF16_REL_ERROR * |q| * |y| for the bf16 kernels: the query
# (and, for "bf16", the dequantised row) rounded to bf16 (2^-9 each), the result rounded (2^-9),
# slack for products of small terms.
BF16_REL_ERROR = 2.0 ** -8 + 2.0 ** -9 + 2.0 ** -14
FLOAT32_REL_ERROR = 2.0 ** -20  # a few float32 roundings (scales, bias) on the "onednn" result
_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)  # absent from old torch builds


def padded_width(dim: int) -> int:
    """Bytes per row of the int8 codes of ``dim``-d vectors (zero columns up to a multiple of WIDTH)."""
    return -(-dim // WIDTH) * WIDTH


@dataclass
class PreparedQueries:
    """Queries in the kernel's input form, and each one's bound on |pre-score - float32 score|."""

    x: torch.Tensor
    scale: float  # "onednn": the uint8 query's scale (one per batch)
    bounds: np.ndarray  # (m,) float64


class Int8Rows:
    """A float16 (n, d) matrix as int8 codes with one scale per row, scored by one kernel."""

    def __init__(self, vectors: np.ndarray, kernel: str | None = None, step: int = 1024) -> None:
        if vectors.dtype != np.float16 or vectors.ndim != 2:
            raise ValueError(f"expected a 2-D float16 matrix, got {vectors.dtype} {vectors.shape}")
        self.n, self.dim = vectors.shape
        self.width = padded_width(self.dim)
        self.kernel = kernel or best_kernel()
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown int8 kernel {self.kernel!r}; one of {KERNELS}")
        # bf16-representable scales: the int8pack kernel takes bf16 ones, and every kernel then
        # dequantises to the same values, which the bound below is computed from
        self.scales = torch.empty(self.n, dtype=torch.float32)
        self.max_norm = self.max_error = 0.0  # largest |x| and |x - scale * codes| of a row
        onednn = self.kernel == "onednn"
        # "onednn" keeps only packed blocks, quantised and packed one at a time (memory peak: one block)
        self.codes = None if onednn else torch.zeros((self.n, self.width), dtype=torch.int8)
        self.packed: list[torch.Tensor] = []
        blocks = [(lo, min(lo + PACK_ROWS, self.n)) for lo in range(0, self.n, PACK_ROWS)] if onednn else [(0, self.n)]
        for lo, hi in blocks:
            block = torch.zeros((hi - lo, self.width), dtype=torch.int8) if onednn else self.codes
            for i in range(lo, hi, step):
                self._quantize(vectors[i : min(i + step, hi)], i, block[i - lo : min(i + step, hi) - lo])
            if onednn:
                self.packed.append(torch.ops.onednn.qlinear_prepack(block, [1, self.width]))
        if onednn:  # oneDNN takes float32 scales and a zero point per row
            self._zero_points = torch.zeros(min(self.n, PACK_ROWS), dtype=torch.int64)
        else:  # the others take bf16 scales (exact: the scales are bf16 values)
            self.scales = self.scales.to(torch.bfloat16)

    def _quantize(self, rows: np.ndarray, start: int, out: torch.Tensor) -> None:
        """Rows [start, start + len(rows)) into ``out`` (int8) and ``self.scales``; updates the bounds.
        In small blocks: the float64 temporaries stay a few MB (they set the app's peak memory)."""
        x = torch.from_numpy(rows.copy()).double()  # float16 values, exactly (copied: a map is read-only)
        amax = x.abs().amax(1)
        s = torch.where(amax > 0, amax / 127, 1.0).to(torch.bfloat16).double()  # clamping absorbs rounding
        c = (x / s[:, None]).round_().clamp_(-127, 127)
        out[:, : self.dim] = c.to(torch.int8)
        self.scales[start : start + len(x)] = s.float()
        self.max_norm = max(self.max_norm, float(x.norm(dim=1).max()))
        self.max_error = max(self.max_error, float(x.sub_(c.mul_(s[:, None])).norm(dim=1).max()))  # |x - s*c|

    def block_rows(self, n_queries: int, score_entries: int) -> tuple[int, int]:
        """(rows, queries) per pre-score call, so that a call holds about ``score_entries`` scores."""
        if self.kernel == "onednn":
            return PACK_ROWS, max(1, score_entries // PACK_ROWS)
        return max(4096, score_entries // max(n_queries, 1)), max(n_queries, 1)

    def prepare(self, queries: np.ndarray, max_abs_bias: float = 0.0) -> PreparedQueries:
        """(m, d) float32 queries -> their kernel form and per-query bounds."""
        # (few numpy calls: right after a forward pass each one costs tens of microseconds)
        q64 = queries.astype(np.float64)
        qnorm = np.sqrt(np.einsum("ij,ij->i", q64, q64))
        ynorm = self.max_norm + self.max_error  # bound on |scale * codes| of any row
        ref = 2 * self.dim * 2.0 ** -24  # float32 sums here and in the re-scoring einsum
        if self.kernel == "onednn":
            amax = float(np.abs(queries).max())
            scale = amax / 127 if amax > 0 else 1.0
            u = np.rint(q64 / scale)  # in [-127, 127]
            r = q64 - scale * u
            q_err = np.sqrt(np.einsum("ij,ij->i", r, r))  # |q - scale * u|, exactly enough (float64)
            u += 128  # uint8 with zero point 128; padding columns hold 128, i.e. 0
            if self.width != self.dim:
                u = np.pad(u, ((0, 0), (0, self.width - self.dim)), constant_values=128)
            rel = FLOAT32_REL_ERROR + ref
            # |q|e + |q - scale u| |y| + rel ((|q| + |q - scale u|) |y| + max|bias|), y = scale * codes
            bounds = qnorm * (self.max_error + rel * ynorm) + q_err * ((1 + rel) * ynorm) + rel * max_abs_bias
            return PreparedQueries(torch.from_numpy(u.astype(np.uint8)), scale, bounds)
        x = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(torch.bfloat16)
        if self.width != self.dim:
            x = torch.nn.functional.pad(x, (0, self.width - self.dim))
        bounds = qnorm * (self.max_error + (BF16_REL_ERROR + ref) * ynorm) + FLOAT32_REL_ERROR * max_abs_bias
        return PreparedQueries(x, 1.0, bounds)

    def scores(self, prep: PreparedQueries, start: int, stop: int,
               neg_bias: torch.Tensor | None = None) -> np.ndarray:
        """(m, stop - start) float32 pre-scores of rows [start, stop), plus ``neg_bias`` (float32,
        one per row) if given. "onednn" takes whole packed blocks: start a multiple of PACK_ROWS."""
        if self.kernel == "onednn":
            out = []
            for b in range(start // PACK_ROWS, -(-stop // PACK_ROWS)):
                lo, hi = b * PACK_ROWS, min((b + 1) * PACK_ROWS, self.n)
                if lo < start or hi > stop:
                    raise ValueError(f"rows [{start}, {stop}) do not cover whole packed blocks")
                out.append(torch.ops.onednn.qlinear_pointwise(
                    prep.x, prep.scale, 128, self.packed[b], self.scales[lo:hi], self._zero_points[: hi - lo],
                    None if neg_bias is None else neg_bias[lo - start : hi - start],
                    1.0, 0, torch.float32, "none", [], ""))
            return (out[0] if len(out) == 1 else torch.cat(out, 1)).numpy()
        codes, scales = self.codes[start:stop], self.scales[start:stop]
        if self.kernel == "int8pack" and len(prep.x) <= 16:  # a matrix-vector kernel
            s = _INT8_MM(prep.x, codes, scales)
        else:
            s = prep.x @ (codes.to(torch.bfloat16) * scales[:, None]).T
        return (s.float() if neg_bias is None else torch.add(s, neg_bias)).numpy()  # bf16 + float32 -> float32


@functools.lru_cache(maxsize=None)
def best_kernel() -> str:
    """The fastest kernel that gives exact integer sums on this machine (checked once)."""
    return "onednn" if _onednn_exact() else _fallback_kernel()


def _onednn_exact() -> bool:
    try:
        rng = np.random.default_rng(0)
        w = rng.integers(-127, 128, (64, 64), dtype=np.int8)
        w[0], w[1], w[2, ::2], w[2, 1::2] = 127, -127, 127, -127  # sums that saturate int16 pairs
        u = rng.integers(0, 256, (3, 64)).astype(np.uint8)
        u[0], u[1] = 255, 1
        packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(w), [1, 64])
        out = torch.ops.onednn.qlinear_pointwise(
            torch.from_numpy(u), 1.0, 128, packed, torch.ones(64), torch.zeros(64, dtype=torch.int64),
            None, 1.0, 0, torch.float32, "none", [], "").numpy()
        exact = (u.astype(np.int64) - 128) @ w.astype(np.int64).T
        ok = out.shape == exact.shape and np.array_equal(out.astype(np.int64), exact)
    except Exception as e:  # noqa: BLE001 - an internal op: absent, renamed or unsupported here
        log.info("oneDNN int8 matrix product unavailable (%s: %s); exact search scans with %s instead",
                 type(e).__name__, str(e).splitlines()[0] if str(e) else "", _fallback_kernel())
        return False
    if not ok:
        log.info("oneDNN int8 matrix product is not exact on this machine; exact search scans with %s instead",
                 _fallback_kernel())
    return ok


def _fallback_kernel() -> str:
    return "int8pack" if _INT8_MM is not None else "bf16"
