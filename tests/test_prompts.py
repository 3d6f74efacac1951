"""Prompt files: [system]/[user] parts, strict variables, clear errors, content-hash versions."""

from __future__ import annotations

import pytest

from smallops import InputError, TemplateError
from smallops.prompts import Prompt, prompt_version


def test_parts_become_messages_in_order():
    prompt = Prompt(
        "{# note #}\n[system]\nBe brief.\n[user]\nHi {{ name }}\n[assistant]\nOk\n"
        "[user]\nAgain {{ name | upper }}"
    )
    assert prompt.render({"name": "ann"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi ann"},
        {"role": "assistant", "content": "Ok"},
        {"role": "user", "content": "Again ANN"},
    ]
    assert prompt.variables == {"name"}


def test_a_missing_input_names_the_variable_before_anything_is_sent():
    prompt = Prompt("[user]\n{{ subject }} {{ body }}")
    with pytest.raises(InputError, match="'body'") as caught:
        prompt.render({"subject": "x"})
    assert "body, subject" in str(caught.value)


def test_an_undefined_attribute_is_an_input_error():
    with pytest.raises(InputError):
        Prompt("[user]\n{{ email.subject }}").render({"email": {}})


def test_text_before_the_first_marker_is_refused():
    with pytest.raises(TemplateError, match=r"\[system\] or \[user\]"):
        Prompt("Hello\n[user]\nHi")


def test_a_prompt_without_a_user_part_is_refused():
    with pytest.raises(TemplateError, match="no \\[user\\] part"):
        Prompt("[system]\nOnly rules")


def test_a_syntax_error_reports_its_line_in_the_file():
    with pytest.raises(TemplateError, match="line 5"):
        Prompt("[system]\nrules\n\n[user]\n{{ broken }")


def test_a_missing_prompt_file_says_where_it_looked(tmp_path):
    with pytest.raises(TemplateError, match="does not exist"):
        Prompt.from_file(tmp_path / "nope.prompt")


def test_the_version_changes_with_everything_that_shapes_the_output():
    base = prompt_version("t", {"a": 1}, "openai:m", {"temperature": 0})
    assert base == prompt_version("t", {"a": 1}, "openai:m", {"temperature": 0})
    assert (
        len(
            {
                base,
                prompt_version("t2", {"a": 1}, "openai:m", {"temperature": 0}),
                prompt_version("t", {"a": 2}, "openai:m", {"temperature": 0}),
                prompt_version("t", {"a": 1}, "openai:n", {"temperature": 0}),
                prompt_version("t", {"a": 1}, "openai:m", {"temperature": 1}),
            }
        )
        == 5
    )
