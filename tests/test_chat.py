"""chat: prompts identical to llama-cpp-python's Jinja2ChatFormatter and transformers' renderer (the
oracles), golden strings for the named fallbacks, hostile templates, template resolution.

The named fallbacks are also checked against the real templates they stand for (Mistral-7B-Instruct-v0.2 /
Mixtral-8x7B-Instruct-v0.1 and Llama-2-7b-chat-hf, from their tokenizer_config.json), rendered by the oracle.
"""
import resource
import signal
import time

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from gguf_runner.chat import NAMED, TemplateError, render, resolve_template
from gguf_runner.gguf_file import GGUFFile

# -- oracles -------------------------------------------------------------------------------------------


def llama_cpp_render(template, messages, *, bos_token="", eos_token="", add_generation_prompt=True, **kw):
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token,
                              add_generation_prompt=add_generation_prompt)
    return fmt(messages=messages, **kw).prompt


@pytest.fixture(scope="module")
def hf_render():
    """transformers' own renderer (apply_chat_template's), when transformers is installed."""
    ctu = pytest.importorskip("transformers.utils.chat_template_utils")

    def run(template, messages, *, add_generation_prompt=True, tools=None, **kw):
        out, _ = ctu.render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                           add_generation_prompt=add_generation_prompt, **kw)
        return out[0]
    return run


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_path):
    f = GGUFFile(smollm2_path)
    try:
        md = dict(f.metadata)
    finally:
        f.close()
    tokens = md["tokenizer.ggml.tokens"]
    return md, tokens[md["tokenizer.ggml.bos_token_id"]], tokens[md["tokenizer.ggml.eos_token_id"]]


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "user": [u("Hello!")],
    "system+user": [s("You are terse."), u("Hello!")],
    "multi-turn": [u("Hi"), a("Hello! How can I help?"), u("Name a colour."), a("Blue."), u("Another?")],
    "system+multi-turn": [s("Be brief."), u("Hi"), a("Hello!"), u("How?")],
    "ends with assistant": [u("Hi"), a("Hello!")],
    "unicode and spacing": [s("  Réponds en français.\n"), u("  naïve café 😀\n\tcode:\n  x = 1  "),
                            a("\n D'accord ! \n"), u("日本語?")],
    "empty content": [u(""), a(""), u("")],
}

# -- SmolLM2's own template: identical to llama-cpp-python and transformers ------------------------------


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_smollm2_template_matches_oracles(smollm2_meta, hf_render, conv, add_generation_prompt):
    md, bos, eos = smollm2_meta
    template = resolve_template(None, md)
    assert template == md["tokenizer.chat_template"] and "<|im_start|>" in template
    messages = CONVERSATIONS[conv]
    ours = render(template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)
    assert ours == llama_cpp_render(template, messages, bos_token=bos, eos_token=eos,
                                    add_generation_prompt=add_generation_prompt)
    assert ours == hf_render(template, messages, add_generation_prompt=add_generation_prompt,
                             bos_token=bos, eos_token=eos)
    if conv == "user" and add_generation_prompt:  # and what it looks like
        assert ours == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")


def test_large_prompt_is_not_a_limit(smollm2_meta):
    """A prompt far beyond any context window (600k characters) still renders exactly, inside the
    sandbox's time limit (which would raise TemplateError)."""
    md, bos, eos = smollm2_meta
    template = md["tokenizer.chat_template"]
    messages = [u("word " * 60_000), a("ok " * 20_000), u("ünï " * 30_000)]
    ours = render(template, messages, bos_token=bos, eos_token=eos)
    assert ours == llama_cpp_render(template, messages, bos_token=bos, eos_token=eos)

# -- named fallbacks: golden strings and the real templates ----------------------------------------------


# transformers' documentation conversation; Mixtral-8x7B-Instruct-v0.1's output for it is well known
HF_EXAMPLE = [u("Hello, how are you?"), a("I'm doing great. How can I help you today?"),
              u("I'd like to show off how chat templating works!")]

