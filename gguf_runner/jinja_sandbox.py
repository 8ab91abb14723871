"""A jinja2 sandbox for untrusted chat templates (they come from GGUF files).

Templates are untrusted: they come from GGUF files (llama-cpp-python's CVE-2024-34359 rendered them
unsandboxed). Guarantee: rendering any template source over any messages returns a string or raises
TemplateError with a one-line message, never another exception; it stops after TIME_LIMIT plus at most
one bounded operation (under 2 s on this 2-core machine); the values it builds total about MAX_ALLOC
bytes at most. Compiling, once per source (then cached), takes at most ~1 s here (MAX_TEMPLATE). How:
  - access: the immutable sandbox (no `_` attributes, and an unsafe access raises at once instead of
    yielding an undefined; no mutating methods of lists, dicts, sets); no loader, and include, import,
    extends and block are refused at compile time; no `lipsum`; namespace() refuses `_` names; only
    listed str methods (not translate, maketrans, ...).
  - time: a deadline checked at every call, attribute or item access, operator, filter, loop iteration
    and piece of output; calls nested deeper than MAX_DEPTH (macro recursion) are refused.
  - space: operations that multiply sizes (`*`, `**`, `%` and str.format widths, join, replace,
    indent, center, expandtabs, ...) are checked BEFORE they run; range() is capped at 100000 by jinja.
    Every value produced is checked after: strings up to MAX_STR characters, containers up to MAX_ITEMS
    items and an expanded size (shared parts counted at each occurrence) up to MAX_STR, which bounds
    printing, comparing and hashing them; all are charged to MAX_ALLOC. All output, buffered by macros
    or not, counts against MAX_OUTPUT.
So a conversation of more than about MAX_STR characters (~250k tokens) is refused by most templates.
The guards are attached by rewriting the template's AST once: loops, output, `~` and literals call them.
"""
from __future__ import annotations

import collections
import contextvars
import copy
import functools
import json
import re
import string
import sys
import time
import types
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

__all__ = ["TemplateError", "render_sandboxed"]
TIME_LIMIT = 1.0          # seconds per render
MAX_TEMPLATE = 1 << 16    # characters of template source (compiling 64k takes ~1 s here)
MAX_STR = 1 << 20         # characters in one string a template produces (a prompt: ~250k tokens)
MAX_ITEMS = 1 << 17       # items in one list / tuple / dict a template produces
MAX_OUTPUT = 1 << 22      # characters output in one render, counting text buffered by macros and blocks
MAX_ALLOC = 1 << 27       # bytes (estimated) of values produced in one render
MAX_INT_BITS = 1 << 14    # integers produced by * and **
MAX_DEPTH = 64            # nested calls: macros calling macros, recursive loops


class TemplateError(ValueError):
    """A chat template that cannot be found, compiled or rendered; the message is one line."""




def render_sandboxed(source: str, variables: dict) -> str:
    """Render jinja source over variables (deep-copied first, as transformers does: jinja's indent
    filter extends a list it is given). Raises TemplateError only."""
    compiled = _compile(source)
    token = _BUDGET.set(_Budget(time.monotonic() + TIME_LIMIT))
    try:
        return compiled.render(copy.deepcopy(variables))
    except (TemplateError, _Refused) as e:
        raise TemplateError(_line(str(e))) from None
    except SecurityError as e:
        raise TemplateError(_line(f"chat template blocked: {e}")) from None
    except Exception as e:  # untrusted code: whatever it raised (RecursionError, MemoryError, ...)
        raise TemplateError(_line(f"chat template failed: {type(e).__name__}: {e}")) from None
    finally:
        _BUDGET.reset(token)

def _line(msg: str) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= 300 else msg[:297] + "..."


# -- per-render budget ----------------------------------------------------------------------------------
class _Refused(Exception):
    """A limit was hit or the template called raise_exception; the message is the user's."""


class _Budget:
    __slots__ = ("deadline", "alloc", "output", "depth", "recent")

    def __init__(self, deadline: float):
        self.deadline, self.alloc, self.output, self.depth = deadline, 0, 0, 0
        self.recent = collections.deque(maxlen=8)  # (container, expanded size) of the last ones accounted

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Refused(f"chat template exceeded its time limit ({TIME_LIMIT:g} s)")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_budget", default=None)


