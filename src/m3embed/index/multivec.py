"""Multi-vector (ColBERT) part of the index: token vectors in memory-mapped segments, with compression.

Each ``add`` appends one immutable *segment*: the token vectors of a contiguous range of index
rows as one ``[T, D]`` payload plus ``offsets [n+1]`` (``mv.00003.*.npy``). Segments are written
straight into the index's staging directory, so building a large index never holds its vectors
in memory; reading a candidate's vectors touches only its rows of the memory map.

Codecs (bytes per token vector at D = 1024 in brackets):

* ``fp32`` [4096] — exact;
* ``fp16`` [2048] — half precision;
* ``int8`` [1024 + per-segment scale] — symmetric, one scale per dimension (``max |x_d| / 127``);
* ``residual`` [2 or 4 + D·nbits/8 + 4, 262 at 2 bits] — ColBERTv2/PLAID-style: the nearest of K
  spherical k-means centroids (``faiss.Kmeans``) plus the residual quantised to ``nbits`` per
  dimension with bucket cut-offs at the residual's quantiles and bucket values at their midpoints;
  decoded vectors are re-normalised (the last 4 bytes: each decoded vector's norm, so that search
  scores without re-normalising). Centroids and buckets are fitted once (at most ``kmeans_sample``
  vectors) and shared by every segment: on a sample drawn from the whole corpus when
  ``M3Index.build`` can (``codec_sample``) or the caller runs ``M3Index.fit_codec`` first, otherwise
  on the first ``add``. A codebook fitted on an unrepresentative first chunk (a corpus sorted by
  source or language) reconstructs that chunk better than the rest, and the noisier rest gains
  MaxSim: at 100k real passages whose first 2,048 were mostly Chinese, ColBERT re-ranking scored
  0.844 nDCG@10 (exact vectors 0.899; codebook from a corpus-wide sample 0.882).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..output import ColbertVectors
from ..scoring import maxsim_reduce

_BLOCK = 8192  # rows per block when encoding: bounds the temporaries to ~100 MB at D = 1024

CODECS = ("fp32", "fp16", "int8", "residual")
DEFAULTS: dict[str, Any] = {"codec": "fp16", "nbits": 2, "centroids": 1024, "kmeans_niter": 10,
                            "kmeans_sample": 1 << 17, "seed": 0}


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown multivec options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS, **opts)
    if out["codec"] not in CODECS:
        raise ValueError(f"multivec codec {out['codec']!r}: expected one of {CODECS} (or 'none' for no store)")
    if out["nbits"] not in (1, 2, 4, 8):
        raise ValueError(f"residual nbits must be 1, 2, 4 or 8, got {out['nbits']}")
    return out


@dataclass
class Segment:
    """Token vectors of rows ``start … start+n-1``; ``arrays`` hold the codec's payload."""

    number: int
    start: int
    offsets: np.ndarray  # [n+1] int64
    arrays: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def file(self, part: str) -> str:
        return f"mv.{self.number:05d}.{part}.npy"


@dataclass
class Prepared:
    """Token vectors of some rows, ready for MaxSim (:meth:`MultiVecStore.similarities`).

    Exact codecs and old residual segments: ``data`` holds the decoded unit vectors. Residual segments
    with stored norms: ``data`` holds only the decoded residuals ``r`` and the similarity of a query
    token ``q`` is ``(q·r + q·c) / |c + r|``, with ``q·c`` read from a ``[n_q, K]`` centroid table — two
    passes over ``[T, D]`` instead of the six a full decode and re-normalisation take.
    """

    data: np.ndarray  # [T, D] float32
    offsets: np.ndarray  # [C+1] int64
    codes: np.ndarray | None = None  # [T] int64 centroid ids
    inv_norm: np.ndarray | None = None  # [T] float32


