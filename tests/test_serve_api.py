"""`m3embed serve` over real HTTP (uvicorn in a thread): every endpoint equals the in-process library."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import re

import httpx
import numpy as np
import pytest
from helpers import tiny_checkpoint
from serve_common import running

from m3embed import M3Model
from m3embed.index import MODES, M3Index
from m3embed.serve import ServeConfig, create_app

TEXTS = ["The cat sat on the mat.", "Der schnelle braune Fuchs springt.", "東京は日本の首都です。", "🙂 ok",
         "a much longer text " * 30, "x"]
WORDS = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "planes", "rivers", "mountains", "coffee", "music"]
CORPUS = [{"id": f"d{i:02d}", "text": f"{WORDS[i % 12]} {WORDS[(5 * i + 1) % 12]} story {i}", "metadata": {"n": i}}
          for i in range(30)]
QUERIES = ["boats and cars", "coffee music", "fish in rivers"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("serve"), max_positions=1026, colbert_dim=16, seed=5)
    return M3Model.from_pretrained(path)


@pytest.fixture(scope="module")
def index(model, tmp_path_factory):
    return M3Index.build(CORPUS, model, tmp_path_factory.mktemp("sidx") / "idx", show_progress=False,
                         multivec="fp32", chunk_size=64)


@pytest.fixture(scope="module")
def url(model, index):
    app = create_app(model, index, ServeConfig(model_name="tiny-m3"))
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


# ---------------------------------------------------------------------------- /v1/embeddings
def test_embeddings_equal_encode(client, model):
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "my-name"})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = model.encode(TEXTS)
    assert body["object"] == "list" and body["model"] == "my-name"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, ref.dense, atol=1e-6, rtol=0)
    n = int(ref.n_tokens.sum())
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_embeddings_single_string_base64_and_dimensions(client, model):
    r = client.post("/v1/embeddings", json={"input": TEXTS[1], "encoding_format": "base64",
                                            "dimensions": model.hidden_size})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 1 and body["model"] == "tiny-m3"  # no model named: the server's name
    np.testing.assert_allclose(_f32(body["data"][0]["embedding"]), model.encode([TEXTS[1]]).dense[0], atol=1e-6)
    bad = client.post("/v1/embeddings", json={"input": "hi", "dimensions": 8})
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["param"] == "dimensions" and str(model.hidden_size) in err["message"]


def test_openai_client_unchanged(url, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    ref = model.encode(TEXTS)
    res = client.embeddings.create(model="tiny-m3", input=TEXTS)  # the client's default encoding (base64)
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), ref.dense, atol=1e-6, rtol=0)
    assert res.model == "tiny-m3" and res.usage.prompt_tokens == int(ref.n_tokens.sum())
    res = client.embeddings.create(model="tiny-m3", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(res.data[0].embedding, ref.dense[0], atol=1e-6, rtol=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny-m3", input=["ok", ""])
    assert e.value.status_code == 400 and e.value.body["param"] == "input[1]"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny-m3", input="hi", dimensions=3)


# ---------------------------------------------------------------------------- /encode
def test_encode_all_representations(client, model):
    r = client.post("/encode", json={"input": TEXTS, "dense": True, "sparse": True, "sparse_tokens": True,
                                     "colbert": True})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    ref = model.encode(TEXTS, return_sparse=True, return_colbert=True)
    lw = ref.lexical_weights
    for i, item in enumerate(data):
        assert item["index"] == i and item["n_tokens"] == int(ref.n_tokens[i])
        np.testing.assert_allclose(item["dense"], ref.dense[i], atol=1e-6, rtol=0)
        assert item["sparse"].keys() == lw[i].keys()
        np.testing.assert_allclose([item["sparse"][k] for k in lw[i]], list(lw[i].values()), atol=1e-6, rtol=0)
        tok = model.convert_id_to_token(lw[i])
        assert item["sparse_tokens"].keys() == tok.keys()
        c = item["colbert"]
        assert c["dtype"] == "float32" and c["shape"] == list(ref.colbert[i].shape)
        np.testing.assert_allclose(_f32(c["data"]).reshape(c["shape"]), ref.colbert[i], atol=1e-6, rtol=0)


def test_encode_options(client, model):
    r = client.post("/encode", json={"input": TEXTS, "dense": False, "colbert": True, "colbert_dtype": "float16",
                                     "max_length": 8})
    assert r.status_code == 200, r.text
    ref = model.encode(TEXTS, max_length=8, return_dense=False, return_colbert=True)
    for i, item in enumerate(r.json()["data"]):
        assert "dense" not in item and "sparse" not in item
        assert item["n_tokens"] == int(ref.n_tokens[i]) <= 8
        arr = np.frombuffer(base64.b64decode(item["colbert"]["data"]), dtype="<f2").reshape(item["colbert"]["shape"])
        np.testing.assert_array_equal(arr, ref.colbert[i].astype(np.float16))
    long = "word " * 1200
    r = client.post("/encode", json={"input": [long, "short"], "mcls": True, "max_length": 1024,
                                     "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    ref = model.encode([long, "short"], mcls=True, max_length=1024)
    for i, item in enumerate(r.json()["data"]):
        np.testing.assert_allclose(_f32(item["dense"]), ref.dense[i], atol=1e-6, rtol=0)
    assert r.json()["data"][0]["n_tokens"] == int(ref.n_tokens[0]) == 1024  # truncated, MCLS slots included


# ---------------------------------------------------------------------------- /score
def test_score_equals_compute_score(client, model):
    pairs = [[QUERIES[0], TEXTS[0]], [QUERIES[1], TEXTS[4]], [QUERIES[0], TEXTS[2]], [TEXTS[3], TEXTS[3]]]
    for weights in (None, [0.4, 0.2, 0.4]):
        body = {"pairs": pairs} if weights is None else {"pairs": pairs, "weights": weights}
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        got = r.json()["scores"]
        ref = model.compute_score([tuple(p) for p in pairs], weights_for_different_modes=weights)
        assert set(got) == {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"} == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-6, rtol=0, err_msg=key)


# ---------------------------------------------------------------------------- /search
@pytest.mark.parametrize("mode", MODES)
def test_search_equals_index_search(client, model, index, mode):
    weights = [0.5, 0.5, 1.0] if mode in ("dense+sparse", "all") else None
    r = client.post("/search", json={"queries": QUERIES, "k": 5, "mode": mode, "weights": weights})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    ref = index.search(QUERIES, k=5, mode=mode, model=model, weights=weights)
    assert len(got) == len(ref)
    for g, h in zip(got, ref, strict=True):
        assert [x["id"] for x in g] == [x.id for x in h]
        np.testing.assert_allclose([x["score"] for x in g], [x.score for x in h], atol=1e-6, rtol=0)
        assert [x["text"] for x in g] == [x.text for x in h]
        assert [x["metadata"] for x in g] == [x.metadata for x in h]


def test_search_single_query_string(client, model, index):
    r = client.post("/search", json={"queries": "coffee", "k": 3, "mode": "dense"})
    assert r.status_code == 200
    assert [h["id"] for h in r.json()["results"][0]] == [h.id for h in index.search("coffee", 3, "dense",
                                                                                     model=model)[0]]


def test_search_without_index_is_404(model):
    with running(create_app(model)) as base:
        r = httpx.post(f"{base}/search", json={"queries": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_index"


# ---------------------------------------------------------------------------- operations
def test_health_ready_metrics_and_request_ids(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["index"] is True
    r = client.post("/v1/embeddings", json={"input": "hello"}, headers={"X-Request-ID": "abc-123.x"})
    assert r.headers["x-request-id"] == "abc-123.x"
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/health").headers["x-request-id"])
    bad = client.get("/health", headers={"X-Request-ID": "has spaces " * 20 + "end"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert re.search(r'm3embed_requests_total\{endpoint="/v1/embeddings",status="200"\} [1-9]', text)
    for name in ("m3embed_request_seconds_bucket", "m3embed_batch_texts_bucket", "m3embed_batch_tokens_bucket",
                 "m3embed_queue_depth", "m3embed_tokens_total", "m3embed_tokens_per_second", "m3embed_ready 1.0"):
        assert name in text, name


def test_concurrent_requests_share_rounds(model):
    """Requests arriving together are merged into few worker rounds and each gets exactly its own rows."""
    app = create_app(model, config=ServeConfig(max_wait_ms=400))
    groups = [[f"request {i} text {j} " + "pad " * (i * 3 + j) for j in range(1 + i % 3)] for i in range(12)]
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        def call(texts):
            return c.post("/encode", json={"input": texts, "sparse": True}).json()

        with cf.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, groups))
        rounds = app.state.m3.batcher.rounds
        text = c.get("/metrics").text
    assert rounds < len(groups)  # merged (12 requests, 400 ms window)
    for texts, res in zip(groups, results, strict=True):
        ref = model.encode(texts, return_sparse=True)
        np.testing.assert_allclose([d["dense"] for d in res["data"]], ref.dense, atol=1e-6, rtol=0)
        for d, lw in zip(res["data"], ref.lexical_weights, strict=True):
            assert d["sparse"].keys() == lw.keys()
    assert re.search(r"m3embed_batch_requests_count [0-9.]+", text)


def test_cors_off_by_default_and_on_when_asked(model, client):
    pre = {"Origin": "http://example.org", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/embeddings", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    app = create_app(model, config=ServeConfig(cors_origins=("http://example.org",)))
    with running(app) as base:
        r = httpx.options(f"{base}/v1/embeddings", headers=pre)
        assert r.headers["access-control-allow-origin"] == "http://example.org"