GOLDEN = [
    ("mistral-instruct", HF_EXAMPLE, True,
     "<s>[INST] Hello, how are you? [/INST]I'm doing great. How can I help you today?</s>"
     "[INST] I'd like to show off how chat templating works! [/INST]"),
    ("mistral-instruct", [s("You are a pirate."), u("Hi"), a("Arr!"), u("Where?")], True,
     "<s>[INST] You are a pirate.\n\nHi [/INST]Arr!</s>[INST] Where? [/INST]"),
    ("mistral-instruct", [s("Sys"), u("Hi"), a("Arr!")], False, "<s>[INST] Sys\n\nHi [/INST]Arr!</s>"),
    ("mistral-instruct", [u(" padded ")], False, "<s>[INST]  padded  [/INST]"),
    ("llama-2", [s("You are a friendly chatbot who always responds in the style of a pirate"),
                 u("How many helicopters can a human eat in one sitting?")], True,
     "<s>[INST] <<SYS>>\nYou are a friendly chatbot who always responds in the style of a pirate\n<</SYS>>\n\n"
     "How many helicopters can a human eat in one sitting? [/INST]"),
    ("llama-2", [s("Sys"), u("Hi"), a("Hello!"), u("How?")], True,
     "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How? [/INST]"),
    ("llama-2", HF_EXAMPLE, True,
     "<s>[INST] Hello, how are you? [/INST] I'm doing great. How can I help you today? </s>"
     "<s>[INST] I'd like to show off how chat templating works! [/INST]"),
    ("llama-2", [u("  Hi  "), a("\n Hello! \n")], False, "<s>[INST] Hi [/INST] Hello! </s>"),
    ("chatml", [s("Sys"), u("Hi"), a("Hello!"), u("How?")], True,
     "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
     "<|im_end|>\n<|im_start|>user\nHow?<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml", [u("Hi"), a("Hello!")], False,
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"),
]


@pytest.mark.parametrize("name, messages, add_generation_prompt, expected", GOLDEN)
def test_named_golden(name, messages, add_generation_prompt, expected):
    got = render(NAMED[name], messages, bos_token="<s>", eos_token="</s>",
                 add_generation_prompt=add_generation_prompt)
    assert got == expected
    assert render(name, messages, bos_token="<s>", eos_token="</s>",  # a name works as well
                  add_generation_prompt=add_generation_prompt) == expected


# mistralai/Mistral-7B-Instruct-v0.2 and Mixtral-8x7B-Instruct-v0.1 (the template their GGUF files carry)
MISTRAL_REAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
# meta-llama/Llama-2-7b-chat-hf
LLAMA2_REAL = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_named_match_real_templates(smollm2_meta, conv, add_generation_prompt):
    messages = CONVERSATIONS[conv]
    kw = dict(bos_token="<s>", eos_token="</s>", add_generation_prompt=add_generation_prompt)
    assert render("llama-2", messages, **kw) == llama_cpp_render(LLAMA2_REAL, messages, **kw)
    # Mistral's real v0.2 template has no system role; ours folds it into the first user turn
    mistral = render("mistral-instruct", messages, **kw)
    if messages[0]["role"] == "system":
        folded = [u(messages[0]["content"] + "\n\n" + messages[1]["content"]), *messages[2:]]
        assert mistral == llama_cpp_render(MISTRAL_REAL, folded, **kw)
        # SmolLM2's template is chatml plus a default system prompt that a system message replaces
        md, _, _ = smollm2_meta
        assert render("chatml", messages, **kw) == llama_cpp_render(md["tokenizer.chat_template"], messages, **kw)
    else:
        assert mistral == llama_cpp_render(MISTRAL_REAL, messages, **kw)


BAD_TURNS = [
    ([a("Hi")], "alternate"),
    ([u("Hi"), u("again")], "alternate"),
    ([u("Hi"), a("Hello"), a("more")], "alternate"),
    ([u("Hi"), a("Hello"), s("late system")], "alternate"),
    ([u("Hi"), {"role": "tool", "content": "42"}], "Only user and assistant roles are supported"),
]


@pytest.mark.parametrize("messages, fragment", BAD_TURNS)
@pytest.mark.parametrize("name, real", [("mistral-instruct", MISTRAL_REAL), ("llama-2", LLAMA2_REAL)])
def test_named_reject_bad_turns(name, real, messages, fragment):
    with pytest.raises(TemplateError, match=fragment) as e:
        render(name, messages, bos_token="<s>", eos_token="</s>")
    if fragment == "alternate":  # the real template raises the same complaint
        with pytest.raises(ValueError) as real_e:
            llama_cpp_render(real, messages, bos_token="<s>", eos_token="</s>")
        assert "alternate" in str(real_e.value)
    assert "\n" not in str(e.value)


def test_chatml_accepts_any_roles():
    messages = [u("Hi"), {"role": "tool", "content": "42"}, u("so?")]
    assert render("chatml", messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>user\nso?<|im_end|>\n")

# -- benign templates using everything real templates use: identical to both oracles --------------------


KITCHEN_SINK = """\
{#- exercises what real chat templates use: namespace, macros, caller, filters, tests, loop vars, tojson -#}
{%- set ns = namespace(users=0, sys=none, prev='') %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.sys = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- macro wrap(role, idx) -%}
<{{ role }}:{{ idx }}>{{ caller() }}</{{ role }}>
{%- endmacro %}
{%- macro tree(node, depth=0) -%}
{{ node.name }}{% if node.children %}({% for c in node.children %}{{ tree(c, depth + 1) }}{{ ',' if not loop.last }}{% endfor %}){% endif %}
{%- endmacro %}
{{- bos_token }}
{%- if ns.sys is not none %}SYS[{{ ns.sys }}|{{ ns.sys.split()|length }} words|{{ ns.sys|wordcount }}]
{% endif %}
{%- if tools is not none and tools | length > 0 %}
TOOLS {{ tools | map(attribute='function') | map(attribute='name') | join(', ') }}
{{ tools | tojson }}
{{ tools[0] | tojson(indent=2) }}
{%- for t in tools %}
{{ loop.index }}/{{ loop.length }} {{ t.function.name | title }} {{ t.function.parameters.properties | dictsort | map('first') | list }}
{%- endfor %}
{% endif %}
{%- set user_msgs = loop_messages | selectattr('role', 'equalto', 'user') | list %}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
    {%- call wrap(message['role'] | upper, loop.index0) %}
        {%- if message.content is string %}{{ message.content.strip() }}{% else %}{{ message.content | map(attribute='text') | join(' ') }}{% endif %}
        {%- if message == user_msgs[-1] %} (last user){% endif %}
        {%- if loop.changed(message.role) %}+{% endif %}
        {{- loop.cycle(' odd', ' even') }}
    {%- endcall %}
    {%- if message.tool_calls is defined %}
        {%- for call in message.tool_calls %}[CALL {{ call.function.name }} {{ call.function.arguments | tojson }}]{% endfor %}
    {%- endif %}
    {%- if loop.last and message.role == 'assistant' %}{% break %}{% endif %}
{% endfor %}
{%- set summary %}users={{ ns.users }} n={{ loop_messages | length }} last={{ (messages | last).role }} first={{ (messages | first).role }}{% endset %}
{{- summary | replace('=', ': ') }}
{%- filter upper %} shouted {{ 'text' }}{% endfilter %}
{{ '%s-%05d|%.2f' % ('pct', 42, 3.14159) }} {{ '{}+{}={:>4}'.format(1, 2, 3) }} {{ '%s and %s' | format('a', 'b') }}
{{ [3, 1, 2] | sort }} {{ [3, 1, 2] | sort(reverse=true) | first }} {{ [1, 2, 3] | sum }} {{ [1, 5, 2] | max }} {{ [4, 2] | min }}
{{ ['a', 'b', 'a'] | unique | list }} {{ range(7) | batch(3) | list }} {{ range(7) | slice(2) | list }}
{{ {'b': 1, 'a': 2} | dictsort }} {{ dict(x=1, y=2) | items | list }} {{ {'k': [1, 2]}['k'] + [3] }}
{{ 'abc'[::-1] }} {{ 'ab' * 3 }} {{ 2 ** 10 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 1 ~ 'x' ~ none }} {{ -3 | abs }} {{ '3.7' | float | round }} {{ '12' | int + 1 }}
{{ 'Hello World' | lower | capitalize }} {{ '  pad  ' | trim }}|{{ 'x' | center(7) }}| {{ 'a long sentence here' | truncate(9, true, '..', 0) }} {{ 'one two three' | wordwrap(7) }}
{{ 'line1\nline2' | indent(2) }} {{ 'café <b>&</b>' | striptags }} {{ 'a,b,c'.split(',') | reverse | join('') }} {{ 'x'.join(['1', '2']) }} {{ 'aXbX'.replace('X', '-') }}
{{ none | default('dflt') }} {{ undefined_name | default('undef') }} [{{ undefined_name }}] [{{ messages[0].missing }}] {{ messages[0] is mapping }} {{ 'x' is string }} {{ 3 is divisibleby 3 }} {{ [] is iterable }}
{%- set j = joiner(' | ') %}{% set cyc = cycler('r', 'g') %}
{% for x in range(4) %}{% if x == 1 %}{% continue %}{% endif %}{{ j() }}{{ x }}{{ cyc.next() }}{% endfor %}
{{ tree({'name': 'root', 'children': [{'name': 'a', 'children': [{'name': 'a1'}]}, {'name': 'b'}]}) }}
{%- for item in [{'n': 1, 'kids': [{'n': 2, 'kids': [{'n': 3}]}]}] recursive %} {{ item.n }}@{{ loop.depth }}{% if item.kids %}{{ loop(item.kids) }}{% endif %}{% endfor %}
{{ messages | groupby('role') | map(attribute='grouper') | list }} {{ messages | map(attribute='role') | unique | list | length }} {{ 'é→😀' | tojson }} {{ ['x'] | tojson(ensure_ascii=true) }}
{{ strftime_now('%Y') | length }} {{ {'a': 1} | pprint }} {{ 'x' | string }} {{ [1, 2] | string }} {{ (1, 2) }} {{ {'a': none, 'b': true} }}
{%- if add_generation_prompt %}
{% generation %}<|assistant|>{% endgeneration %}
{%- endif %}
"""
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}}]
SINK_MESSAGES = [
    s("  You are terse.  Very terse. "), u("Hi there"),
    {"role": "assistant", "content": "Hello!",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]},
    u("again"),
]