class ResidualCodec:
    """Centroids ``[K, D]`` + bucket cut-offs ``[2^b - 1]`` and values ``[2^b]``; see the module doc."""

    def __init__(self, centroids: np.ndarray, cutoffs: np.ndarray, weights: np.ndarray, nbits: int) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._centroids_t = torch.from_numpy(np.array(self.centroids))  # a writable copy (memory maps are not)
        self.cutoffs = np.asarray(cutoffs, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.nbits = nbits
        per_byte = 8 // nbits
        # byte value → the per_byte bucket values it packs (lowest bits first)
        codes = (np.arange(256)[:, None] >> (nbits * np.arange(per_byte))[None, :]) & ((1 << nbits) - 1)
        self.lut = np.ascontiguousarray(self.weights[codes])  # [256, per_byte]
        size = 4 * per_byte  # the bucket values of one byte as a single item of that many bytes
        item = {4: np.float32, 8: np.float64, 16: np.complex128}.get(size, np.dtype(f"V{size}"))
        self._lut_items = self.lut.view(item).ravel()

    @classmethod
    def fit(cls, x: np.ndarray, *, k: int, nbits: int, niter: int, seed: int) -> ResidualCodec:
        """Spherical k-means centroids on ``x`` and residual buckets from (at most 2^22 of) its residuals."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        k = max(1, min(k, len(x) // 8 or 1))  # faiss wants ≥ ~39 points per centroid; tiny inputs get few
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 20)
        km.train(x)
        tmp = cls(km.centroids, np.zeros(0), np.zeros(1 << nbits), nbits)
        res = (x - tmp.centroids[tmp.assign(x)]).ravel()
        if len(res) > 1 << 22:  # quantiles of a sample: sorting every value would dominate the fit
            res = np.random.default_rng(seed).choice(res, 1 << 22, replace=False)
        levels = 1 << nbits
        cutoffs = np.quantile(res, np.arange(1, levels) / levels)
        weights = np.quantile(res, (np.arange(levels) + 0.5) / levels)
        return cls(km.centroids, cutoffs, weights, nbits)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid (largest inner product) of each row of ``x [T, D]`` → ``[T]`` int64."""
        out = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), _BLOCK):
            out[s : s + _BLOCK] = (np.asarray(x[s : s + _BLOCK], dtype=np.float32) @ self.centroids.T).argmax(1)
        return out

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Centroid ids ``[T]`` and packed residual codes ``[T, D·nbits/8]`` (blocks of rows, bounded memory)."""
        t, d = x.shape
        if (d * self.nbits) % 8:
            raise ValueError(f"residual codec: dim {d} × {self.nbits} bits is not a whole number of bytes")
        per_byte = 8 // self.nbits
        cdtype = np.uint16 if len(self.centroids) <= 1 << 16 else np.int32
        codes = np.empty(t, dtype=cdtype)
        packed = np.empty((t, d // per_byte), dtype=np.uint8)
        norms = np.empty(t, dtype=np.float32)
        for s in range(0, t, _BLOCK):
            xb = np.asarray(x[s : s + _BLOCK], dtype=np.float32)
            cb = (xb @ self.centroids.T).argmax(1)
            r = xb - self.centroids[cb]
            # bucket = number of cut-offs below the residual (np.searchsorted, side "left")
            q = np.zeros(r.shape, dtype=np.uint8)
            for c in self.cutoffs:
                q += r > c
            q = q.reshape(len(xb), d // per_byte, per_byte)
            byte = q[:, :, 0].copy()
            for j in range(1, per_byte):
                byte |= q[:, :, j] << (self.nbits * j)
            packed[s : s + len(xb)] = byte
            codes[s : s + len(xb)] = cb
            # norm of the decoded (centroid + bucket values) vector: lets search score q·(c + r) / |c + r|
            # from q·c (a [n_q, K] table) and q·r without materialising and re-normalising c + r
            norms[s : s + len(xb)] = np.linalg.norm(self.centroids[cb] + self.weights[q.reshape(len(xb), d)], axis=1)
        return {"codes": codes, "resid": packed, "norms": norms}

    def decode(self, codes: np.ndarray, packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[T, D]`` float32 unit vectors from centroid ids and packed residual codes (into ``out``)."""
        packed = np.asarray(packed)
        if out is None:
            out = np.empty((len(packed), self.centroids.shape[1]), dtype=np.float32)
        if len(packed) == 0:
            return out
        # one gather of whole byte patterns (all the bucket values a byte packs) beats a [.., per_byte] gather
        resid = torch.from_numpy(self._lut_items[packed].view(np.float32).reshape(len(packed), -1))
        # gather, add and normalise in torch: multi-threaded and vectorised, ~2-3× numpy's time here
        o = torch.from_numpy(out)
        torch.index_select(self._centroids_t, 0, torch.from_numpy(np.asarray(codes).astype(np.int64)), out=o)
        o.add_(resid)
        o.div_(torch.linalg.vector_norm(o, dim=1, keepdim=True).clamp_min_(1e-12))
        return out

    def decode_residual(self, packed: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The bucket values ``[T, D]`` float32 of packed residual codes (no centroid, not normalised)."""
        packed = np.asarray(packed)
        np.take(self._lut_items, packed, out=out.view(self._lut_items.dtype).reshape(packed.shape))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mv.centroids.npy": self.centroids, "mv.cutoffs.npy": self.cutoffs,
                "mv.bucket_weights.npy": self.weights}


def check_codec_sample(n: object) -> int:
    """``codec_sample`` (documents drawn to fit a residual codebook): a non-negative int, else ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"codec_sample must be a non-negative integer (documents), got {n!r}")
    return n


