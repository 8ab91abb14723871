"""Chat templates: messages -> prompt text, exactly as HF transformers and llama-cpp-python render them.

    resolve_template(chat_template, metadata, fallback_name) -> jinja source
        chat_template (a NAMED name, a GGUF's own `tokenizer.chat_template.<name>`, or jinja source)
        > the GGUF's `tokenizer.chat_template` > fallback_name (models.yaml) > TemplateError.
    render(template, messages, bos_token=, eos_token=, add_generation_prompt=, **extra) -> str

Rendering follows transformers' apply_chat_template: jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, loopcontrols, `{% generation %}` passed through, the globals
raise_exception and strftime_now, a tojson filter that neither escapes HTML nor sorts keys,
tools=None, documents=None unless given, and deep copies of messages and extra variables.

Templates are untrusted and render only inside jinja_sandbox (see its guarantee).
"""
from __future__ import annotations

from collections.abc import Mapping

from .jinja_sandbox import TemplateError, render_sandboxed

__all__ = ["TemplateError", "NAMED", "resolve_template", "render"]

# -- named fallbacks ------------------------------------------------------------------------------------
# mistral-instruct: the spacing of Mistral-7B-Instruct-v0.2's and Mixtral-8x7B-Instruct-v0.1's templates
# (the ones their GGUF files carry), with an optional system message folded into the first user turn as
# Mistral's later Instruct templates do (system + "\n\n" + user).
_MISTRAL = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
# llama-2: meta-llama/Llama-2-7b-chat-hf's template, plus a raise for roles other than user/assistant
_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# chatml: transformers' former default template
_CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NAMED: dict[str, str] = {"mistral-instruct": _MISTRAL, "llama-2": _LLAMA2, "chatml": _CHATML}


def _named(name: str, metadata: Mapping) -> str:
    if name in NAMED:
        return NAMED[name]
    own = metadata.get(f"tokenizer.chat_template.{name}")  # GGUF files may carry extra named templates
    if isinstance(own, str) and own:
        return own
    raise TemplateError(f"unknown chat template {name[:60]!r}; named templates: {', '.join(sorted(NAMED))}")


def resolve_template(chat_template: str | None, metadata: Mapping, fallback_name: str | None = None) -> str:
    """The jinja source to render: chat_template (a name or jinja source), else the GGUF's own, else the
    named fallback_name; TemplateError when none applies or a name is unknown."""
    if chat_template is not None:
        if not isinstance(chat_template, str):
            raise TemplateError(f"chat template must be a name or jinja source, "
                                f"not {type(chat_template).__name__}")
        return chat_template if "{" in chat_template else _named(chat_template, metadata)
    own = metadata.get("tokenizer.chat_template")
    if isinstance(own, str) and own.strip():
        return own
    if fallback_name is not None:
        return _named(fallback_name, metadata)
    raise TemplateError("the model has no tokenizer.chat_template and no fallback is configured; "
                        f"name one of: {', '.join(sorted(NAMED))}")


def render(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra) -> str:
    """Render jinja source (or a NAMED template's name) over messages; extra become template variables
    (tools and documents default to None, as transformers passes them). Raises TemplateError only."""
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(f"messages must be a list of dicts, not {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise TemplateError(f"messages[{i}] must be a dict with a string 'role'")
    if not isinstance(template, str):
        raise TemplateError(f"chat template must be jinja source or a name, not {type(template).__name__}")
    return render_sandboxed(NAMED.get(template, template),
                            {"tools": None, "documents": None, **extra, "messages": messages,
                             "bos_token": bos_token, "eos_token": eos_token,
                             "add_generation_prompt": add_generation_prompt})
