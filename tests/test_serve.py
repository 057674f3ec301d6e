"""promptkit serve: a real server process on a free port, driven with httpx and the openai client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

import promptkit as pk
from promptkit.testing import tiny_model, toy_classification


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    classifier = pk.create_adapter("full", model=tiny_model("bert"), epochs=4, batch_size=8,
                                   learning_rate=5e-3,
                                   task=pk.Task.classification(["negative", "positive"]))
    data = toy_classification(48)
    classifier.fit(data[:40], eval_data=data[40:])
    classifier.save(root / "sentiment")
    generator = pk.create_adapter("prompt", model=tiny_model("gpt2"), max_new_tokens=4,
                                  task=pk.Task.generation(template="closed_book_qa"))
    generator.fit(pk.testing.toy_generation(8))
    generator.save(root / "qa")
    pk.KnowledgeBase.build([{"text": "boats float down the river", "topic": "river"},
                            {"text": "bakers knead dough before dawn", "topic": "bread"}],
                           embedder=tiny_model("bert"), path=root / "facts")
    return root, classifier


class Server:
    def __init__(self, root, *extra, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"requests-{self.port}.jsonl"
        command = [sys.executable, "-m", "promptkit", "serve", str(root / "sentiment"),
                   str(root / "qa"), "--kb", str(root / "facts"), "--port", str(self.port),
                   "--log", str(self.log), *extra]
        self.process = subprocess.Popen(command, env={**os.environ, **(env or {})},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(self.process.stdout.read())
            time.sleep(0.3)
        raise AssertionError("the server did not become ready")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(artifacts):
    root, _ = artifacts
    running = Server(root)
    yield running
    running.stop()


def test_every_endpoint_with_httpx(server, artifacts):
    _, classifier = artifacts
    client = httpx.Client(base_url=server.url, timeout=30)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["models"] == ["qa", "sentiment"] and ready["knowledge"] == ["facts"]
    models = {m["id"]: m["task"] for m in client.get("/v1/models").json()["data"]}
    assert models == {"sentiment": "classification", "qa": "generation", "facts": "embedding"}
    texts = [r["text"] for r in toy_classification(12, seed=5)]
    offline = classifier.predict(texts)
    one = client.post("/predict", json={"model": "sentiment", "input": texts[0]}).json()
    assert "predictions" in one, one
    assert one["predictions"][0]["label"] == offline[0].label
    batch = client.post("/predict", json={"model": "sentiment", "input": texts}).json()
    assert [p["label"] for p in batch["predictions"]] == [p.label for p in offline]
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in batch["predictions"])
    completion = client.post("/v1/completions", json={"model": "qa", "prompt": "what is good"})
    assert completion.status_code == 200
    assert completion.json()["choices"][0]["finish_reason"] == "stop"
    chat = client.post("/v1/chat/completions", json={
        "model": "qa", "messages": [{"role": "user", "content": "what is good"}]}).json()
    assert chat["choices"][0]["message"]["role"] == "assistant"
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "qa", "stream": True,
            "messages": [{"role": "user", "content": "what is good"}]}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                       for line in lines[:-1])
    assert streamed == chat["choices"][0]["message"]["content"]
    vectors = client.post("/v1/embeddings", json={"model": "facts", "input": ["river", "dawn"]})
    assert len(vectors.json()["data"]) == 2
    hits = client.post("/v1/search", json={"knowledge": "facts", "query": "boats", "k": 5,
                                           "filter": {"topic": "bread"}}).json()["hits"]
    assert [h["text"] for h in hits] == ["bakers knead dough before dawn"]
    metrics = client.get("/metrics").text
    assert 'promptkit_requests_total{endpoint="/predict",model="sentiment",status="200"}' in metrics
    assert "promptkit_batch_size_bucket" in metrics and "promptkit_confidence_bucket" in metrics
    monitor = client.get("/monitor").json()
    assert monitor["sentiment"]["profile"]["source"] == "validation"
    assert monitor["sentiment"]["window"]["seen"] == 13
    assert "promptkit monitor" in client.get("/monitor.html").text
    logged = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert sum(1 for e in logged if e["model"] == "sentiment") == 13
    assert {"input", "label", "confidence", "latency_ms"} <= set(logged[0])


def test_openai_client_works_unchanged(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert {m.id for m in client.models.list()} == {"sentiment", "qa", "facts"}
    completion = client.completions.create(model="qa", prompt="what is bad")
    assert completion.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "what is bad"}])
    answer = chat.choices[0].message.content
    stream = client.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "what is bad"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == answer
    streamed = client.completions.create(model="qa", prompt="what is bad", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    embedded = client.embeddings.create(model="facts", input="river")  # base64 by default
    assert len(embedded.data[0].embedding) == pk.KnowledgeBase.build(
        ["x"], embedder=tiny_model("bert")).dimension
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="sentiment", prompt="wrong kind of model")


BAD_REQUESTS = [
    ("/predict", b"{not json", 400),
    ("/predict", b'{"model": "sentiment"}', 400),
    ("/predict", b'{"model": "nope", "input": "x"}', 404),
    ("/predict", b'{"model": "qa", "input": "x"}', 400),
    ("/predict", b'{"model": "sentiment", "input": 5}', 400),
    ("/predict", b'{"model": "sentiment", "input": []}', 400),
    ("/predict", json.dumps({"model": "sentiment", "input": "x" * 30_000}).encode(), 413),
    ("/predict", json.dumps({"model": "sentiment", "input": ["x"] * 300}).encode(), 413),
    ("/v1/completions", b'{"model": "qa", "prompt": null}', 400),
    ("/v1/chat/completions", b'{"model": "qa", "messages": []}', 400),
    ("/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "system", "content": "x"}]}', 400),
    ("/v1/embeddings", b'{"model": "sentiment", "input": "x"}', 404),
    ("/v1/search", b'{"knowledge": "facts", "query": "x", "filter": {"a b": 1}}', 400),
    ("/v1/search", b'{"knowledge": "facts", "query": "x", "k": 0}', 400),
    ("/nowhere", b"{}", 404),
]


def test_bad_requests_get_one_line_4xx(server):
    client = httpx.Client(base_url=server.url, timeout=30)
    for path, body, status in BAD_REQUESTS:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (path, body[:60], response.text)
        if path != "/nowhere":
            message = response.json()["error"]["message"]
            assert message and "\n" not in message and "Traceback" not in message
    huge = client.post("/predict", content=b"x" * 3_000_000,
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413


def test_malformed_traffic_never_breaks_good_requests(server):
    """1,000 malformed requests interleaved with 1,000 good ones: no 5xx, every good one right."""
    texts = [r["text"] for r in toy_classification(40, seed=9)]
    expected = {}
    results = {"bad": [], "good": []}

    def worker(offset: int) -> None:
        client = httpx.Client(base_url=server.url, timeout=60)
        for i in range(offset, 1000, 8):
            path, body, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            bad = client.post(path, content=body, headers={"content-type": "application/json"})
            results["bad"].append(bad.status_code)
            good = client.post("/predict", json={"model": "sentiment", "input": texts[i % 40]})
            results["good"].append((i % 40, good.status_code, good.json()["predictions"][0]["label"]
                                    if good.status_code == 200 else None))

    reference = httpx.post(server.url + "/predict", json={"model": "sentiment", "input": texts},
                           timeout=60).json()["predictions"]
    expected = {i: p["label"] for i, p in enumerate(reference)}
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results["bad"]) == len(results["good"]) == 1000
    assert max(results["bad"]) < 500 and min(results["bad"]) >= 400
    assert all(status == 200 and label == expected[i] for i, status, label in results["good"])


def test_api_key_and_sigterm_drain(artifacts):
    root, _ = artifacts
    running = Server(root, "--max-wait-ms", "50", env={"PROMPTKIT_API_KEY": "s3cret"})
    try:
        assert httpx.post(running.url + "/predict", json={"model": "sentiment", "input": "x"}
                          ).status_code == 401
        assert httpx.post(running.url + "/predict", json={"model": "sentiment", "input": "x"},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(running.url + "/healthz").status_code == 200  # probes need no key
        headers = {"Authorization": "Bearer s3cret"}
        answers: list[int] = []
        finished: list[float] = []
        long_input = " ".join(["good film"] * 60)

        def call() -> None:
            try:
                answers.append(httpx.post(running.url + "/predict", headers=headers, timeout=60,
                                          json={"model": "sentiment", "input": [long_input] * 16}
                                          ).status_code)
                finished.append(time.time())
            except httpx.ConnectError:
                answers.append(-1)  # never accepted: the server had stopped listening

        threads = [threading.Thread(target=call) for _ in range(24)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        signalled = time.time()
        running.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        assert any(t > signalled for t in finished), "requests were still running at SIGTERM"
        assert running.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        accepted = [a for a in answers if a != -1]
        assert accepted and all(a == 200 for a in accepted), answers  # none lost once accepted
        output = running.process.stdout.read()
        assert "s3cret" not in output
    finally:
        running.stop()


def test_length_groups_are_the_cheapest_cut():
    import itertools

    from promptkit.serve.batching import length_groups

    def cost(groups, lengths, pass_cost):
        return sum(pass_cost + len(g) * max(lengths[i] for i in g) for g in groups)

    lengths = [5, 400, 6, 380, 90, 7, 100]
    groups = length_groups(lengths, pass_cost=50)
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[5, 6, 7], [90, 100], [380, 400]]
    # a pass dearer than any padding: one group; free passes: nothing padded at all
    assert length_groups(lengths, pass_cost=10**6) == [sorted(range(7), key=lengths.__getitem__)]
    assert all(len({lengths[i] for i in g}) == 1 for g in length_groups(lengths, pass_cost=0))
    # exact: no contiguous cut of the sorted lengths is cheaper (all 2^(n-1) cuts tried)
    order = sorted(range(7), key=lengths.__getitem__)
    for pass_cost in (0, 30, 120, 500):
        found = cost(length_groups(lengths, pass_cost), lengths, pass_cost)
        for cuts in itertools.product([False, True], repeat=6):
            split, current = [], [order[0]]
            for index, cut in zip(order[1:], cuts, strict=True):
                if cut:
                    split.append(current)
                    current = []
                current.append(index)
            assert found <= cost([*split, current], lengths, pass_cost) + 1e-9


def test_monitor_command_reads_the_request_log(server, artifacts, tmp_path):
    root, _ = artifacts
    texts = [r["text"] for r in toy_classification(30, seed=11)]
    httpx.post(server.url + "/predict", json={"model": "sentiment", "input": texts}, timeout=60)
    page = tmp_path / "drift.html"
    result = subprocess.run([sys.executable, "-m", "promptkit", "monitor", str(server.log),
                             "--reference", str(root / "sentiment"), "--model", "sentiment",
                             "--window", "20", "--out", str(page)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["windows"] >= 2 and summary["model"] == "sentiment"
    assert set(summary["drift"]["tests"]) == {"labels_chi2", "confidence_ks", "inputs_mmd"}
    assert "<svg" in page.read_text()
    missing = subprocess.run([sys.executable, "-m", "promptkit", "monitor", str(server.log),
                              "--reference", str(root / "sentiment"), "--model", "nobody"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "holds no requests" in missing.stderr