@pytest.mark.parametrize("tools", [TOOLS, None])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_kitchen_sink_matches_oracles(hf_render, tools, add_generation_prompt):
    kw = dict(bos_token="<s>", eos_token="</s>", add_generation_prompt=add_generation_prompt)
    ours = render(KITCHEN_SINK, SINK_MESSAGES, tools=tools, **kw)
    assert ours == llama_cpp_render(KITCHEN_SINK, SINK_MESSAGES, tools=tools, **kw)
    assert ours == hf_render(KITCHEN_SINK, SINK_MESSAGES, tools=tools, **kw)
    assert "root(a(a1),b)" in ours and " 1@1 2@2 3@3" in ours and "users: 3" in ours
    assert ('"name": "get_weather"' in ours) == (tools is not None)


def test_accumulating_lists_stays_linear():
    """Templates build lists with `ns.l = ns.l + [x]` (the sandbox forbids append); 3000 turns stay
    within the sandbox's time and allocation limits."""
    template = ("{% set ns = namespace(l=[]) %}{% for m in messages %}{% if m.role == 'user' %}"
                "{% set ns.l = ns.l + [m] %}{% endif %}{% endfor %}{{ ns.l | length }} {{ ns.l[-1].content }}")
    messages = [u(f"question {i} " * 20) if i % 2 == 0 else a(f"answer {i}") for i in range(3000)]
    assert render(template, messages) == llama_cpp_render(template, messages)


