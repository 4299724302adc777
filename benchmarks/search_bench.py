"""Search benchmark: M3Index latency per mode, sparse / dense vs brute force, multi-vector codecs.

Synthetic passages shaped like BGE-M3's outputs (sizes configurable):

* dense — unit vectors of ``--dim`` (1024): the passage's token prototypes weighted by its sparse
  weights, plus noise (so that neighbours exist, as in real embeddings);
* sparse — ``--nnz`` (60) distinct token ids per passage drawn from a Zipf law over ``--vocab``
  (250002) ids, weights in (0, 0.4] that shrink for frequent ids (as learned weights do);
* ColBERT — ``--tokens`` (~150, ±50 %) unit vectors of ``--dim`` per passage: the direction of
  one of 8192 "token type" prototypes (picked by the Zipf token id) plus noise, so vectors
  cluster the way real token vectors do (this is what residual compression relies on).

Queries (``--queries``) are built around a random target passage (noisy copy of its dense
vector, half of its token ids, 24 ColBERT vectors). Query encoding is excluded from every
latency: search gets pre-encoded ``M3Output`` queries, one per call (``k`` = 10).

Reported: p50 / p95 latency per mode for the ``--n`` index (flat and HNSW dense), sparse top-k
(MaxScore, term-at-a-time) vs scipy (``lexical_scores`` = ``Q @ D.T`` and a pre-transposed ``D.T``), faiss flat vs
NumPy brute force, HNSW recall, quantised impacts, pyseismic-lsr if installed, build throughput
(passages/s without generation) and peak RSS; then at ``--codec-n`` passages, per multi-vector
codec: bytes per passage, encode speed, re-rank latency of 200 candidates, overlap@10 and score
deviation against fp32. ``--real`` adds the same codec comparison on vectors from a small random
checkpoint over real passages (shared/data/xquad_r).

    python benchmarks/search_bench.py                    # 100k passages (≈ 10 min on 2 cores)
    python benchmarks/search_bench.py --n 20000 --codec-n 5000 --queries 50   # quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

N_PROTOS = 8192


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, p))


# ---------------------------------------------------------------------------- synthetic data
class Synth:
    """Seeded generator of passages and queries (see the module doc)."""

    def __init__(self, dim: int, vocab: int, nnz: int, tokens: int, seed: int = 0) -> None:
        import torch

        self.dim, self.vocab, self.nnz, self.tokens = dim, vocab, nnz, tokens
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(1, vocab - 3, dtype=np.float64)
        p = 1.0 / (ranks + 2.0) ** 1.05
        self.cdf = np.cumsum(p) / p.sum()
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(N_PROTOS, dim, generator=g)
        self.protos = torch.nn.functional.normalize(protos, dim=-1)
        self.noise = torch.randn(1 << 16, dim, generator=g) / np.sqrt(dim)
        self.tok_proto = torch.from_numpy(self.rng.integers(0, N_PROTOS, vocab))

    def zipf_ids(self, n: int) -> np.ndarray:
        return 4 + np.searchsorted(self.cdf, self.rng.random(n))  # ids 0-3 are specials

    def weights_for(self, ids: np.ndarray) -> np.ndarray:
        rarity = np.log1p(ids) / np.log(self.vocab)  # frequent (small) ids get smaller weights
        return (self.rng.uniform(0.05, 0.4, len(ids)) * (0.25 + 0.75 * rarity)).astype(np.float32)

    def sparse(self, n: int, nnz: int | np.ndarray):
        from m3embed.output import LexicalWeights

        counts = np.full(n, nnz) if np.isscalar(nnz) else np.asarray(nnz)
        draw = self.zipf_ids(int(counts.sum() * 1.6) + 16)
        rows, ids, pos = [], [], 0
        for c in counts:
            u = np.unique(draw[pos : pos + int(c * 1.6)])[: int(c)]
            pos += int(c * 1.6)
            self.rng.shuffle(u)
            ids.append(u)
            rows.append(len(u))
        ids_a = np.concatenate(ids).astype(np.int64)
        return LexicalWeights(np.concatenate([[0], np.cumsum(rows)]).astype(np.int64), ids_a,
                              self.weights_for(ids_a), self.vocab)

    def noise_vectors(self, n: int) -> np.ndarray:
        x = self.rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def dense(self, lex) -> np.ndarray:
        """Unit vectors with the structure of real embeddings: the weighted sum of the passage's token
        prototypes plus 30 % noise, so that passages sharing terms are near each other (random unit
        vectors in 1024-d are all nearly orthogonal, which no graph or cluster index can search)."""
        import scipy.sparse as sp

        w = sp.csr_matrix((lex.weights, self.tok_proto.numpy()[lex.ids], lex.indptr), shape=(len(lex), N_PROTOS))
        x = np.asarray(w @ self.protos.numpy(), dtype=np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x += 0.3 * self.noise_vectors(len(x))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def colbert(self, n: int, lengths: np.ndarray | None = None, noise: float = 0.75):
        import torch

        from m3embed.output import ColbertVectors

        if lengths is None:
            lengths = self.rng.integers(self.tokens // 2, self.tokens * 3 // 2 + 1, n)
        total = int(lengths.sum())
        toks = torch.from_numpy(self.zipf_ids(total))
        nz = torch.from_numpy(self.rng.integers(0, len(self.noise), total))
        out = torch.empty(total, self.dim)
        for s in range(0, total, 1 << 16):  # blocks: bounded temporaries
            x = out[s : s + (1 << 16)]
            torch.index_select(self.protos, 0, self.tok_proto[toks[s : s + len(x)]], out=x)
            x.add_(self.noise[nz[s : s + len(x)]], alpha=noise)
            x.div_(x.norm(dim=-1, keepdim=True))
        return ColbertVectors(out.numpy(), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def passages(self, n: int, colbert: bool = True):
        from m3embed.output import M3Output

        lex = self.sparse(n, self.nnz)
        return M3Output(dense=self.dense(lex), lexical=lex, colbert=self.colbert(n) if colbert else None)

    def queries(self, docs_dense: np.ndarray, docs_lex, n: int, targets: np.ndarray):
        from m3embed.output import LexicalWeights, M3Output

        d = docs_dense[targets] + self.noise_vectors(n) * 0.9
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        rows, ids = [], []
        for t in targets:
            own, _ = docs_lex.row(int(t))
            pick = self.rng.choice(own, min(6, len(own)), replace=False)
            u = np.unique(np.concatenate([pick, self.zipf_ids(6)]))
            ids.append(u)
            rows.append(len(u))
        ids_a = np.concatenate(ids).astype(np.int64)
        lex = LexicalWeights(np.concatenate([[0], np.cumsum(rows)]).astype(np.int64), ids_a,
                             self.weights_for(ids_a), self.vocab)
        col = self.colbert(n, np.full(n, 24))
        return M3Output(dense=d.astype(np.float32), lexical=lex, colbert=col)


def take(q, i: int):
    """Query ``i`` of an M3Output as a one-query M3Output (views, no copies)."""
    from m3embed.output import ColbertVectors, LexicalWeights, M3Output

    a, b = q.lexical.indptr[i], q.lexical.indptr[i + 1]
    lex = LexicalWeights(np.array([0, b - a], np.int64), q.lexical.ids[a:b], q.lexical.weights[a:b],
                         q.lexical.vocab_size)
    c0, c1 = q.colbert.offsets[i], q.colbert.offsets[i + 1]
    return M3Output(dense=q.dense[i : i + 1], lexical=lex,
                    colbert=ColbertVectors(q.colbert.data[c0:c1], np.array([0, c1 - c0], np.int64)))


def timed(fn, reps: int) -> list[float]:
    out = []
    for r in range(reps):
        t = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t)
    return out


# ---------------------------------------------------------------------------- large index
def bench_large(args, synth: Synth, work: Path, report: dict) -> None:
    from m3embed.index import M3Index

    n = args.n
    fp = {"name": "synthetic", "hash": "", "hidden_size": args.dim, "colbert_dim": args.dim, "vocab_size": args.vocab}
    root = work / f"large-{n}"
    if args.reuse and (root / "manifest.json").is_file():
        print(f"reusing {root} (build numbers are those of the run that built it)", flush=True)
        report["build"] = {"reused": str(root)}
        return _search_part(args, synth, root, report)
    shutil.rmtree(root, ignore_errors=True)
    idx = M3Index.create(root, fp, multivec=args.large_codec, centroids=args.centroids, nbits=args.nbits,
                         kmeans_sample=args.kmeans_sample, store_text=False)
    gen_s = add_s = 0.0
    chunk = args.chunk
    print(f"building {n:,} passages ({args.large_codec} token vectors) in chunks of {chunk} …", flush=True)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        t = time.perf_counter()
        out = synth.passages(m)
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        idx.add([f"p{i}" for i in range(s, s + m)], out)
        add_s += time.perf_counter() - t
        del out
        if (s // chunk) % 10 == 0:
            print(f"  {s + m:,} added ({add_s:.0f} s adding, {gen_s:.0f} s generating, "
                  f"peak RSS {rss_peak_mib():,.0f} MiB)", flush=True)
    t = time.perf_counter()
    idx.save()
    save_s = time.perf_counter() - t
    gc.collect()
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    mv_bytes = idx.multivec.nbytes()
    report["build"] = {
        "passages": n, "multivec_codec": args.large_codec, "generate_s": gen_s, "add_s": add_s, "save_s": save_s,
        "passages_per_s": n / (add_s + save_s), "peak_rss_mib": rss_peak_mib(), "disk_mib": disk / 2**20,
        "token_vectors": idx.multivec.n_vectors, "multivec_bytes_per_passage": mv_bytes / n,
        "fp32_bytes_per_passage": idx.multivec.n_vectors * args.dim * 4 / n,
        "sparse_nnz_per_passage": idx.sparse.nnz / n,
    }
    print(json.dumps(report["build"], indent=1), flush=True)
    _dump(args, report)
    idx.close()
    _search_part(args, synth, root, report)


def _search_part(args, synth: Synth, root: Path, report: dict) -> None:
    import faiss

    from m3embed.index import M3Index
    from m3embed.index.dense import DenseIndex

    n = args.n

    t = time.perf_counter()
    idx = M3Index.open(root, verify=args.verify, in_memory=args.in_memory)
    report["build"]["open_s"] = time.perf_counter() - t
    report["build"]["open_verified"] = args.verify
    report["build"]["open_in_memory"] = args.in_memory
    rng = np.random.default_rng(1)
    targets = rng.integers(0, n, args.queries)
    qs = synth.queries(np.asarray(idx.dense.vectors), _lex_of(idx), args.queries, targets)
    nq = args.queries
    one = [take(qs, i) for i in range(nq)]

    # ------------------------------------------------------------------ latency per mode (flat dense)
    idx.search(one[0], k=10, mode="dense")  # builds the flat faiss index (copy of the vectors)
    modes = ["dense", "sparse", "multivec", "dense+sparse", "all", "rrf"]
    lat: dict[str, dict] = {}
    for mode in modes:
        idx.search(one[0], k=10, mode=mode)
        ts = timed(lambda r, mode=mode: idx.search(one[r], k=10, mode=mode), nq)
        lat[f"{mode} (flat)"] = {"p50_ms": pct(ts, 50), "p95_ms": pct(ts, 95)}
        print(f"  {mode:13s} flat  p50 {pct(ts, 50):7.2f} ms  p95 {pct(ts, 95):7.2f} ms", flush=True)
    t = time.perf_counter()
    batch_res = idx.search(qs, k=10, mode="all")
    lat["all (flat, batch of all queries)"] = {"per_query_ms": (time.perf_counter() - t) * 1e3 / nq}

    # ------------------------------------------------------------------ HNSW dense
    vecs = np.asarray(idx.dense.vectors)
    if args.no_hnsw:  # a quick re-measure: no HNSW build (minutes at 100k) and no pyseismic build
        report["latency"] = lat
        return _dense_sparse_part(args, idx, qs, one, vecs, None, report, root)
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(vecs)
    hnsw_build = time.perf_counter() - t
    flat_dense = idx.dense
    idx.dense = DenseIndex(args.dim, {"kind": "hnsw", "ef_search": args.ef_search}, flat_dense.vectors, hnsw)
    for mode in ["dense", "multivec", "dense+sparse", "all", "rrf"]:
        idx.search(one[0], k=10, mode=mode)
        ts = timed(lambda r, mode=mode: idx.search(one[r], k=10, mode=mode), nq)
        lat[f"{mode} (hnsw)"] = {"p50_ms": pct(ts, 50), "p95_ms": pct(ts, 95)}
        print(f"  {mode:13s} hnsw  p50 {pct(ts, 50):7.2f} ms  p95 {pct(ts, 95):7.2f} ms", flush=True)
    for cd in (16, 32):  # fewer candidates decompressed after the centroid-only stage
        ts = timed(lambda r, cd=cd: idx.search(one[r], k=10, mode="all", colbert_depth=cd), nq)
        lat[f"all (hnsw, colbert_depth={cd})"] = {"p50_ms": pct(ts, 50), "p95_ms": pct(ts, 95)}
        print(f"  all colbert_depth={cd} hnsw  p50 {pct(ts, 50):7.2f} ms  p95 {pct(ts, 95):7.2f} ms", flush=True)
    hnsw_all = idx.search(qs, k=10, mode="all")
    same = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(hnsw_all, batch_res, strict=True)])
    report["hnsw"] = {"build_s": hnsw_build, "ef_search": args.ef_search, "ef_construction": args.ef_construction,
                      "all_overlap@10_vs_flat": float(same)}
    _dump(args, report)
    idx.dense = flat_dense
    report["latency"] = lat
    _dense_sparse_part(args, idx, qs, one, vecs, hnsw, report, root)


def _dense_sparse_part(args, idx, qs, one, vecs, hnsw, report: dict, root: Path) -> None:
    import scipy.sparse as sp

    from m3embed.index.sparse import SparseIndex
    from m3embed.scoring import lexical_scores

    nq = args.queries
    # ------------------------------------------------------------------ dense vs numpy brute force
    flat_index = idx.dense._index()
    qd = qs.dense

    def np_dense(r):
        s = vecs @ qd[r]
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    ts_np = timed(np_dense, nq)
    ts_faiss = timed(lambda r: flat_index.search(qd[r : r + 1], 10), nq)
    _, exact = flat_index.search(qd, 10)
    if hnsw is not None:
        ts_hnsw = timed(lambda r: hnsw.search(qd[r : r + 1], 10), nq)
        _, approx = hnsw.search(qd, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    else:
        ts_hnsw, recall = [float("nan")], float("nan")
    t = time.perf_counter()
    flat_index.search(qd, 10)
    faiss_batch = (time.perf_counter() - t) / nq
    t = time.perf_counter()
    s = qd @ vecs.T
    np.argpartition(-s, 10, axis=1)
    np_batch = (time.perf_counter() - t) / nq
    report["dense"] = {"faiss_flat_p50_ms": pct(ts_faiss, 50), "numpy_p50_ms": pct(ts_np, 50),
                       "faiss_hnsw_p50_ms": pct(ts_hnsw, 50), "hnsw_recall@10": float(recall),
                       "faiss_flat_batch_per_query_ms": faiss_batch * 1e3, "numpy_batch_per_query_ms": np_batch * 1e3,
                       "speedup_flat_vs_numpy": pct(ts_np, 50) / pct(ts_faiss, 50)}
    print("  dense:", json.dumps(report["dense"]), flush=True)

    # ------------------------------------------------------------------ sparse vs scipy brute force
    sparse = idx.sparse
    D = sparse.forward
    t = time.perf_counter()
    DT = sp.csr_matrix(D.T)  # pre-transposed once (what an inverted index is)
    transpose_s = time.perf_counter() - t
    qcsr = qs.lexical.to_csr()

    def scipy_core(r):  # the core's lexical_scores(Q, D) = Q @ D.T, then top-k
        s = lexical_scores(qcsr[r], D)[0]
        return np.argpartition(-s, 10)[:10]

    def scipy_pre(r):
        s = (qcsr[r] @ DT).toarray()[0]
        return np.argpartition(-s, 10)[:10]

    sparse.search(one[0].lexical, 10, None)
    ts_taat = timed(lambda r: sparse.search(one[r].lexical, 10, None, algorithm="taat"), nq)
    ts_maxscore = timed(lambda r: sparse.search(one[r].lexical, 10, None, algorithm="maxscore"), nq)
    same = all(a[0].tolist() == b[0].tolist() for a, b in zip(
        sparse.search(qs.lexical, 10, None, algorithm="maxscore", batch_threshold=1 << 30),
        sparse.search(qs.lexical, 10, None, algorithm="taat", batch_threshold=1 << 30), strict=True))
    ts_core = timed(scipy_core, min(nq, 30))
    ts_pre = timed(scipy_pre, nq)
    t = time.perf_counter()
    sparse.search(qs.lexical, 10, None)
    taat_batch = (time.perf_counter() - t) / nq
    t = time.perf_counter()
    s = lexical_scores(qcsr, D)
    np.argpartition(-s, 10, axis=1)
    core_batch = (time.perf_counter() - t) / nq
    pi = sparse.inverted()[0]
    post = [int((pi[one[r].lexical.ids + 1] - pi[one[r].lexical.ids]).sum()) for r in range(nq)]
    report["sparse"] = {
        "taat_p50_ms": pct(ts_taat, 50), "taat_p95_ms": pct(ts_taat, 95),
        "maxscore_p50_ms": pct(ts_maxscore, 50), "maxscore_p95_ms": pct(ts_maxscore, 95),
        "maxscore_speedup_vs_taat": pct(ts_taat, 50) / pct(ts_maxscore, 50), "maxscore_same_top10_as_taat": same,
        "scipy_QDt_p50_ms": pct(ts_core, 50), "scipy_pretransposed_p50_ms": pct(ts_pre, 50),
        "speedup_vs_scipy_QDt": pct(ts_core, 50) / pct(ts_taat, 50),
        "speedup_vs_scipy_pretransposed": pct(ts_pre, 50) / pct(ts_taat, 50),
        "taat_batch_per_query_ms": taat_batch * 1e3, "scipy_QDt_batch_per_query_ms": core_batch * 1e3,
        "transpose_once_s": transpose_s, "postings_per_query_p50": float(np.median(post)),
        "query_terms_mean": float(np.diff(qs.lexical.indptr).mean()),
    }
    for dtype in ("uint8", "uint16"):
        qidx = SparseIndex(args.vocab, {"dtype": dtype}, D)
        qidx.search(one[0].lexical, 10, None)
        ts_q = timed(lambda r, qidx=qidx: qidx.search(one[r].lexical, 10, None), nq)
        got = qidx.search(qs.lexical, 10, None)
        ref = sparse.search(qs.lexical, 10, None)
        ov = np.mean([len(set(a[0]) & set(b[0])) / max(1, len(b[0])) for a, b in zip(got, ref, strict=True)])
        report["sparse"][f"{dtype}_p50_ms"] = pct(ts_q, 50)
        report["sparse"][f"{dtype}_overlap@10"] = float(ov)
    skip = args.no_hnsw or args.no_seismic
    report["sparse"]["seismic"] = bench_seismic(D, qs.lexical, sparse, nq) if not skip else {"skipped": 1}
    print("  sparse:", json.dumps(report["sparse"]), flush=True)
    _dump(args, report)
    idx.close()
    if not (args.keep or args.reuse):
        shutil.rmtree(root, ignore_errors=True)


def _dump(args, report: dict) -> None:
    """Write the report so far (a run cut short still leaves its numbers)."""
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _lex_of(idx):
    from m3embed.output import LexicalWeights

    f = idx.sparse.forward
    return LexicalWeights(f.indptr, f.indices, f.data, f.shape[1])


def bench_seismic(D, qlex, sparse, nq: int) -> dict:
    """pyseismic-lsr (approximate learned-sparse retrieval) on the same data, if installed."""
    try:
        import seismic
    except ImportError:
        return {"skipped": "pyseismic-lsr not installed"}
    st = seismic.get_seismic_string()
    ds = seismic.SeismicDataset()
    t = time.perf_counter()
    for r in range(D.shape[0]):
        a, b = D.indptr[r], D.indptr[r + 1]
        ds.add_document(str(r), D.indices[a:b].astype(str).astype(st), np.asarray(D.data[a:b], np.float32))
    index = seismic.SeismicIndex.build_from_dataset(ds)
    build = time.perf_counter() - t
    comps = [qlex.row(i)[0].astype(str).astype(st) for i in range(nq)]
    vals = [qlex.row(i)[1].astype(np.float32) for i in range(nq)]
    out = {"build_s": build}
    ref = sparse.search(qlex, 10, None)
    for cut, heap in ((10, 0.7), (20, 0.9)):
        ts = timed(lambda r, c=cut, h=heap: index.search(str(r), comps[r], vals[r], k=10, query_cut=c,
                                                         heap_factor=h), nq)
        res = [index.search(str(r), comps[r], vals[r], k=10, query_cut=cut, heap_factor=heap) for r in range(nq)]
        rec = np.mean([len({int(x[2]) for x in a} & set(b[0].tolist())) / max(1, len(b[0]))
                       for a, b in zip(res, ref, strict=True)])
        out[f"query_cut={cut},heap={heap}"] = {"p50_ms": pct(ts, 50), "recall@10_vs_exact": float(rec)}
    return out


# ---------------------------------------------------------------------------- codecs
def bench_codecs(args, docs, qs, label: str, report: dict) -> None:
    """Per codec: bytes/passage, encode speed, re-rank latency and quality against the fp32 vectors.

    Each query re-ranks 200 random passages; codecs are built and measured one at a time.
    """
    from m3embed.index.multivec import MultiVecStore
    from m3embed.scoring import maxsim_packed

    n = len(docs)
    dim = docs.data.shape[1]
    nq = len(qs)
    rng = np.random.default_rng(2)
    cands = [np.sort(rng.choice(n, min(200, n), replace=False)) for _ in range(nq)]
    exact = MultiVecStore(dim, {"codec": "fp32"})
    exact.attach(exact.encode(docs, 0, 0))  # no copy: the fp32 payload is the input array
    ref = [maxsim_packed(qs[r], *_unpack(exact.get(cands[r]))) for r in range(nq)]
    fp32_bytes = docs.data.nbytes / n
    res = {}
    codecs = [("fp32", {}), ("fp16", {}), ("int8", {}), ("residual", {"nbits": 2}), ("residual", {"nbits": 4})]
    for codec, extra in codecs:
        name = codec if not extra else f"{codec}-{extra['nbits']}bit"
        store = MultiVecStore(dim, {"codec": codec, "centroids": args.centroids, **extra})
        t = time.perf_counter()
        store.attach(store.encode(docs, 0, 0))
        enc = time.perf_counter() - t
        store.get(cands[0])
        ts = timed(lambda r, s=store: maxsim_packed(qs[r], *_unpack(s.get(cands[r]))), nq)
        got = [maxsim_packed(qs[r], *_unpack(store.get(cands[r]))) for r in range(nq)]
        dev = np.concatenate([np.abs(g - f) for g, f in zip(got, ref, strict=True)])
        ov = np.mean([len(set(np.argsort(-g)[:10]) & set(np.argsort(-f)[:10])) / 10
                      for g, f in zip(got, ref, strict=True)])
        res[name] = {"bytes_per_passage": store.nbytes() / n, "bytes_per_vector": store.nbytes() / len(docs.data),
                     "fp32_ratio": store.nbytes() / n / fp32_bytes, "encode_vectors_per_s": len(docs.data) / enc,
                     "rerank200_p50_ms": pct(ts, 50), "overlap@10": float(ov), "mean_abs_dev": float(dev.mean()),
                     "max_abs_dev": float(dev.max())}
        if codec == "residual":
            ts = timed(lambda r, s=store: s.approx_scores(qs[r], cands[r]), nq)
            res[name]["centroid_stage200_p50_ms"] = pct(ts, 50)
        del store
        gc.collect()
    report[f"codecs ({label})"] = res
    _dump(args, report)
    for name, r in res.items():
        print(f"  {label:10s} {name:15s} {r['bytes_per_passage']:10,.0f} B/passage ({r['fp32_ratio']:.3f}×fp32)  "
              f"overlap@10 {r['overlap@10']:.3f}  mean|Δ| {r['mean_abs_dev']:.4f}  rerank200 p50 "
              f"{r['rerank200_p50_ms']:.2f} ms", flush=True)


def _unpack(cv):
    return cv.data, cv.offsets


def real_vectors(args):
    """ColBERT vectors of real passages (shared/data/xquad_r) from a small random checkpoint."""
    import tempfile

    from m3embed import M3Model
    from m3embed.testing import build_random_checkpoint

    shared = Path(os.environ.get("M3EMBED_SHARED", REPO.parent / "shared"))
    corpus = shared / "data" / "xquad_r" / "paragraph" / "en" / "corpus.jsonl"
    queries = shared / "data" / "xquad_r" / "paragraph" / "en" / "queries.jsonl"
    texts = [json.loads(line)["text"] for line in corpus.open()][: args.real_n]
    qtexts = [json.loads(line)["text"] for line in queries.open()][: args.queries]
    ck = build_random_checkpoint(Path(tempfile.mkdtemp()), shared / "reference" / "xlmr-tokenizer", layers=2,
                                 hidden=128, heads=4, ffn=256, colbert_dim=128)
    m = M3Model.from_pretrained(ck)
    docs = m.encode(texts, return_dense=False, return_colbert=True, max_length=256).colbert
    qs = m.encode(qtexts, return_dense=False, return_colbert=True, max_length=64).colbert
    shutil.rmtree(ck, ignore_errors=True)
    return docs, [qs[i] for i in range(len(qs))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="passages in the large index (0: skip)")
    ap.add_argument("--codec-n", type=int, default=10_000, help="passages for the codec comparison (0: skip)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=250_002)
    ap.add_argument("--nnz", type=int, default=60, help="sparse non-zeros per passage")
    ap.add_argument("--tokens", type=int, default=150, help="mean ColBERT vectors per passage")
    ap.add_argument("--large-codec", default="residual", help="token-vector codec of the large index")
    ap.add_argument("--centroids", type=int, default=1024)
    ap.add_argument("--nbits", type=int, default=2)
    ap.add_argument("--kmeans-sample", type=int, default=1 << 17)
    ap.add_argument("--chunk", type=int, default=1000, help="passages per add (one multivec segment each)")
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="sha256-verify files when reopening the large index")
    ap.add_argument("--real", action="store_true", help="also compare codecs on real-text vectors (small model)")
    ap.add_argument("--real-n", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=REPO / ".cache" / "search_bench")
    ap.add_argument("--keep", action="store_true", help="keep the large index on disk")
    ap.add_argument("--reuse", action="store_true", help="reuse a kept large index (re-measure search only)")
    ap.add_argument("--no-hnsw", action="store_true", help="skip the HNSW and pyseismic builds")
    ap.add_argument("--no-seismic", action="store_true", help="skip the pyseismic-lsr build (minutes at 100k)")
    ap.add_argument("--in-memory", action="store_true", help="read the large index into RAM (no memory map)")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    t0 = time.perf_counter()
    synth = Synth(args.dim, args.vocab, args.nnz, args.tokens)
    if args.n:
        bench_large(args, synth, args.workdir, report)
    if args.codec_n:
        print(f"codec comparison on {args.codec_n:,} synthetic passages …", flush=True)
        docs = synth.colbert(args.codec_n)
        qs = synth.colbert(args.queries, np.full(args.queries, 24))
        bench_codecs(args, docs, [qs[i] for i in range(args.queries)], "synthetic", report)
        del docs
    if args.real:
        print("codec comparison on real-text vectors …", flush=True)
        docs, qs = real_vectors(args)
        bench_codecs(args, docs, qs, "real-text", report)
    report["total_s"] = time.perf_counter() - t0
    report["load_avg_end"] = os.getloadavg()
    report["peak_rss_mib"] = rss_peak_mib()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
