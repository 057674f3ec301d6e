"""Template rendering, the sandbox, truncation, chat wrapping and the template checker."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import promptkit as pk
from promptkit.errors import TemplateError
from promptkit.template_check import check_paths
from promptkit.templates import Template, available_templates, load_template

FIXTURES = Path(__file__).parent / "fixtures" / "bad_templates"

PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ request.application.__globals__ }}",
    "{{ text.__class__.__base__.__subclasses__() }}",
    "{{ text|attr('__class__') }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ text.format.__globals__ }}",
    "{{ range.__globals__ }}",
    "{% set x = text.__len__ %}{{ x() }}",
]


def test_builtin_library_renders_real_data():
    expected = {"classify", "generate", "sentiment", "topic", "spam", "yes_no_question",
                "sentence_pair", "closed_book_qa", "rag_qa", "summarization"}
    assert expected <= set(available_templates())
    review = pk.datasets.load("rotten_tomatoes")["test"][0]
    faq = pk.datasets.load("python_faq")["test"][0]
    examples = {
        "classify": {"text": review["text"], "labels": ["negative", "positive"]},
        "generate": {"prompt": faq["question"]},
        "sentiment": review,
        "topic": {"text": review["text"], "topic": "grain"},
        "spam": {"text": review["text"]},
        "yes_no_question": {"passage": faq["answer"], "question": "Is Python interpreted"},
        "sentence_pair": {"premise": faq["answer"], "hypothesis": "Python is a language."},
        "closed_book_qa": faq,
        "rag_qa": {**faq, "passages": [{"text": faq["answer"]}]},
        "summarization": {"document": faq["answer"]},
    }
    for name, record in examples.items():
        rendered = load_template(name).render(record)
        assert rendered and "{{" not in rendered, name
    rag = load_template("rag_qa").render({**faq, "passages": [{"text": "P1"}, {"text": "P2"}]})
    assert "[1] P1" in rendered or "[1] P1" in rag
    assert "[2] P2" in rag and "Cite" in rag


def test_undefined_variable_is_an_error():
    template = Template.from_string("Hello {{ name }}")
    with pytest.raises(TemplateError, match="'name' is undefined"):
        template.render({})


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sandbox_payloads_are_stopped(payload, tmp_path):
    marker = tmp_path / "ran"
    template = Template.from_string(payload.replace("'id'", f"'touch {marker}'"))
    with pytest.raises(TemplateError):
        template.render({"text": "x"})
    assert not marker.exists()


def test_include_stays_inside_search_path(tmp_path):
    (tmp_path / "part.j2").write_text("PART {{ text }}")
    main = tmp_path / "main.j2"
    main.write_text("{% include 'part.j2' %}")
    assert Template.from_file(main).render({"text": "ok"}) == "PART ok"
    escape = tmp_path / "escape.j2"
    escape.write_text("{% include '../../etc/passwd' %}")
    with pytest.raises(TemplateError):
        Template.from_file(escape).render({})


def test_user_template_path(tmp_path, monkeypatch):
    (tmp_path / "mine.j2").write_text("{# ---\nname: mine\ntask: classification\n--- #}\n"
                                      "Mine: {{ text }}")
    monkeypatch.setenv("PROMPTKIT_TEMPLATE_PATH", str(tmp_path))
    assert load_template("mine").render({"text": "a"}) == "Mine: a"


def test_truncation_cuts_only_the_marked_field():
    template = load_template("sentiment")
    long = " ".join(f"word{i}" for i in range(200))

    def count(text: str) -> int:
        return len(text.split())

    from promptkit.templates import TruncationStats

    stats = TruncationStats()
    out = template.render_fitted({"text": long}, count, 40, stats)
    assert count(out) <= 40
    assert out.startswith("Review: word0 word1") and out.endswith("Answer:")
    assert stats.count == 1 and stats.tokens > 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats.warn("sentiment", 40)
    assert "1 example(s)" in str(caught[0].message)


def test_chat_template_wraps_prompt(tiny_gpt2, sentiment_task):
    adapter = pk.create_adapter("prompt", model=tiny_gpt2, task=sentiment_task)
    adapter._ensure_model()
    adapter._tokenizer.chat_template = (  # the tokenizer is shared: restored in finally
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        prompt = adapter.prompts([{"text": "good film"}])[0]
        assert prompt.startswith("<|user|>Review: good film") and prompt.endswith("<|assistant|>")
        plain = pk.create_adapter("prompt", model=tiny_gpt2, task=sentiment_task, chat=False)
        plain._ensure_model()
        assert plain.prompts([{"text": "good film"}])[0].startswith("Review: good film")
    finally:
        adapter._tokenizer.chat_template = None


def test_checker_finds_each_mistake():
    findings = check_paths([FIXTURES])
    codes = {(Path(f.path).name, f.code) for f in findings}
    assert ("mistakes.j2", "undefined") in codes
    assert ("mistakes.j2", "unused") in codes
    assert ("mistakes.j2", "single-brace") in codes
    assert ("mistakes.j2", "verbalizer-label") in codes
    assert ("mistakes.j2", "verbalizer-duplicate") in codes
    assert ("header.j2", "header") in codes
    assert ("syntax.j2", "syntax") in codes
    lines = {f.code: f.line for f in findings if Path(f.path).name == "mistakes.j2"}
    assert lines["single-brace"] == 11 and lines["undefined"] == 12


def test_check_cli_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "promptkit", "template", "check", "templates"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "promptkit", "template", "check", str(FIXTURES)],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "single-brace" in bad.stdout and "verbalizer-duplicate" in bad.stdout


def test_saved_adapter_keeps_its_template(tmp_path, tiny_gpt2, toy_data):
    template = tmp_path / "custom.j2"
    template.write_text("{# ---\nname: custom\ntask: classification\n--- #}\nSay: {{ text }}")
    task = pk.Task.classification(["negative", "positive"], template=str(template))
    adapter = pk.create_adapter("prompt", model=tiny_gpt2, task=task, chat=False)
    adapter.fit(toy_data)
    adapter.save(tmp_path / "saved")
    template.write_text("{# ---\nname: custom\ntask: classification\n--- #}\nCHANGED {{ text }}")
    again = pk.load_adapter(tmp_path / "saved")
    assert again.prompts([{"text": "x"}])[0] == "Say: x"


@pytest.mark.parametrize("text", ["{{", "{% for %}", "{# unclosed", "{{ x | nosuchfilter }}",
                                  "{{ 1/0 }}", "{{ x.y.z }}"])
def test_bad_templates_raise_template_errors(text):
    with pytest.raises(TemplateError):
        Template.from_string(text).render({"x": 1})


def test_control_characters_are_plain_text():
    assert Template.from_string("a\x00\x01{{ x }}").render({"x": 1}) == "a\x00\x011"


@pytest.mark.parametrize(("source", "limit"), [
    ("{{ 'a' * 1000000000 }}", "max_output_chars"),
    ("{% for i in range(99999) %}{{ 'abcdefghijkl' }}{% endfor %}", "max_output_chars"),
    ("{{ ('ab' ~ 'c') * 999999999 }}", "max_output_chars"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
     "timeout"),
    ("{% set x = range(99999) | list %}{% for a in x %}{% for b in x %}{% endfor %}{% endfor %}",
     "timeout"),
])
def test_rendering_is_bounded(source, limit):
    import time

    template = Template.from_string(source)
    template.timeout = 0.5
    start = time.perf_counter()
    with pytest.raises(TemplateError, match=limit):
        template.render({})
    assert time.perf_counter() - start < 5
    assert Template.from_string("{{ 'ok' * 3 }}").render({}) == "okokok"  # still renders


def test_cli_render_of_a_huge_template_is_refused(tmp_path):
    bomb = tmp_path / "bomb.j2"
    bomb.write_text("{# ---\nname: bomb\ntask: generation\n--- #}\n{{ 'a' * 1000000000 }}")
    result = subprocess.run([sys.executable, "-m", "promptkit", "template", "render", str(bomb),
                             "--example", "{}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stdout) < 1000
    assert "max_output_chars" in result.stderr