def test_extra_variables_and_undefined():
    assert render("{{ tools }}|{{ documents }}|{{ date_string }}|{{ x }}", [], x=5) == "None|None||5"
    assert render("{{ tools|length }}", [], tools=[1, 2]) == "2"

# -- hostile templates ------------------------------------------------------------------------------------


HOSTILE = {
    # attribute walks to Python internals, file access, template loading
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os }}",
    "joiner globals": "{{ joiner.__init__.__globals__ }}",
    "self context": "{{ self._TemplateReference__context }}",
    "lipsum globals": "{{ lipsum.__globals__ }}",
    "namespace init": "{{ namespace.__init__.__globals__ }}",
    "raise_exception globals": "{{ raise_exception.__globals__['__builtins__'] }}",
    "attr filter": "{{ ''|attr('__class__') }}",
    "map attribute": "{{ messages|map(attribute='__class__')|list }}",
    "format field": "{{ '{0.__class__.__base__}'.format('') }}",
    "item dunder": "{{ ''['__class__'] }}",
    "namespace dunder key": "{% set ns = namespace() %}{% set ns.__html__ = 1 %}",
    "namespace init key": "{{ namespace(_Namespace__attrs=1) }}",
    "generator frame": "{{ (messages|map('string')).gi_frame }}",
    "list mutation": "{{ messages.append(1) }}",
    "dict mutation": "{{ messages[0].update({'role': 'system'}) }}",
    "open": "{{ open('/etc/passwd').read() }}",
    "include": "{% include '/etc/passwd' %}",
    "import": "{% import 'os' as os %}",
    "from import": "{% from 'os' import system %}",
    "extends": "{% extends '/etc/passwd' %}",
    "block": "{% block body %}x{% endblock %}",
    "str.translate": "{{ 'abc'.translate({97: 'x' * 100000}) }}",
    # time
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops with output": "{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}"
                                "{{ k }}{% endfor %}{% endfor %}{% endfor %}",
    "exponential macros": "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                          "{{ f(0) }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive loop": "{% for x in [1] recursive %}{{ loop(range(100000)) }}{% endfor %}",
    "slices": "{% for s in [1]|slice(100000) %}{% for t in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(10**6) }}",
    # memory
    "string repetition": "{{ 'a' * 10**10 }}",
    "reversed repetition": "{{ 10**10 * 'a' }}",
    "list repetition": "{{ [0] * 10**9 }}",
    "power": "{{ 10 ** (10 ** 10) }}",
    "squaring loop": "{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "doubling ~": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling +": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "macro output": "{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}"
                    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}{% endmacro %}{% set x = m() %}",
    "set block": "{% set s = 'a' * 1000000 %}{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}",
    "filter block": "{% filter upper %}{% for i in range(100000) %}{{ 'a' * 100000 }}{% endfor %}{% endfilter %}",
    "caller doubling": "{% macro m() %}{{ caller() }}{{ caller() }}{% endmacro %}{% call m() %}{% call m() %}"
                       "{% call m() %}{{ 'a' * 1000000 }}{% endcall %}{% endcall %}{% endcall %}",
    "output flood": "{% for i in range(100000) %}{{ 'a' * 1000000 }}{% endfor %}",
    "shared nesting": "{% set ns = namespace(a=['a' * 100000]) %}{% for i in range(60) %}"
                      "{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a }}",
    "shared nesting tojson": "{% set ns = namespace(a=['a' * 1000]) %}{% for i in range(60) %}"
                             "{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a|tojson }}",
    "namespace repr": "{% set ns = namespace(a='') %}{% set l = [ns] * 1000 %}{% set ns.a = 'a' * 100000 %}{{ l }}",
    "autoescape": "{% autoescape true %}{% set ns = namespace(a='') %}{% set l = [ns] * 1000 %}"
                  "{% set ns.a = 'a' * 100000 %}{{ l }}{% endautoescape %}",
    "shared nesting compare": "{% set ns = namespace(a=['x'], b=['x']) %}{% for i in range(60) %}"
                              "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}{{ ns.a == ns.b }}",
    "shared nesting hash": "{% set ns = namespace(a=('x',)) %}{% for i in range(60) %}"
                           "{% set ns.a = (ns.a, ns.a) %}{% endfor %}{{ {ns.a: 1} }}",
    "kept slices": "{% set s = 'a' * 1000000 %}{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                   "{% set ns.l = ns.l + [s[i:]] %}{% endfor %}",
    "fromkeys": "{{ {}.fromkeys(range(100000), 'a' * 1000000) }}",
    "join filter": "{{ range(100000)|join('a' * 100000) }}",
    "join method": "{{ ('a' * 100000).join(range(100000)|map('string')) }}",
    "center filter": "{{ 'a'|center(10**9) }}",
    "ljust method": "{{ 'a'.ljust(999999999) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format nested width": "{{ '{:{}}'.format(1, 999999999) }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "percent star": "{{ '%*d' % (999999999, 1) }}",
    "format filter": "{{ '%999999999s'|format('a') }}",
    "replace filter": "{{ ('a' * 100000)|replace('', 'b' * 100000) }}",
    "replace method": "{{ ('a' * 100000).replace('a', 'b' * 100000) }}",
    "indent": "{{ ('\\n' * 1000000)|indent(1000000) }}",
    "expandtabs": "{{ ('\\t' * 1000000).expandtabs(1000000) }}",
    "to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "tojson indent": "{{ [[1]]|tojson(indent=10**9) }}",
    "sum lists": "{{ [[1] * 100000] * 100000|sum(start=[]) }}",
    "round precision": "{{ 1.5|round(1000000, 'ceil') }}",
    "batch fill": "{{ [1]|batch(10**9, 0)|list }}",
    "sort chars": "{{ ('a' * 1000000)|list|sort }}",
    "urlize": "{{ ('a ' * 500000)|urlize }}",
    "wordwrap": "{{ ('a' * 1000000)|wordwrap(1) }}",
    "split": "{% for i in range(1000) %}{% set x = ('a ' * 500000).split() %}{% endfor %}",
    "strftime": "{{ strftime_now('%c' * 100000) }}",
    # the compiler
    "deep parentheses": "{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}",
    "deep ifs": "{% if 1 %}" * 300 + "x" + "{% endif %}" * 300,
    "deep fors": "{% for i in [1] %}" * 60 + "x" + "{% endfor %}" * 60,
    "huge source": "{{ 'x' }}" * 100_000,
}