def _tick() -> None:
    b = _BUDGET.get()
    if b is not None:
        b.tick()


def _refuse_if(cond: bool, what: str) -> None:
    if cond:
        raise _Refused(f"chat template refused: {what}")


def _size(v, known: int | None = None) -> int:
    """Expanded size of a container (_text_size), remembered for the last few: `ns.l = ns.l + [x]` in
    a loop then costs O(len([x])) per step instead of O(len(ns.l))."""
    b = _BUDGET.get()
    for obj, n in b.recent if b is not None and known is None else ():
        if obj is v:
            return n
    n = _text_size(v, MAX_STR) if known is None else known
    if b is not None:
        b.recent.append((v, n))
    return n


def _account(v, size: int | None = None, shared: bool = False):
    """Check a value the template produced against the limits and charge it to the budget; returns v.
    size: its expanded size when known; shared: a container of existing objects (a literal, a slice,
    `+`), which allocates its slots only, not its strings as a call's result (split()) may."""
    if isinstance(v, (str, bytes)):
        (limit, unit), n, cost = _limit(v), len(v), sys.getsizeof(v)
    elif isinstance(v, (list, tuple, dict, set, frozenset)):
        (limit, unit), n = _limit(v), len(v)
        _refuse_if(n > limit, f"a value of {n} {unit} (limit {limit})")
        # the expanded size (shared parts counted per occurrence) bounds comparing, hashing and printing
        # v, which C does with no deadline checks: [x, x] nested 60 deep is 2**60 comparisons
        _refuse_if(_size(v, size) > MAX_STR, f"a nested value of over {MAX_STR} elements and characters")
        items = v.values() if isinstance(v, dict) else v
        cost = sys.getsizeof(v) + (0 if shared else sum(sys.getsizeof(x) for x in items if isinstance(x, str)))
    elif isinstance(v, Namespace):
        n, limit, unit, cost = 0, 1, "", 256
    else:
        return v
    _refuse_if(n > limit, f"a value of {n} {unit} (limit {limit})")
    b = _BUDGET.get()
    if b is not None:
        b.alloc += cost
        _refuse_if(b.alloc > MAX_ALLOC, f"more than {MAX_ALLOC >> 20} MiB allocated")
    return v


def _account_shared(v):
    return _account(v, shared=True)


def _text_size(value, limit: int, indent: int = 0) -> int:
    """Estimate of len(str(value)) (JSON or pprint with `indent` per level), counting shared objects
    once per occurrence; stops as soon as it passes limit, so it costs O(limit) at most."""
    total, stack = 0, [(value, 0)]
    while stack and total <= limit:
        x, depth = stack.pop()
        if isinstance(x, (str, bytes)):
            total += len(x) + 3
        elif isinstance(x, int):
            total += x.bit_length() // 3 + 2
        elif isinstance(x, (list, tuple, set, frozenset, dict, Namespace)):
            if isinstance(x, Namespace):
                x = object.__getattribute__(x, "_Namespace__attrs")
            total += 2 + len(x) * (2 + indent * (depth + 1) + (1 if indent else 0))
            if total <= limit:
                stack.extend((c, depth + 1) for c in ([*x.keys(), *x.values()] if isinstance(x, dict) else x))
        else:
            total += 64  # numbers, None, Undefined, loop/cycler/macro objects: short reprs
    return total


def _check_text(*values) -> None:
    for v in values:
        if not isinstance(v, str):
            _refuse_if(_text_size(v, MAX_STR) > MAX_STR, f"turning a value of over {MAX_STR} characters into text")


def _to_text(v) -> str:
    _check_text(v)
    return str(v)


# -- operator and method checks -------------------------------------------------------------------------
_SEQ = (str, bytes, list, tuple)
_PCT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?.", re.S)


def _check_percent(fmt: str, args) -> None:
    total = len(fmt)
    for m in _PCT_SPEC.finditer(fmt):
        _refuse_if("*" in (m.group(1), m.group(2)), "'*' widths in % formatting")
        total += int(m.group(1) or 0) + int(m.group(2) or 0)
    _refuse_if(total + _text_size(args, MAX_STR) > MAX_STR, f"% formatting to over {MAX_STR} characters")


