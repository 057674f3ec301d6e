"""API-hosted models: a real OpenAI-compatible server (promptkit serve), and the faults that
only a mocked transport can produce (429 with Retry-After, 500, timeouts, malformed JSON)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import promptkit as pk
from promptkit.api import APIClient, APIError, APISpec, RetryPolicy, parse_spec
from promptkit.testing import (
    llama_cpp_server,
    serving,
    tiny_model,
    toy_classification,
    toy_generation,
)

KEY = "sk-test-7f3a9c"


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "qa"
    adapter = pk.create_adapter("prompt", model=tiny_model("gpt2"), max_new_tokens=4,
                                task=pk.Task.generation(template="closed_book_qa"))
    adapter.fit(toy_generation(8))
    adapter.save(folder)
    return folder


def test_model_specs():
    assert parse_spec("openai:gpt-4o-mini").name == "gpt-4o-mini"
    assert parse_spec("minilm") is None and parse_spec("someone/model") is None
    spec = parse_spec({"provider": "openai", "name": "m", "base_url": "http://h:1/v1/"})
    assert spec.url == "http://h:1/v1" and spec.api_key_env == "OPENAI_API_KEY"


def test_generation_through_a_real_server_is_cached_and_keeps_the_key_out(
        generator_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTKIT_TEST_KEY", KEY)
    questions = [{"question": q} for q in ("what is good", "what is bad", "what is the film",
                                           "what is the plot")] * 2
    with serving(generator_dir, options=["--max-wait-ms", "50"],
                 env={"PROMPTKIT_API_KEY": KEY}) as url:
        model = {"provider": "openai", "name": "qa", "base_url": url + "/v1",
                 "api_key_env": "PROMPTKIT_TEST_KEY"}
        settings = {"model": model, "task": pk.Task.generation(template="closed_book_qa"),
                    "max_new_tokens": 4, "api_cache": str(tmp_path / "cache")}
        adapter = pk.create_adapter("prompt", **settings)
        first = adapter.predict(questions)
        assert len(first) == 8 and all(isinstance(p.text, str) for p in first)
        client = adapter._model
        assert client.calls == 4  # the repeated questions are the same request: cached
        assert client.max_in_flight >= 2  # concurrent requests
        again = pk.create_adapter("prompt", **settings)
        assert [p.text for p in again.predict(questions)] == [p.text for p in first]
        assert again._model.calls == 0  # a rerun sends nothing
        adapter.save(tmp_path / "saved")
        wrong = pk.create_adapter("prompt", **{**settings, "api_cache": None})
        monkeypatch.setenv("PROMPTKIT_TEST_KEY", KEY + "-wrong")
        with pytest.raises(APIError, match="401") as info:
            wrong.predict([{"question": "a question nobody asked"}])
        assert KEY not in str(info.value)
    for path in (tmp_path / "saved").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), path
    assert KEY not in repr(adapter._model) and KEY not in repr(adapter.config)


def _client(handler, attempts=4, **settings):
    delays = []

    async def sleep(seconds):
        delays.append(seconds)

    client = APIClient(APISpec(name="m", base_url="http://api.test/v1"),
                       transport=httpx.MockTransport(handler), sleep=sleep,
                       retry=RetryPolicy(attempts=attempts, initial_delay=0.5, jitter=0.0),
                       **settings)
    return client, delays


def _ok(text="fine"):
    return httpx.Response(200, json={"choices": [{"message": {"content": text}}],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def test_faults_are_retried_honouring_retry_after():
    truncated = httpx.RemoteProtocolError("peer closed connection without sending complete "
                                          "message body (incomplete chunked read)")
    script = [httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(500),
              httpx.ReadTimeout("slow"), httpx.Response(200, content=b'{"choices": [{"mess'),
              truncated, _ok()]

    def handler(request):
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    client, delays = _client(handler, attempts=6)
    answer = client.chat([{"messages": [{"role": "user", "content": "hi"}]}])[0]
    assert answer["choices"][0]["message"]["content"] == "fine"
    assert client.calls == 6 and delays == [7.0, 1.0, 2.0, 4.0, 8.0]  # Retry-After, then backoff
    assert client.usage == {"prompt_tokens": 3, "completion_tokens": 1}


def test_a_failing_batch_keeps_what_finished(tmp_path):
    def handler(request):
        content = json.loads(request.content)["messages"][0]["content"]
        return _ok(content) if content != "bad" else httpx.Response(503)

    client, _ = _client(handler, cache_dir=tmp_path)
    bodies = [{"messages": [{"role": "user", "content": c}]} for c in ("a", "bad", "b")]
    with pytest.raises(APIError, match="failed 4 times.*run again to resume"):
        client.chat(bodies)
    healed, _ = _client(lambda request: _ok(json.loads(request.content)["messages"][0]["content"]),
                        cache_dir=tmp_path)
    answers = healed.chat(bodies)
    assert [a["choices"][0]["message"]["content"] for a in answers] == ["a", "bad", "b"]
    assert healed.calls == 1  # only the one that had failed


def test_a_connection_dropped_every_time_ends_in_a_clear_error():
    def handler(request):
        raise httpx.RemoteProtocolError("incomplete chunked read")

    client, _ = _client(handler, attempts=3)
    with pytest.raises(APIError, match="failed 3 times.*RemoteProtocolError: incomplete chunked"):
        client.chat([{"messages": [{"role": "user", "content": "hi"}]}])


def test_client_errors_are_not_retried():
    client, delays = _client(lambda request: httpx.Response(400, json={"error": {
        "message": "unknown parameter"}}))
    with pytest.raises(APIError, match="HTTP 400.*unknown parameter"):
        client.chat([{"messages": []}])
    assert client.calls == 1 and delays == []


def test_rate_limit_spaces_requests_on_a_fake_clock():
    now = [0.0]

    async def sleep(seconds):
        now[0] += seconds

    client = APIClient(APISpec(name="m", base_url="http://api.test/v1"),
                       transport=httpx.MockTransport(lambda request: _ok()),
                       requests_per_minute=60, clock=lambda: now[0], sleep=sleep)
    client.chat([{"messages": [{"role": "user", "content": str(i)}]} for i in range(100)])
    assert client.calls == 100
    assert now[0] >= 99  # 60 in the first minute, the other 40 one per second after


def test_concurrency_is_bounded():
    async def handler(request):
        await asyncio.sleep(0.01)
        return _ok()

    client = APIClient(APISpec(name="m", base_url="http://api.test/v1"),
                       transport=httpx.MockTransport(handler), max_concurrency=3)
    client.chat([{"messages": [{"role": "user", "content": str(i)}]} for i in range(12)])
    assert client.max_in_flight == 3


def test_server_gives_first_token_logprobs_the_openai_client_reads(generator_dir):
    openai = pytest.importorskip("openai")
    local = pk.load_adapter(generator_dir)
    expected = local.next_token_logprobs(["what is good"], top=5)[0]
    with serving(generator_dir) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        answer = client.chat.completions.create(
            model="qa", messages=[{"role": "user", "content": "what is good"}], max_tokens=1,
            logprobs=True, top_logprobs=5)
        with pytest.raises(openai.BadRequestError, match="max_tokens 1"):
            client.chat.completions.create(
                model="qa", messages=[{"role": "user", "content": "x"}], max_tokens=9,
                logprobs=True, top_logprobs=5)
    tops = answer.choices[0].logprobs.content[0].top_logprobs
    assert [t.token for t in tops] == [t for t, _ in expected]
    assert [t.logprob for t in tops] == pytest.approx([lp for _, lp in expected], abs=1e-4)
    assert answer.choices[0].message.content == expected[0][0]


class _Answers:
    """Stands in for the API client in a scoring-logic test: fixed top_logprobs per prompt."""

    def __init__(self, tops):
        self.tops, self.bodies = tops, []

    def chat(self, bodies):
        self.bodies += bodies
        return [{"choices": [{"logprobs": {"content": [{"top_logprobs": [
            {"token": t, "logprob": lp} for t, lp in self.tops]}]}}]} for _ in bodies]


def test_first_token_scoring_reads_label_words_from_top_logprobs():
    import math

    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    adapter = pk.create_adapter("prompt", model="openai:gpt-test", task=task,
                                api_scoring="first_token")
    adapter._head = "api"
    adapter._model = _Answers([(" Pos", math.log(0.6)), ("neg", math.log(0.2)),
                               ("The", math.log(0.1))])
    prediction = adapter.predict(["a fine film"])[0]
    assert prediction.label == "positive"
    words = task.template_obj.label_words(task.labels)  # a label is the mean of its words

    def mean(label, listed):  # words no listed token starts get the floor: 0.1 / 2
        return sum(listed if w.lower().startswith(("pos", "neg")) else 0.05
                   for w in words[label]) / len(words[label])

    positive, negative = mean("positive", 0.6), mean("negative", 0.2)
    assert prediction.scores["positive"] == pytest.approx(positive / (positive + negative))
    body = adapter._model.bodies[0]
    assert body["max_tokens"] == 1 and body["logprobs"] and body["top_logprobs"] == 20
    adapter._model = _Answers([])
    adapter._model.chat = lambda bodies: [{"choices": [{"message": {"content": "x"}}]}]
    with pytest.raises(pk.errors.ConfigError, match="top_logprobs"):
        adapter.predict(["a fine film"])


def test_whole_label_words_are_scored_from_echoed_prompt_logprobs_as_locally(generator_dir):
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    texts = [r["text"] for r in toy_classification(12, seed=4)]
    local = pk.create_adapter("prompt", model=tiny_model("gpt2"), task=task, chat=False)
    expected = local.predict(texts)
    with serving(generator_dir) as url:
        remote = pk.create_adapter(
            "prompt", task=task, api_cache=None, api_scoring="echo",
            model={"provider": "openai", "name": "qa", "base_url": url + "/v1"})
        got = remote.predict(texts)
    assert remote.scoring_mode_ == "echo"
    assert [p.label for p in got] == [p.label for p in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.scores["positive"] == pytest.approx(b.scores["positive"], abs=1e-4)


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("xllamacpp")
    with llama_cpp_server() as url:
        yield url


def test_generation_through_llama_cpp_keeps_eight_requests_in_flight(llama_server, tmp_path):
    model = {"provider": "openai", "name": "smollm2", "base_url": llama_server,
             "input_price": 0.15, "output_price": 0.6}
    task = pk.Task.generation(template="closed_book_qa")
    settings = {"model": model, "task": task, "max_new_tokens": 12, "max_concurrency": 8,
                "api_cache": str(tmp_path / "cache")}
    adapter = pk.create_adapter("prompt", **settings)
    questions = [{"question": f"What is {n} plus {n}?", "answer": str(2 * n)} for n in range(16)]
    report = pk.Evaluator(task, resamples=20).compare({"api": adapter}, questions)
    answers = [row["text"] for row in report["api"].predictions]
    assert all(answers) and adapter._model.calls == 16
    assert adapter._model.max_in_flight == 8  # as many as allowed, never more
    costs = report["api"].costs  # the evaluator's cost table counts what the API was sent
    assert costs["api_calls"] == 16 and costs["api_completion_tokens"] > 16
    assert costs["api_prompt_tokens"] > 16 * 10
    assert costs["api_cost_usd"] == pytest.approx(
        (costs["api_prompt_tokens"] * 0.15 + costs["api_completion_tokens"] * 0.6) / 1e6, abs=1e-6)
    assert "API tokens in" in report.markdown()
    again = pk.create_adapter("prompt", **settings)
    rerun = pk.Evaluator(task, resamples=20).compare({"api": again}, questions)
    assert [row["text"] for row in rerun["api"].predictions] == answers
    assert rerun["api"].costs["api_calls"] == 0 and rerun["api"].costs["api_cost_usd"] == 0


def test_llama_cpp_classifies_by_first_token_and_says_so(llama_server):
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    reviews = ["a moving, beautifully acted film", "dull, lifeless and far too long",
               "one of the best films of the year", "a tedious mess"]
    model = {"provider": "openai", "name": "smollm2", "base_url": llama_server}
    echo = pk.create_adapter("prompt", model=model, task=task, api_scoring="echo",
                             api_cache=None)
    with pytest.raises(pk.errors.ConfigError, match="no prompt log-probabilities"):
        echo.predict(reviews)  # llama.cpp echoes no prompt log-probabilities: said, not faked
    adapter = pk.create_adapter("prompt", model=model, task=task, api_cache=None)
    with pytest.warns(UserWarning, match="not the same measurement"):
        predictions = adapter.predict(reviews)
    assert adapter.scoring_mode_ == "first_token"
    for prediction in predictions:
        assert prediction.label in task.labels
        assert sum(prediction.scores.values()) == pytest.approx(1.0)
    assert [p.scores for p in adapter.predict(reviews)] == [p.scores for p in predictions]


def test_constrained_generation_names_a_label_only_when_asked(llama_server):
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    reviews = ["a moving, beautifully acted film", "dull, lifeless and far too long",
               "one of the best films of the year", "a tedious mess"]
    model = {"provider": "openai", "name": "smollm2", "base_url": llama_server}
    adapter = pk.create_adapter("prompt", model=model, task=task, api_cache=None,
                                api_scoring="generate")
    predictions = adapter.predict(reviews)
    assert adapter.scoring_mode_ == "generate" and adapter._model.calls == len(reviews)
    for prediction in predictions:  # llama.cpp honours the schema: every answer names a label
        assert prediction.label in task.labels
        assert max(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)


def test_a_label_word_is_parsed_from_free_text():
    from promptkit.adapters.prompt_api import _first_named

    assert _first_named("I'd say Positive, not negative.", ["negative", "positive"]) == "positive"
    assert _first_named("unpositive", ["positive"]) == ""