@pytest.fixture
def alarm():
    """Turns a hang (a limit that regressed) into a failure instead of a stuck test run."""
    def on_alarm(signum, frame):
        raise TimeoutError("template render did not stop")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_fails_cleanly(alarm, name):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    with pytest.raises(TemplateError) as e:
        render(HOSTILE[name], [u("hi")], bos_token="<s>", eos_token="</s>")
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024
    msg = str(e.value)
    assert msg and "\n" not in msg and len(msg) <= 300
    assert type(e.value) is TemplateError and e.value.__cause__ is None


def test_limits_reset_between_renders():
    with pytest.raises(TemplateError, match="time limit"):
        render(HOSTILE["nested loops"], [])
    with pytest.raises(TemplateError, match="output"):
        render(HOSTILE["output flood"], [])
    assert render("chatml", [u("Hi")]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_callers_messages_are_never_modified():
    """jinja's indent filter does `s += "\n"`, which extends a list in place: render works on copies."""
    messages = [u("Hi"), a("Hello")]
    tools = [dict(TOOLS[0])]
    with pytest.raises(TemplateError, match="indent"):
        render("{{ messages|indent(2) }}{{ tools|indent(2) }}", messages, tools=tools)
    assert messages == [u("Hi"), a("Hello")] and tools == [dict(TOOLS[0])]


def test_raise_exception_message_is_the_templates():
    with pytest.raises(TemplateError) as e:
        render("{{ raise_exception('Tools are not supported.\\nReally.') }}", [])
    assert str(e.value) == "Tools are not supported. Really."

# -- inputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template, messages, fragment", [
    ("chatml", "Hi", "messages must be a list"),
    ("chatml", [{"content": "no role"}], r"messages\[0\]"),
    ("chatml", [u("ok"), "not a dict"], r"messages\[1\]"),
    (None, [u("Hi")], "must be jinja source or a name"),
    ("{% for %}", [u("Hi")], "syntax error"),
    ("{{ messages[0]['content'] + 1 }}", [u("Hi")], "TypeError"),
    ("{{ messages[0].nope.deeper }}", [u("Hi")], "UndefinedError"),
])
def test_bad_inputs(template, messages, fragment):
    with pytest.raises(TemplateError, match=fragment):
        render(template, messages)