class MultiVecStore:
    """Segments of compressed token vectors; ``get(rows)`` decodes the vectors of some rows to float32."""

    def __init__(self, dim: int, options: dict[str, Any]) -> None:
        self.dim = dim
        self.opts = check_options(options)
        self.segments: list[Segment] = []
        self.residual: ResidualCodec | None = None
        self.codec_dirty = False
        self._scratch: np.ndarray | None = None
        self._lengths: tuple[tuple[int, ...], np.ndarray] | None = None

    @property
    def codec(self) -> str:
        return self.opts["codec"]

    def __len__(self) -> int:
        return sum(s.n for s in self.segments)

    @property
    def n_vectors(self) -> int:
        return int(sum(int(s.offsets[-1]) for s in self.segments))

    def nbytes(self) -> int:
        """Bytes of the payload (codes, scales, offsets, centroids)."""
        total = sum(a.nbytes for s in self.segments for a in s.arrays.values())
        total += sum(s.offsets.nbytes for s in self.segments)
        if self.residual is not None:
            total += sum(a.nbytes for a in self.residual.arrays().values())
        return int(total)

    @property
    def needs_fit(self) -> bool:
        """True for a residual store with no codebook yet (nothing added): ``fit`` may run now."""
        return self.codec == "residual" and self.residual is None and not self.segments

    # ------------------------------------------------------------------ writing
    def fit(self, data: np.ndarray, *, what: str = "the sample") -> None:
        """Fit the residual codec (centroids and buckets) on token vectors ``data [T, D]`` (at most
        ``kmeans_sample`` of them, drawn at random). Only before the first segment exists: later
        segments must share the codec of the earlier ones."""
        if self.codec != "residual":
            raise ValueError(f"only the residual codec is fitted; this store uses {self.codec!r}")
        if self.segments:
            raise ValueError("the residual codec is fitted before the first add; this store already holds "
                             f"{len(self.segments)} segment(s) encoded with its codec")
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"ColBERT vectors of shape {data.shape}; this index holds {self.dim}-d vectors")
        o = self.opts
        rng = np.random.default_rng(o["seed"])
        sample = data if len(data) <= o["kmeans_sample"] else data[
            np.sort(rng.choice(len(data), o["kmeans_sample"], replace=False))]
        if len(sample) == 0:
            raise ValueError(f"residual codec: {what} has no ColBERT vectors to fit centroids on")
        self.residual = ResidualCodec.fit(sample, k=o["centroids"], nbits=o["nbits"], niter=o["kmeans_niter"],
                                          seed=o["seed"])
        self.codec_dirty = True

    def encode(self, cv: ColbertVectors, start: int, number: int) -> Segment:
        """Compress ``cv`` into a new segment for rows ``start …`` (not yet attached)."""
        data = np.asarray(cv.data)
        if data.ndim != 2 or (len(data) and data.shape[1] != self.dim):
            raise ValueError(f"ColBERT vectors of shape {data.shape}; this index holds {self.dim}-d vectors")
        data = data.reshape(-1, self.dim)
        codec = self.codec
        if codec == "fp32":
            arrays = {"data": np.ascontiguousarray(data, dtype=np.float32)}
        elif codec == "fp16":
            arrays = {"data": data.astype(np.float16)}
        elif codec == "int8":
            top = np.zeros(self.dim, np.float32)
            for s in range(0, len(data), _BLOCK):  # blocks: no full-size float temporaries
                np.maximum(top, np.abs(data[s : s + _BLOCK]).max(axis=0), out=top)
            scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
            codes = np.empty(data.shape, dtype=np.int8)
            for s in range(0, len(data), _BLOCK):
                codes[s : s + _BLOCK] = np.clip(np.rint(data[s : s + _BLOCK] / scale), -127, 127)
            arrays = {"data": codes, "scale": scale}
        else:
            if self.residual is None:
                self.fit(data, what="the first add")
            arrays = self.residual.encode(data) if len(data) else {
                "codes": np.zeros(0, np.uint16), "resid": np.zeros((0, self.dim * self.opts["nbits"] // 8), np.uint8),
                "norms": np.zeros(0, np.float32)}
        return Segment(number, start, np.asarray(cv.offsets, dtype=np.int64), arrays)

    def attach(self, seg: Segment) -> None:
        if seg.start != len(self):
            raise ValueError(f"segment starts at row {seg.start}, the store has {len(self)} rows")
        self.segments.append(seg)

    def next_number(self) -> int:
        return max((s.number for s in self.segments), default=-1) + 1

    # ------------------------------------------------------------------ reading
    def get(self, rows: np.ndarray, *, scratch: bool = False) -> ColbertVectors:
        """Decoded float32 vectors of ``rows`` (in that order) as a packed ``ColbertVectors``.

        Sorted ``rows`` are decoded straight into the output (one pass over the memory map).
        ``scratch=True`` decodes into a buffer the store keeps and reuses, so the result is only
        valid until the next such call: fresh 100 MB allocations cost more than the decoding on
        VMs where each new page faults (search re-ranking uses it).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return ColbertVectors(np.zeros((0, self.dim), np.float32), np.zeros(1, np.int64))
        seg_of, lengths = self._locate(rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out = self._buffer(int(offsets[-1]), scratch)
        if self.codec == "int8":  # per-segment scales: decoded segment by segment
            for si in np.unique(seg_of):
                seg = self.segments[int(si)]
                pos = np.flatnonzero(seg_of == si)
                local = rows[pos] - seg.start
                take = _ranges(seg.offsets[local], seg.offsets[local + 1])
                if pos[-1] - pos[0] + 1 == len(pos):  # a contiguous block of the output
                    self._decode(seg, take, out[offsets[pos[0]] : offsets[pos[-1] + 1]])
                else:
                    out[_ranges(offsets[pos], offsets[pos + 1])] = self._decode(seg, take, None)
        else:
            # the payload of every segment is gathered first and decoded in one pass: a search's
            # candidates are spread over many segments, and a few large torch ops cost far less than
            # a few small ones per segment (each small op pays thread start-up, ~ms on a busy machine)
            keys = ("codes", "resid") if self.codec == "residual" else ("data",)  # (residual norms: prepare)
            parts, _ = self._gather(rows, lambda seg, take: tuple(seg.arrays[k][take] for k in keys))
            self._decode_payload(dict(zip(keys, parts, strict=True)), out)
        return ColbertVectors(out, offsets)

    def prepare(self, rows: np.ndarray, *, scratch: bool = False) -> Prepared:
        """Token vectors of ``rows`` (in that order) for :meth:`similarities`: residual segments that
        store norms skip the centroid add and re-normalisation (see :class:`Prepared`); otherwise
        :meth:`get`. ``scratch`` as in :meth:`get`."""
        rows = np.asarray(rows, dtype=np.int64)
        fast = self.codec == "residual" and len(rows) > 0 and all("norms" in s.arrays for s in self.segments)
        if not fast:
            cv = self.get(rows, scratch=scratch)
            return Prepared(cv.data, cv.offsets)
        assert self.residual is not None
        (codes, resid, norms), offsets = self._gather(
            rows, lambda seg, take: (seg.arrays["codes"][take], seg.arrays["resid"][take], seg.arrays["norms"][take]))
        out = self._buffer(len(codes), scratch)
        self.residual.decode_residual(resid, out)
        return Prepared(out, offsets, codes.astype(np.int64), 1.0 / np.maximum(norms, np.float32(1e-12)))

    def similarities(self, q: np.ndarray, pv: Prepared) -> np.ndarray:
        """``[n_q, T]`` float32 similarities of query token vectors ``q [n_q, D]`` to prepared vectors."""
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        sim = qt @ torch.from_numpy(pv.data).T
        if pv.codes is not None:
            assert self.residual is not None
            table = qt @ self.residual._centroids_t.T  # [n_q, K]
            sim += torch.index_select(table, 1, torch.from_numpy(pv.codes))
            sim *= torch.from_numpy(pv.inv_norm)
        return sim.numpy()

    def _buffer(self, total: int, scratch: bool) -> np.ndarray:
        """A ``[total, D]`` float32 output: the reused scratch buffer, or a new array."""
        if not scratch:
            return np.empty((total, self.dim), dtype=np.float32)
        if self._scratch is None or len(self._scratch) < total:
            grown = int(1.5 * (0 if self._scratch is None else len(self._scratch)))
            self._scratch = np.empty((max(total, grown), self.dim), np.float32)
        return self._scratch[:total]

    def lengths(self) -> np.ndarray:
        """Token-vector count of every row ``[len(self)]`` (int64; cached until segments change)."""
        key = tuple(id(s) for s in self.segments)
        if self._lengths is None or self._lengths[0] != key:
            per = [np.diff(np.asarray(s.offsets, dtype=np.int64)) for s in self.segments]
            self._lengths = (key, np.concatenate(per) if per else np.zeros(0, np.int64))
        return self._lengths[1]

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment index and vector count of each row."""
        starts = np.array([s.start for s in self.segments], dtype=np.int64)
        seg_of = np.searchsorted(starts, rows, side="right") - 1
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0 … {len(self) - 1}")
        lengths = np.empty(len(rows), dtype=np.int64)
        for si in np.unique(seg_of):
            seg = self.segments[int(si)]
            pos = np.flatnonzero(seg_of == si)
            local = rows[pos] - seg.start
            lengths[pos] = seg.offsets[local + 1] - seg.offsets[local]
        return seg_of, lengths

    def approx_scores(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Residual codec only: MaxSim of ``q [n_q, D]`` against each row's *centroids* → ``[len(rows)]``.

        PLAID's first stage: reads 2 bytes per token vector (its centroid id) instead of decoding it.
        """
        if self.residual is None:
            raise ValueError("approximate scores need the residual codec")
        table = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)) @ self.residual._centroids_t.T  # [n_q, K]
        (codes,), offsets = self._gather(rows, lambda seg, take: (seg.arrays["codes"][take],))
        sim = torch.index_select(table, 1, torch.from_numpy(codes.astype(np.int64)))  # threaded, unlike NumPy's
        return maxsim_reduce(sim.numpy(), offsets)

    def _gather(self, rows: np.ndarray, read) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """``read(segment, vector indices)`` → a tuple of per-vector arrays, for the vectors of ``rows``
        (in order), concatenated over segments → (arrays, offsets)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.array([s.start for s in self.segments], dtype=np.int64)
        seg_of = np.searchsorted(starts, rows, side="right") - 1
        lengths = np.zeros(len(rows), dtype=np.int64)
        pieces = []
        for si in np.unique(seg_of):
            seg = self.segments[int(si)]
            pos = np.flatnonzero(seg_of == si)
            local = rows[pos] - seg.start
            a, b = seg.offsets[local], seg.offsets[local + 1]
            lengths[pos] = b - a
            pieces.append((pos, read(seg, _ranges(a, b))))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if len(pieces) == 1 and np.array_equal(pieces[0][0], np.arange(len(rows))):
            return tuple(np.asarray(v) for v in pieces[0][1]), offsets
        total = int(offsets[-1])
        in_order = bool(np.all(np.diff(seg_of) >= 0))
        outs = []
        for j in range(len(pieces[0][1]) if pieces else 0):
            first = pieces[0][1][j]
            arr = np.empty((total, *first.shape[1:]), dtype=first.dtype)
            if in_order:  # each segment's rows are one block, blocks in segment order: plain concatenation
                np.concatenate([p[1][j] for p in pieces], out=arr)
            else:
                for pos, vals in pieces:
                    arr[_ranges(offsets[pos], offsets[pos + 1])] = vals[j]
            outs.append(arr)
        return tuple(outs), offsets

    def _decode_payload(self, arrays: dict[str, np.ndarray], out: np.ndarray) -> None:
        """Decode gathered fp32 / fp16 / residual payload rows into ``out [T, D]`` float32."""
        if self.codec == "fp32":
            out[...] = arrays["data"]
        elif self.codec == "fp16":
            # torch's vectorised fp16 → fp32 cast runs ~5× faster than numpy's
            torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(arrays["data"])))
        else:
            assert self.residual is not None
            self.residual.decode(arrays["codes"], arrays["resid"], out=out)

    def _decode(self, seg: Segment, take: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """int8 codec: float32 vectors of segment rows ``take`` (sorted: each page is read once)."""
        a = seg.arrays
        if out is None:
            out = np.empty((len(take), self.dim), dtype=np.float32)
        # through torch: its vectorised int8 → fp32 cast runs ~5× faster than numpy's
        o = torch.from_numpy(out)
        o.copy_(torch.from_numpy(np.ascontiguousarray(a["data"][take])))
        o.mul_(torch.from_numpy(np.array(a["scale"], dtype=np.float32)))  # a copy: memory maps are read-only
        return out

    # ------------------------------------------------------------------ persistence
    def segment_files(self, seg: Segment) -> dict[str, np.ndarray]:
        files = {seg.file("offsets"): seg.offsets}
        files.update({seg.file(k): v for k, v in seg.arrays.items()})
        return files

    def describe(self) -> list[dict[str, Any]]:
        return [{"number": s.number, "start": s.start, "rows": s.n, "vectors": int(s.offsets[-1]),
                 "parts": sorted(s.arrays)} for s in self.segments]

    @classmethod
    def load(cls, dim: int, options: dict[str, Any], segments: list[dict[str, Any]], gen_dir: Path,
             load_array) -> MultiVecStore:
        store = cls(dim, options)
        if store.codec == "residual" and segments:
            store.residual = ResidualCodec(
                load_array(gen_dir, "mv.centroids.npy"), load_array(gen_dir, "mv.cutoffs.npy"),
                load_array(gen_dir, "mv.bucket_weights.npy"), store.opts["nbits"])
        for d in segments:
            seg = Segment(int(d["number"]), int(d["start"]), None, {})  # type: ignore[arg-type]
            seg.offsets = np.asarray(load_array(gen_dir, seg.file("offsets")), dtype=np.int64)
            seg.arrays = {p: load_array(gen_dir, seg.file(p)) for p in d["parts"]}
            if seg.n != d["rows"] or int(seg.offsets[-1]) != d["vectors"]:
                raise ValueError(f"multivec segment {seg.number}: {seg.n} rows / {int(seg.offsets[-1])} vectors, "
                                 f"the manifest says {d['rows']} / {d['vectors']}")
            for p, arr in seg.arrays.items():
                if p != "scale" and len(arr) != d["vectors"]:
                    raise ValueError(f"multivec segment {seg.number}: {seg.file(p)} has {len(arr)} rows, "
                                     f"expected {d['vectors']}")
            store.segments.append(seg)
        return store

    def keep_rows(self, rows: np.ndarray, first_number: int) -> list[Segment]:
        """Rebuild the segments keeping only ``rows`` (sorted, global); returns the new segments."""
        new: list[Segment] = []
        starts = np.array([s.start for s in self.segments], dtype=np.int64)
        seg_of = np.searchsorted(starts, rows, side="right") - 1
        next_start = 0
        for si, seg in enumerate(self.segments):
            local = rows[seg_of == si] - seg.start
            if len(local) == 0:
                continue
            a, b = seg.offsets[local], seg.offsets[local + 1]
            take = _ranges(a, b)
            arrays = {k: (np.asarray(v[take]) if k != "scale" else np.asarray(v)) for k, v in seg.arrays.items()}
            offsets = np.concatenate([[0], np.cumsum(b - a)]).astype(np.int64)
            new.append(Segment(first_number + len(new), next_start, offsets, arrays))
            next_start += len(local)
        self.segments = new
        return new


def _ranges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(a[i], b[i])`` for all i (vectorised)."""
    lens = (b - a).astype(np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(a - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return shift + np.arange(total, dtype=np.int64)