def _check_format(fmt: str) -> None:
    total = len(fmt)
    for _, _, spec, _ in string.Formatter().parse(fmt):
        _refuse_if("{" in (spec or ""), "nested format specs")
        total += sum(int(d) for d in re.findall(r"\d+", spec or ""))
    _refuse_if(total > MAX_STR, f"str.format widths over {MAX_STR} characters")


def _limit(seq) -> tuple[int, str]:
    return (MAX_STR, "characters") if isinstance(seq, (str, bytes)) else (MAX_ITEMS, "items")


def _check_binop(op: str, a, b) -> None:
    if op == "*":
        if isinstance(a, int) and isinstance(b, _SEQ):
            a, b = b, a
        if isinstance(a, _SEQ) and isinstance(b, int):
            limit, unit = _limit(a)
            _refuse_if(len(a) * max(b, 0) > limit, f"'*' making over {limit} {unit}")
        elif isinstance(a, int) and isinstance(b, int):
            _refuse_if(a.bit_length() + b.bit_length() > MAX_INT_BITS, f"an integer over {MAX_INT_BITS} bits")
    elif op == "**" and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        _refuse_if((a.bit_length() - 1) * b > MAX_INT_BITS, f"an integer over {MAX_INT_BITS} bits")
    elif op == "+" and isinstance(a, _SEQ) and isinstance(b, _SEQ) and type(a) is type(b):
        limit, unit = _limit(a)
        _refuse_if(len(a) + len(b) > limit, f"'+' making over {limit} {unit}")
    elif op == "%" and isinstance(a, (str, bytes)):
        _check_percent(a if isinstance(a, str) else a.decode("latin-1"), b)


# str/bytes methods templates may call; the rest (translate, maketrans, ...) are refused. format and
# format_map arrive wrapped by wrap_str_format (sandboxed fields), never as these builtins.
_STR_METHODS = frozenset(
    "capitalize casefold center count decode encode endswith expandtabs find hex index "
    "isalnum isalpha isascii isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle "
    "isupper join ljust lower lstrip partition removeprefix removesuffix replace rfind rindex rjust "
    "rpartition rsplit rstrip split splitlines startswith strip swapcase title upper zfill".split())


def _join_args(sep, iterable):
    """Materialize what join() will join and check the result's size first."""
    items = list(iterable)
    _refuse_if(len(items) > MAX_ITEMS, f"joining over {MAX_ITEMS} items")
    total = sum(len(x) if isinstance(x, (str, bytes)) else _text_size(x, MAX_STR) for x in items)
    _refuse_if(total + len(sep) * max(len(items) - 1, 0) > MAX_STR, f"joining to over {MAX_STR} characters")
    return items


def _check_replace(s, old, new, count=-1) -> None:
    if isinstance(s, (str, bytes)) and isinstance(old, type(s)) and isinstance(new, type(s)):
        n = s.count(old) if old else len(s) + 1
        n = n if count is None or count < 0 else min(n, count)
        _refuse_if(len(s) + n * (len(new) - len(old)) > MAX_STR, f"replace() to over {MAX_STR} characters")


def _check_method(fn, args: tuple, kwargs: dict) -> tuple:
    """Checks for calls to builtin methods of str/bytes/int; returns the (possibly materialized) args."""
    owner = getattr(fn, "__self__", None)
    if not isinstance(fn, types.BuiltinMethodType) or not isinstance(owner, (str, bytes, int)):
        return args
    for a in (*args, *kwargs.values()):
        _refuse_if(isinstance(a, int) and abs(a) > MAX_STR, f"an argument of {a} to {fn.__name__}()")
    if isinstance(owner, int):
        return args
    name = fn.__name__
    _refuse_if(name not in _STR_METHODS, f"str.{name}()")
    if name == "join" and args:
        return (_join_args(owner, args[0]), *args[1:])
    if name == "replace":
        _check_replace(owner, *args, **kwargs)
    elif name == "expandtabs":
        size = (args or [kwargs.get("tabsize", 8)])[0]
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
        _refuse_if(len(owner) + tabs * size > MAX_STR, f"expandtabs() to over {MAX_STR} characters")
    return args


