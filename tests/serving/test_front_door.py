"""The front door on a real server: hostile input is a 4xx with a message, a bad request fails alone,
bodies are bounded while they are read, labels need a key when one is set."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from pathlib import Path

import httpx
import pytest

from refitd.core.errors import UnprocessableError
from refitd.serving.batcher import Batcher, ModelFailedError
from refitd.serving.runtime import OnnxClassifier

V2 = "/v2/models/refitd/infer"
TEXT_INPUT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}

_BINARY_HEAD = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 10}}]}'

HOSTILE = [
    # (route, raw body, extra headers, status, words in the message)
    ("/v1/predict", b'{"text": "\\ud800 hello"}', {}, 400, "surrogate"),
    ("/v1/predict", b'{"text": "a\\u0000b"}', {}, 422, "NUL character at character 1"),
    ("/v1/predict", b'{"texts": ["fine", "\\u0000"]}', {}, 422, "text 1 contains a NUL"),
    ("/v1/predict", b"[" * 100_000 + b"]" * 100_000, {}, 400, "malformed JSON"),
    ("/v1/predict", b'{"text": ' + b"7" * 5000 + b"}", {}, 400, "malformed JSON"),
    ("/v1/predict", b'{"text": 12345678901234567890123}', {}, 422, "text: Input should be a valid string"),
    ("/v1/predict", b'{"text": null, "texts": ["a"]}', {}, 422, "omit it instead of null"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"], '
         b'"parameters": {"binary_data_size": "x"}}]}', {}, 400, "binary_data_size"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "parameters": [1]}',
     {}, 422, '"parameters" of the request must be a JSON object'),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"], "parameters": 3}]}',
     {}, 422, "must be a JSON object"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}', {}, 422, "shape"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [true], "data": ["a"]}]}', {}, 422, "shape"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}', {}, 422,
     "shape [2] but 1 elements"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [["a", "b"]]}]}', {}, 422,
     "must be a string"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "id": 5}', {}, 422,
     '"id" must be a string'),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], '
         b'"outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}', {}, 422, "true or false"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}',
     {"Inference-Header-Content-Length": "99999999999999999999999"}, 400, "Inference-Header-Content-Length"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}',
     {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")}, 400, "must be a non-negative integer"),
    (V2, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [9], "data": ["a"]}]}', {}, 413,
     "too many texts: 9 > 8"),
    ("/v1/predict", b'{"texts": ' + b"[" + b",".join([b"1"] * 40) + b"]}", {}, 413, "too many texts: 40 > 8"),
    (V2, _BINARY_HEAD + b"\x01\x00\x00\x00a\x01\x00\x00\x00b", {"Inference-Header-Content-Length": str(len(_BINARY_HEAD))},
     422, 'input "text" has shape [1] but more elements in its binary data'),
    ("/v1/predict", b'{"text": "a", ' + b", ".join(b'"k%d": 1' % i for i in range(20)) + b"}", {}, 422,
     "k9: Extra inputs are not permitted; and 10 more"),
    ("/v1/predict", b'{"text": "caf\xe9"}', {}, 400, "not valid UTF-8"),
    ("/v1/feedback", b'{"prediction_id": "a\u0000b", "label": "positive"}', {}, 404, "not found"),
    ("/v1/admin/reload", b"", {"Authorization": "Bearer caf\u00e9 \u2603".encode()}, 401, "admin routes need"),
    ("/v1/feedback", b'{"text": "good", "label": "positive", "source": "mallory"}', {}, 422, "serving.feedback_sources"),
    ("/v1/feedback", b'{"text": "good", "label": "posi\\u0000tive"}', {}, 422, "label contains a NUL"),
]


@pytest.mark.parametrize(("route", "body", "headers", "status", "words"), HOSTILE,
                         ids=[f"{i}-{case[0].rsplit('/', 1)[-1]}-{case[3]}" for i, case in enumerate(HOSTILE)])
def test_hostile_input_is_a_4xx_with_a_message(start_server, route, body, headers, status, words) -> None:
    running = start_server(serving={"admin_token": "test-admin-token"})
    response = httpx.post(f"{running.url}{route}", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_bad_request_among_good_ones_fails_alone(running) -> None:
    good = [{"text": f"the flight number {i} was on time"} for i in range(30)]
    bad = [b'{"text": "\\ud800 hello"}', b'{"text": "nul \\u0000 here"}'] * 3

    def send(body):  # type: ignore[no-untyped-def]
        if isinstance(body, bytes):
            return httpx.post(f"{running.url}/v1/predict", content=body, timeout=30).status_code
        return httpx.post(f"{running.url}/v1/predict", json=body, timeout=30).status_code

    mixed = good[:10] + bad[:3] + good[10:20] + bad[3:] + good[20:]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, mixed))
    good_codes = [c for body, c in zip(mixed, codes, strict=True) if isinstance(body, dict)]
    assert good_codes == [200] * 30
    assert sorted(c for body, c in zip(mixed, codes, strict=True) if isinstance(body, bytes)) == [400] * 3 + [422] * 3


class _Poisoned(OnnxClassifier):
    """The real model, except that any batch holding the text 'POISON' raises (a fault no validation catches)."""

    broken = False

    def predict(self, texts, *, _loading=False):  # type: ignore[no-untyped-def]
        if self.broken or "POISON" in texts:
            raise RuntimeError("cannot encode this batch")
        return super().predict(texts, _loading=_loading)


def test_a_failing_batch_is_split_until_only_the_culprit_fails(untrained_artifact: Path) -> None:
    runtime = _Poisoned("v1", untrained_artifact, provider="cpu", threads=1)
    runtime.load()

    async def run(texts: list[list[str]]) -> list[object]:
        batcher = Batcher(lambda: runtime, max_batch_size=64, max_wait_ms=50, queue_size=1024, timeout_s=30)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(t) for t in texts), return_exceptions=True)
        finally:
            await batcher.stop()

    requests = [[f"text {i}", f"more {i}"] for i in range(20)]
    requests[7] = ["fine", "POISON"]
    answers = asyncio.run(run(requests))
    assert isinstance(answers[7], UnprocessableError) and "could not process this request" in str(answers[7])
    assert all(len(a.labels) == 2 for i, a in enumerate(answers) if i != 7)  # type: ignore[union-attr]

    runtime.broken = True  # a model that fails everything: the server's fault, not the requests'
    answers = asyncio.run(run(requests[:4]))
    assert all(isinstance(a, ModelFailedError) and a.status_code == 503 for a in answers)


class _Hiccup(OnnxClassifier):
    """The real model, except that the first call holding 'HICCUP' raises (a passing fault: memory, a device)."""

    hiccups = 1

    def predict(self, texts, *, _loading=False):  # type: ignore[no-untyped-def]
        if "HICCUP" in texts and self.hiccups:
            self.hiccups -= 1
            raise RuntimeError("out of memory")
        return super().predict(texts, _loading=_loading)


def test_a_lone_request_hit_by_a_passing_fault_is_answered_on_its_second_try(untrained_artifact: Path) -> None:
    runtime = _Hiccup("v1", untrained_artifact, provider="cpu", threads=1)
    runtime.load()

    async def run(texts: list[str]) -> object:
        batcher = Batcher(lambda: runtime, max_batch_size=64, max_wait_ms=50, queue_size=1024, timeout_s=30)
        await batcher.start()
        try:
            return (await asyncio.gather(batcher.submit(texts), return_exceptions=True))[0]
        finally:
            await batcher.stop()

    answer = asyncio.run(run(["HICCUP"]))
    assert not isinstance(answer, BaseException), answer
    assert len(answer.labels) == 1 and runtime.hiccups == 0  # type: ignore[union-attr]

    runtime.hiccups = 2  # fails its first try and its second: then it is the request's (422), as before
    answer = asyncio.run(run(["HICCUP"]))
    assert isinstance(answer, UnprocessableError) and "out of memory" in str(answer)


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def _reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_holding_it(running, declared: bool) -> None:
    chunk = b'"' + b"x" * (1024 * 1024 - 1)  # the same buffer 100 times: the client holds 1 MiB

    def body():  # type: ignore[no-untyped-def]
        yield b'{"texts": ['
        for _ in range(100):
            yield chunk

    headers = {"Content-Length": str(11 + 100 * len(chunk))} if declared else {}
    httpx.post(f"{running.url}/v1/predict", json={"text": "warm up"}, timeout=30)
    _reset_rss_peak()
    before = _rss_peak_kib()
    response = httpx.post(f"{running.url}/v1/predict", content=body(), headers=headers, timeout=60)
    grown_mib = (_rss_peak_kib() - before) / 1024
    assert response.status_code == 413, response.text
    assert "serving.max_body_bytes" in response.json()["error"]
    assert grown_mib < 50, f"the server's peak RSS grew {grown_mib:.0f} MiB"
    assert httpx.post(f"{running.url}/v1/predict", json={"text": "still fine"}, timeout=30).status_code == 200
    # counted under its route, whether refused before routing (declared) or while reading (chunked)
    assert 'refitd_requests_total{code="413",route="/v1/predict"} 1.0' in httpx.get(f"{running.url}/metrics").text


def test_405_names_the_allowed_methods(running) -> None:
    response = httpx.get(f"{running.url}/v1/predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = httpx.delete(f"{running.url}/v2/health/ready")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_feedback_needs_its_token_and_is_rate_limited_per_source(start_server) -> None:
    running = start_server(serving={"feedback_token": "label-key-123", "admin_token": "test-admin-token",
                                    "feedback_rate_per_s": 0.2, "feedback_burst": 3})
    url = f"{running.url}/v1/feedback"
    body = {"text": "the crew was lovely", "label": "positive"}
    denied = httpx.post(url, json=body)
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer test-admin-token"}).status_code == 401
    admin = httpx.post(f"{running.url}/v1/admin/reload")
    assert admin.status_code == 401 and admin.headers["www-authenticate"] == "Bearer"
    key = {"Authorization": "Bearer label-key-123"}
    too_long = httpx.post(url, json={**body, "label": "x" * 65}, headers=key)  # longer than a label column holds
    assert too_long.status_code == 422 and "label" in too_long.json()["error"]
    assert [httpx.post(url, json=body, headers=key).status_code for _ in range(3)] == [200] * 3
    limited = httpx.post(url, json=body, headers=key)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "source 'api'" in limited.json()["error"]
    assert httpx.post(url, json={**body, "source": "review"}, headers=key).status_code == 200  # its own bucket


def test_a_client_gone_before_its_body_counts_499_not_500(running) -> None:
    """A client that sends headers and half a body, then leaves: nobody is answered, no error is logged, and
    /metrics counts it as 499 (client closed), on the fast route and on a route FastAPI serves."""
    host, port = urlsplit(running.url).hostname, urlsplit(running.url).port
    for path in ("/v1/predict", "/v1/feedback"):
        with socket.create_connection((host, port)) as conn:
            conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100\r\n\r\n{\"texts\": [".encode())
            time.sleep(0.2)
    deadline, page = time.time() + 10, ""
    while time.time() < deadline:
        page = httpx.get(f"{running.url}/metrics").text
        if all(f'refitd_requests_total{{code="499",route="{p}"}}' in page for p in ("/v1/predict", "/v1/feedback")):
            break
        time.sleep(0.1)
    for path in ("/v1/predict", "/v1/feedback"):
        assert f'refitd_requests_total{{code="499",route="{path}"}} 1.0' in page
        assert f'code="500",route="{path}"' not in page


def test_a_body_of_many_wrong_items_neither_stalls_the_loop_nor_answers_megabytes(start_server) -> None:
    """Two million numbers where texts go are refused by their count before each is validated, and a body of
    many unknown fields is answered with its first problems: while it is refused, another client is answered."""
    running = start_server(serving={"max_body_bytes": 8 * 1024 * 1024})
    numbers = b'{"texts": [' + b",".join([b"1"] * 2_000_000) + b"]}"
    fields = b'{"text": "a", ' + b", ".join(b'"k%d": 1' % i for i in range(200_000)) + b"}"
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.post, f"{running.url}/v1/predict", content=body, timeout=60)
                   for body in (numbers, fields)]
        slowest = 0.0
        while not all(f.done() for f in futures):  # meanwhile, good requests are answered as usual
            start = time.perf_counter()
            answer = httpx.post(f"{running.url}/v1/predict", json={"text": "the flight was on time"}, timeout=30)
            slowest = max(slowest, time.perf_counter() - start)
            assert answer.status_code == 200
        too_many, unknown = (f.result() for f in futures)
    assert slowest < 5.0  # refused on the event loop, the numbers alone held it for tens of seconds
    assert too_many.status_code == 413 and "too many texts: 2000000 > 8" in too_many.json()["error"]
    assert unknown.status_code == 422 and len(unknown.content) < 2_000, unknown.content[:300]
    assert unknown.json()["error"].endswith("and 199990 more")
