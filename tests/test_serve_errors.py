"""Bad input, limits, back-pressure, timeouts, disconnects and API keys: 4xx/5xx with OpenAI-shaped errors."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import tiny_checkpoint
from serve_common import running

from m3embed import M3Model
from m3embed.encode import encode_ids
from m3embed.index import M3Index
from m3embed.serve import ServeConfig, create_app

LIMITS = {"max_texts_per_request": 8, "max_chars_per_text": 300, "max_request_bytes": 4000, "max_k": 50}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("serr"), seed=7))


@pytest.fixture(scope="module")
def index(model, tmp_path_factory):  # no token vectors: multivec / all are refused
    corpus = [{"id": f"d{i}", "text": f"document number {i} about things"} for i in range(10)]
    return M3Index.build(corpus, model, tmp_path_factory.mktemp("sidx") / "idx", show_progress=False,
                         multivec="none")


@pytest.fixture(scope="module")
def client(model, index):
    app = create_app(model, index, ServeConfig(**LIMITS))
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _err(r: httpx.Response, status: int, param: str | None) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    if param is not None:
        assert err["message"].startswith(param + ":"), err
    return err["message"]


E, ENC, SC, SE = "/v1/embeddings", "/encode", "/score", "/search"
CASES = [
    (E, {"input": []}, "input"),
    (E, {"input": ""}, "input"),
    (E, {"input": ["a", 3]}, "input[1]"),
    (E, {"input": ["a", "b", None]}, "input[2]"),
    (E, {"input": ["a", ""]}, "input[1]"),
    (E, {"input": 5}, "input"),
    (E, {"input": {"a": 1}}, "input"),
    (E, {"input": [[1, 2, 3]]}, "input[0]"),
    (E, {}, "input"),
    (E, {"input": "a", "encoding_format": "base65"}, "encoding_format"),
    (E, {"input": "a", "dimensions": "384"}, "dimensions"),
    (E, {"input": "a", "dimensions": True}, "dimensions"),
    (E, {"input": "a", "model": 3}, "model"),
    (ENC, {"input": "a", "dense": False}, "dense"),
    (ENC, {"input": "a", "max_length": 1}, "max_length"),
    (ENC, {"input": "a", "max_length": 10**30}, "max_length"),
    (ENC, {"input": "a", "colbert": "yes"}, "colbert"),
    (ENC, {"input": "a", "colbret": True}, "colbret"),
    (ENC, {"input": "a", "colbert_dtype": "int8"}, "colbert_dtype"),
    (ENC, {"input": "a", "encoding_format": 1}, "encoding_format"),
    (SC, {"pairs": []}, "pairs"),
    (SC, {"pairs": "ab"}, "pairs"),
    (SC, {"pairs": [["a"]]}, "pairs[0]"),
    (SC, {"pairs": [["a", "b"], ["a", 1]]}, "pairs[1][1]"),
    (SC, {"pairs": [["a", "b"]], "weights": [1, 2]}, "weights"),
    (SC, {"pairs": [["a", "b"]], "weights": [1, -1, 0]}, "weights[1]"),
    (SC, {"pairs": [["a", "b"]], "weights": [1, "x", 1]}, "weights[1]"),
    (SC, {"pairs": [["a", "b"]], "weights": [0, 0, 0]}, "weights"),
    (SC, {"pairs": [["a", "b"]], "weights": [0, 0, 1]}, "weights"),
    (SC, {"pairs": [["a", "b"]], "weights": [1e300, 1, 1]}, "weights[0]"),
    (SC, {"pairs": [["a", "b"]], "max_query_length": 0}, "max_query_length"),
    (SE, {"queries": []}, "queries"),
    (SE, {"queries": ["a"], "k": 0}, "k"),
    (SE, {"queries": ["a"], "k": -3}, "k"),
    (SE, {"queries": ["a"], "k": "5"}, "k"),
    (SE, {"queries": ["a"], "k": 1.5}, "k"),
    (SE, {"queries": ["a"], "k": True}, "k"),
    (SE, {"queries": ["a"], "k": 51}, "k"),
    (SE, {"queries": ["a"], "mode": "bm25"}, "mode"),
    (SE, {"queries": ["a"], "mode": "multivec"}, "mode"),
    (SE, {"queries": ["a"], "mode": "all"}, "mode"),
    (SE, {"queries": ["ok", "   "]}, "queries[1]"),
    (SE, {"queries": ["a"], "mode": "dense+sparse", "weights": [0, 0, 1]}, "weights"),
    (SE, {"queries": ["a"], "filter": 1}, "filter"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_names_the_field(client, path, body, param):
    _err(client.post(path, json=body), 400, param)


def test_messages(client):
    msg = _err(client.post(E, json={"input": ["a", "b", "c", 7]}), 400, "input[3]")
    assert msg == "input[3]: expected a string, got int"
    assert "unknown mode 'bm25'" in _err(client.post(SE, json={"queries": "a", "mode": "bm25"}), 400, "mode")
    assert _err(client.post(SE, json={"queries": "a", "k": 0}), 400, "k") == "k: must be a positive integer, got 0"
    assert "unpaired surrogate" in _err(client.post(E, content=b'{"input": ["ok", "\\ud800"]}',
                                                    headers={"content-type": "application/json"}), 400, "input[1]")


@pytest.mark.parametrize("raw", [b'{"input": ', b"[1, 2]", b"", b"null", b'"text"', b'{"input": NaN}', b"\xff\xfe",
                                 b'{"input": "a", "input": 3}', b"[" * 1500 + b"]" * 1500, b"{" + b" " * 3000])
def test_malformed_bodies(client, raw):
    r = client.post(E, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_not_json_content_type_and_unknown_routes(client):
    r = client.post(E, content=b"input=hello", headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/nope").status_code == 404 and client.get("/nope").json()["error"]["type"]
    r = client.get(E)
    assert r.status_code == 405 and "error" in r.json()


def test_size_limits_are_413(client):
    _err(client.post(E, json={"input": ["t"] * 9}), 413, "input")
    _err(client.post(SC, json={"pairs": [["a", "b"]] * 9}), 413, "pairs")
    _err(client.post(ENC, json={"input": ["ok", "x" * 301]}), 413, "input[1]")
    _err(client.post(SC, json={"pairs": [["ok", "y" * 301]]}), 413, "pairs[0][1]")
    _err(client.post(E, json={"input": ["word " * 100] * 8}), 413, None)  # 4 KB body limit (Content-Length)

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"input": ["'
        for _ in range(50):
            yield b"z" * 100
        yield b'"]}'

    _err(client.post(E, content=chunks(), headers={"content-type": "application/json"}), 413, None)


def test_worker_still_serves_after_bad_input(client, model):
    r = client.post(E, json={"input": ["still fine"]})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], model.encode(["still fine"]).dense[0], atol=1e-6)
    text = client.get("/metrics").text
    assert not re.search(r'status="5\d\d"', text)
    assert client.get("/ready").status_code == 200


# ---------------------------------------------------------------------------- a worker we can hold
class Gate:
    """An encode function that blocks on an event (at most 20 s) and records what it ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[list[int]]] = []
        self.entered = threading.Event()

    def __call__(self, model, ids, **kw):
        self.calls.append(ids)
        self.entered.set()
        self.release.wait(20)
        return encode_ids(model, ids, **kw)


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def _post_async(url, path, body, results, key, timeout=30.0):
    def run():
        try:
            results[key] = httpx.post(url + path, json=body, timeout=timeout)
        except httpx.HTTPError as e:
            results[key] = e
    t = threading.Thread(target=run)
    t.start()
    return t


