"""M3Output: the three representations of N texts, stored flat and converted on demand.

Lexical weights are held CSR-style (``indptr`` / token ids / weights, ids of each text in
first-occurrence order) and ColBERT vectors as one ``[T, D]`` matrix with row offsets, so that
``to_csr()`` and per-text access are views or single allocations, not N Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class LexicalWeights:
    """Sparse token weights of N texts: text ``i`` owns ``ids[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray  # [N+1] int64
    ids: np.ndarray  # [nnz] int64 token ids, unique per text, first-occurrence order
    weights: np.ndarray  # [nnz] float32, all > 0
    vocab_size: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, weights) of text ``i``."""
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.ids[a:b], self.weights[a:b]

    def to_dicts(self, *, str_keys: bool = True) -> list[dict]:
        """One ``{token id: weight}`` dict per text (keys ``str`` as the reference, or ``int``)."""
        out = []
        for i in range(len(self)):
            ids, w = self.row(i)
            keys = [str(t) for t in ids.tolist()] if str_keys else ids.tolist()
            out.append(dict(zip(keys, w.tolist(), strict=True)))
        return out

    def to_csr(self) -> sp.csr_matrix:
        """``scipy.sparse.csr_matrix`` of shape ``[N, vocab_size]`` (float32; columns sorted)."""
        # copies: sort_indices() works in place and must not reorder our first-occurrence arrays
        m = sp.csr_matrix((self.weights.copy(), self.ids.copy(), self.indptr.copy()),
                          shape=(len(self), self.vocab_size))
        m.sort_indices()
        return m

    @classmethod
    def concat(cls, parts: list[LexicalWeights]) -> LexicalWeights:
        offs = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offs, strict=True)])
        return cls(indptr.astype(np.int64), np.concatenate([p.ids for p in parts]),
                   np.concatenate([p.weights for p in parts]), parts[0].vocab_size)


@dataclass
class ColbertVectors:
    """ColBERT matrices of N texts: text ``i`` owns rows ``offsets[i]:offsets[i+1]`` of ``data``."""

    data: np.ndarray  # [T, D] float32, unit rows
    offsets: np.ndarray  # [N+1] int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def to_list(self) -> list[np.ndarray]:
        """One ``[n_i - 1, D]`` view per text (every real token but the leading [CLS])."""
        return list(self)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """(``[N, Lmax, D]`` zero-padded vectors, ``[N, Lmax]`` bool mask)."""
        n, lmax = len(self), int(self.lengths.max(initial=0))
        out = np.zeros((n, lmax, self.data.shape[1]), dtype=self.data.dtype)
        mask = np.arange(lmax)[None, :] < self.lengths[:, None]
        out[mask] = self.data
        return out, mask

    @classmethod
    def concat(cls, parts: list[ColbertVectors]) -> ColbertVectors:
        offs = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + o for p, o in zip(parts, offs, strict=True)])
        return cls(np.concatenate([p.data for p in parts]), offsets.astype(np.int64))


@dataclass
class M3Output:
    """Dense, lexical and ColBERT outputs of N texts; a representation not asked for is ``None``.

    ``out["dense_vecs"]``, ``out["lexical_weights"]`` and ``out["colbert_vecs"]`` give the
    reference's containers (``[N, H]`` array, list of ``{str id: float}``, list of arrays).
    """

    dense: np.ndarray | None = None  # [N, H] float32, unit rows
    lexical: LexicalWeights | None = None
    colbert: ColbertVectors | None = None
    n_tokens: np.ndarray | None = None  # [N] tokens fed to the model per text (incl. specials)
    single: bool = False  # the input was one str: reference containers unwrap to one item

    def __len__(self) -> int:
        for x in (self.dense, self.lexical, self.colbert, self.n_tokens):
            if x is not None:
                return len(x)
        return 0

    @property
    def dense_vecs(self) -> np.ndarray | None:
        if self.dense is None:
            return None
        return self.dense[0] if self.single else self.dense

    @property
    def lexical_weights(self) -> list[dict[str, float]] | dict[str, float] | None:
        if self.lexical is None:
            return None
        dicts = self.lexical.to_dicts()
        return dicts[0] if self.single else dicts

    @property
    def colbert_vecs(self) -> list[np.ndarray] | np.ndarray | None:
        if self.colbert is None:
            return None
        return self.colbert[0] if self.single else self.colbert.to_list()

    def sparse_csr(self) -> sp.csr_matrix:
        """Lexical weights as an ``[N, vocab]`` CSR matrix."""
        if self.lexical is None:
            raise ValueError("this output has no lexical weights (encode with return_sparse=True)")
        return self.lexical.to_csr()

    def __getitem__(self, key: str) -> object:
        if key in ("dense_vecs", "lexical_weights", "colbert_vecs"):
            return getattr(self, key)
        raise KeyError(f"{key!r}: expected 'dense_vecs', 'lexical_weights' or 'colbert_vecs'")

    def keys(self) -> list[str]:
        return ["dense_vecs", "lexical_weights", "colbert_vecs"]

    @classmethod
    def concat(cls, parts: list[M3Output]) -> M3Output:
        """Join outputs of consecutive chunks (same representations) into one."""
        if not parts:
            return cls()
        first = parts[0]
        return cls(
            dense=np.concatenate([p.dense for p in parts]) if first.dense is not None else None,
            lexical=LexicalWeights.concat([p.lexical for p in parts]) if first.lexical is not None else None,
            colbert=ColbertVectors.concat([p.colbert for p in parts]) if first.colbert is not None else None,
            n_tokens=np.concatenate([p.n_tokens for p in parts]) if first.n_tokens is not None else None,
        )