# -- resolve_template -------------------------------------------------------------------------------------


OWN = "{{ 'own' }}"


@pytest.mark.parametrize("chat_template, metadata, fallback, expected", [
    ("chatml", {"tokenizer.chat_template": OWN}, "llama-2", NAMED["chatml"]),        # explicit name first
    ("{{ 'x' }}", {"tokenizer.chat_template": OWN}, "llama-2", "{{ 'x' }}"),         # explicit source
    (None, {"tokenizer.chat_template": OWN}, "llama-2", OWN),                        # then the file's own
    (None, {}, "mistral-instruct", NAMED["mistral-instruct"]),                       # then the fallback
    (None, {"tokenizer.chat_template": "  "}, "llama-2", NAMED["llama-2"]),           # blank counts as none
    ("tool_use", {"tokenizer.chat_template.tool_use": OWN}, None, OWN),               # the file's named ones
])
def test_resolve_template_precedence(chat_template, metadata, fallback, expected):
    assert resolve_template(chat_template, metadata, fallback) == expected


@pytest.mark.parametrize("chat_template, metadata, fallback, fragment", [
    ("vicuna", {"tokenizer.chat_template": OWN}, None, "unknown chat template 'vicuna'"),
    (None, {}, "alpaca", "unknown chat template 'alpaca'"),
    (None, {}, None, "no tokenizer.chat_template"),
    (None, {"tokenizer.chat_template": 7}, None, "no tokenizer.chat_template"),
    (42, {}, None, "must be a name or jinja source"),
])
def test_resolve_template_errors(chat_template, metadata, fallback, fragment):
    with pytest.raises(TemplateError, match=fragment) as e:
        resolve_template(chat_template, metadata, fallback)
    if "unknown" in fragment or "no tokenizer" in fragment:  # the message lists the named templates
        assert "chatml, llama-2, mistral-instruct" in str(e.value)


def test_resolve_template_real_file(smollm2_meta):
    md, _, _ = smollm2_meta
    assert resolve_template(None, md, "llama-2") == md["tokenizer.chat_template"]
    assert resolve_template("llama-2", md, None) == NAMED["llama-2"]