def test_queue_full_is_503_then_recovers(model):
    gate = Gate()
    app = create_app(model, config=ServeConfig(max_queue=2, max_wait_ms=0), encode_fn=gate)
    res: dict = {}
    with running(app) as base:
        threads = [_post_async(base, E, {"input": "first"}, res, "a")]
        assert gate.entered.wait(10)  # "first" is in the worker
        threads += [_post_async(base, E, {"input": f"queued {i}"}, res, i) for i in range(2)]
        _wait(lambda: app.state.m3.batcher.queue_depth == 2)
        r = httpx.post(base + E, json={"input": "one too many"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        gate.release.set()
        for t in threads:
            t.join(20)
        assert all(res[k].status_code == 200 for k in ("a", 0, 1))
        assert httpx.post(base + E, json={"input": "after"}).status_code == 200
        assert 'm3embed_rejected_total{reason="queue_full"} 1.0' in httpx.get(base + "/metrics").text


def test_timeout_is_504_and_the_queued_job_is_dropped(model):
    gate = Gate()
    app = create_app(model, config=ServeConfig(request_timeout_s=0.5, max_wait_ms=0), encode_fn=gate)
    res: dict = {}
    with running(app) as base:
        t1 = _post_async(base, E, {"input": "held"}, res, "held")
        assert gate.entered.wait(10)
        t2 = _post_async(base, E, {"input": "waits in the queue"}, res, "queued")
        t1.join(10)
        t2.join(10)
        assert res["held"].status_code == 504 and res["queued"].status_code == 504
        assert res["queued"].json()["error"]["code"] == "timeout"
        _wait(lambda: app.state.m3.batcher.queue_depth == 0)  # withdrawn at once, while the worker is still busy
        assert "m3embed_queue_depth 0.0" in httpx.get(base + "/metrics").text
        gate.release.set()
        _wait(lambda: app.state.m3.batcher.queue_depth == 0)
        r = httpx.post(base + E, json={"input": "next"})
        assert r.status_code == 200  # the worker is not hung
        text = httpx.get(base + "/metrics").text
    assert "m3embed_dropped_jobs_total 1.0" in text
    ran = [seq for call in gate.calls for seq in call]
    queued_ids = model.tokenizer.tokenize(["waits in the queue"], max_length=512)[0]
    assert queued_ids not in ran  # cancelled before its round: never encoded


def test_client_disconnect_drops_its_queued_job(model):
    gate = Gate()
    app = create_app(model, config=ServeConfig(max_wait_ms=0), encode_fn=gate)
    res: dict = {}
    with running(app) as base:
        t1 = _post_async(base, E, {"input": "held"}, res, "held")
        assert gate.entered.wait(10)
        t2 = _post_async(base, E, {"input": "client gives up"}, res, "gone", timeout=0.3)
        t2.join(10)
        assert isinstance(res["gone"], httpx.TimeoutException)  # the client closed its connection
        _wait(lambda: 'reason="disconnected"} 1.0' in httpx.get(base + "/metrics").text)
        gate.release.set()
        t1.join(10)
        assert res["held"].status_code == 200
        _wait(lambda: "m3embed_dropped_jobs_total 1.0" in httpx.get(base + "/metrics").text)
    gone_ids = model.tokenizer.tokenize(["client gives up"], max_length=512)[0]
    assert gone_ids not in [seq for call in gate.calls for seq in call]


# ---------------------------------------------------------------------------- API keys
def test_api_keys(model, tmp_path):
    from m3embed.serve.config import read_api_keys

    f = tmp_path / "keys.txt"
    f.write_text("# comment\nkey-one\n\n  key-two  \n")
    keys = read_api_keys(str(f))
    assert keys == ("key-one", "key-two")
    app = create_app(model, config=ServeConfig(api_keys=keys))
    with running(app) as base:
        assert httpx.get(base + "/health").status_code == 200  # probes stay open
        assert httpx.get(base + "/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "key-one"},
                        {"Authorization": "Basic key-one"}):
            r = httpx.post(base + E, json={"input": "x"}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(base + "/metrics").status_code == 401
        ok = httpx.post(base + E, json={"input": "x"}, headers={"Authorization": "Bearer key-two"})
        assert ok.status_code == 200
        openai = pytest.importorskip("openai")
        c = openai.OpenAI(base_url=base + "/v1", api_key="key-one", max_retries=0)
        assert len(c.embeddings.create(model="m", input=["a", "b"]).data) == 2
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="m", input="a")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no API key"):
        read_api_keys(str(tmp_path / "empty.txt"))


# ---------------------------------------------------------------------------- fuzz
def test_fuzz_no_server_errors(client):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=30)
    values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                              kids, max_size=3),
                          max_leaves=8)
    texts = st.text(min_size=0, max_size=40) | st.lists(st.text(max_size=40), max_size=5) | values
    fields = {"input": texts, "queries": texts, "pairs": st.lists(st.lists(st.text(max_size=20), max_size=3),
                                                                  max_size=3) | values,
              "k": st.integers(-5, 100) | values, "mode": st.sampled_from(["dense", "sparse", "rrf", "all", "x"]),
              "weights": st.lists(st.floats(allow_nan=False) | st.integers(-2, 3), max_size=4) | values,
              "max_length": st.integers(-2, 2000) | values, "mcls": values, "dense": values, "sparse": values,
              "colbert": values, "sparse_tokens": values, "colbert_dtype": values, "encoding_format": values,
              "dimensions": values, "model": values, "max_query_length": values}
    bodies = st.fixed_dictionaries({}, optional=fields) | values
    paths = st.sampled_from([E, ENC, SC, SE])

    @hyp.settings(max_examples=80, deadline=None, database=None,
                  suppress_health_check=list(hyp.HealthCheck))
    @hyp.given(path=paths, body=bodies)
    def check(path, body):
        raw = json.dumps(body).encode()  # NaN / Infinity literals included: Python's json reads them
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 404, 413), (path, body, r.status_code, r.text)
        if r.status_code != 200:
            assert r.json()["error"]["message"]

    check()