# -- filters --------------------------------------------------------------------------------------------
def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' tojson: no HTML escaping, keys in insertion order, indent/separators allowed."""
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    _refuse_if(width > 16 or any(len(s) > 16 for s in separators or ()), "tojson indent/separators over 16")
    _refuse_if(_text_size(x, MAX_STR, indent=width + 2) > MAX_STR, f"tojson to over {MAX_STR} characters")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _pre_indent(s, width=4, *_, **__):
    _refuse_if(not isinstance(s, str), f"|indent of a {type(s).__name__}")  # it would do `s += "\n"`
    w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _refuse_if(len(str(s)) + (str(s).count("\n") + 1) * w > MAX_STR, f"indent to over {MAX_STR} characters")


def _pre_wordwrap(s, width=79, break_long_words=True, wrapstring=None, *_, **kw):
    lines = len(str(s)) // max(int(width), 1) + str(s).count("\n") + 1
    wrap = kw.get("wrapstring", wrapstring) or "\n"
    _refuse_if(len(str(s)) + lines * len(wrap) > MAX_STR, f"wordwrap to over {MAX_STR} characters")


def _pre_sum(iterable, attribute=None, start=0):
    _refuse_if(not isinstance(start, (int, float)), "sum() with a non-numeric start")


# filters that do not turn their input into text; of these, _PER_ITEM run Python code per item
_STRUCTURAL = frozenset("abs attr batch count d default dictsort first float groupby int items join last "
                        "length list map max min random reject rejectattr reverse round select selectattr "
                        "slice sort sum tojson unique".split())
_PER_ITEM = frozenset("batch dictsort groupby max min slice sort unique urlize wordwrap title pprint".split())
def _pre_round(value, precision=0, method="common"):
    _refuse_if(abs(precision) > 64, "round() precision over 64")  # ceil and floor compute 10**precision


_PRECHECK = {"indent": _pre_indent, "wordwrap": _pre_wordwrap, "sum": _pre_sum, "round": _pre_round,
             "replace": lambda s, old, new, count=None: _check_replace(str(s), str(old), str(new), count),
             "format": lambda s, *a, **kw: _check_percent(str(s), kw or a)}


def _guard_filter(name: str, f):
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # context/env passed first

    @functools.wraps(f)  # keeps jinja_pass_arg
    def guarded(*args, **kwargs):
        _tick()
        head, (value, *rest) = args[:skip], args[skip:]
        for a in (*rest, *kwargs.values()):
            _refuse_if(isinstance(a, int) and abs(a) > MAX_STR, f"an argument of {a} to |{name}")
        if name in _PER_ITEM:
            n = len(value) if hasattr(value, "__len__") else 0
            _refuse_if(n > MAX_ITEMS, f"|{name} over {n} items or characters (limit {MAX_ITEMS})")
        if name not in _STRUCTURAL:
            _check_text(value, *rest, *kwargs.values())
        if name in _PRECHECK:
            _PRECHECK[name](value, *rest, **kwargs)
        if name == "join":
            value = _join_args(str(rest[0]) if rest else str(kwargs.get("d", "")), value)
        return _account(f(*head, value, *rest, **kwargs))

    return guarded


# -- guards the rewritten AST calls ---------------------------------------------------------------------
def _guard_iter(iterable):
    """Every loop iterates through this: one deadline check per item."""
    b = _BUDGET.get()
    for item in iterable:
        if b is not None:
            b.tick()
        yield item


def _guard_out(value) -> str:
    """Every piece of output (template text or {{ expression }}), in macros and blocks too."""
    s = value if isinstance(value, str) else _to_text(value)
    b = _BUDGET.get()
    if b is not None:
        b.tick()
        b.output += len(s)
        _refuse_if(b.output > MAX_OUTPUT, f"more than {MAX_OUTPUT} characters of output")
    return s


def _guard_concat(*parts) -> str:
    """a ~ b ~ c"""
    return _account("".join([p if isinstance(p, str) else _to_text(p) for p in parts]))


class _Rewrite(NodeTransformer):
    """Routes loops, output, `~` and literals through the guards; refuses template loading."""

    def _guard(self, name: str, node, *args):
        return nodes.Call(nodes.EnvironmentAttribute(name), list(args), [], None, None, lineno=node.lineno)

    def _refuse(self, node):
        tag = {"FromImport": "from"}.get(type(node).__name__, type(node).__name__.lower())
        raise TemplateError(f"chat template refused: {{% {tag} %}} (line {node.lineno}): "
                            "templates cannot load or define other templates")

    visit_Extends = visit_Include = visit_Import = visit_FromImport = visit_Block = _refuse

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = self._guard("guard_iter", node, node.iter)
        return node

    def visit_Output(self, node):
        node = self.generic_visit(node)
        node.nodes = [self._guard("guard_out", c, nodes.Const(c.data, lineno=c.lineno)
                                  if isinstance(c, nodes.TemplateData) else c) for c in node.nodes]
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return self._guard("guard_concat", node, *node.nodes)

    def _literal(self, node):
        node = self.generic_visit(node)
        return node if getattr(node, "ctx", "load") != "load" else self._guard("guard_alloc", node, node)

    visit_List = visit_Tuple = visit_Dict = _literal


# -- the sandbox ----------------------------------------------------------------------------------------
class _Generation(Extension):
    """transformers' {% generation %}...{% endgeneration %} marks assistant text; rendering ignores it."""
    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message):
    raise _Refused(str(message))


def _strftime_now(fmt):
    _refuse_if(not isinstance(fmt, str) or len(fmt) > 256, "strftime_now format over 256 characters")
    return datetime.now().strftime(fmt)


class _Namespace(Namespace):
    """namespace() refusing `_` names: markupsafe and jinja look up __html__, __call__, jinja_pass_arg...
    on the instance, which a Namespace answers from its attributes."""

    def __init__(*args, **kwargs):  # noqa: N805 (Namespace's signature: `self` may be a keyword)
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"namespace attribute {name!r}: names starting with '_' are not allowed")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
        del self.globals["lipsum"]  # lipsum(n) builds n paragraphs
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace)
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.guard_iter, self.guard_out, self.guard_concat, self.guard_alloc = (
            _guard_iter, _guard_out, _guard_concat, _account_shared)
        self._guards = (_guard_iter, _guard_out, _guard_concat, _account_shared)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        if any(__obj is g for g in __self._guards):
            return __obj(*args)  # generated calls; kwargs only carry _loop_vars
        _tick()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        args = _check_method(__obj, args, kwargs)
        if isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive for
            args = (_guard_iter(args[0]), *args[1:])
        b = _BUDGET.get()
        if b is not None:
            b.depth += 1
        try:
            _refuse_if(b is not None and b.depth > MAX_DEPTH, f"calls nested over {MAX_DEPTH} deep")
            return _account(__context.call(__obj, *args, **kwargs))
        finally:
            if b is not None:
                b.depth -= 1

    def call_binop(self, context, operator, left, right):
        _tick()
        _check_binop(operator, left, right)
        size = None
        if operator == "+" and isinstance(left, (list, tuple)) and type(left) is type(right):
            size = _size(left) + _size(right) - 2
        return _account(self.binop_table[operator](left, right), size, shared=True)

    def getattr(self, obj, attribute):
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _tick()
        value = super().getitem(obj, argument)
        return _account(value, shared=True) if isinstance(argument, slice) else value

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format(value.__self__)

        def checked(*args, **kwargs):
            _check_text(args, kwargs)
            return wrapped(*args, **kwargs)

        return checked


_ENV = _Sandbox()


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    if not isinstance(source, str):
        raise TemplateError(f"chat template must be a string, not {type(source).__name__}")
    if len(source) > MAX_TEMPLATE:
        raise TemplateError(f"chat template of {len(source)} characters (limit {MAX_TEMPLATE})")
    try:
        tree = _Rewrite().visit(_ENV.parse(source))
        tree.set_environment(_ENV)
        return _ENV.template_class.from_code(_ENV, _ENV.compile(tree), _ENV.make_globals(None), None)
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_line(f"chat template syntax error (line {e.lineno}): {e.message}")) from None
    except Exception as e:  # RecursionError on absurd nesting, SyntaxError from Python's compiler, ...
        raise TemplateError(_line(f"chat template does not compile: {type(e).__name__}: {e}")) from None
