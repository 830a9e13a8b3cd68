"""Grammar-constrained generation (splitllm.grammar, cpp/sample/grammar.cpp).

The allowed-token sets are checked against llama.cpp's grammar sampler (through
llama-cpp-python's low-level API) along token sequences, for grammars that use every construct;
texts against Python's ``re`` / ``json`` for what grammars and JSON schemas accept; and
generation with SmolLM2: the output follows the grammar and ends when the grammar is complete.
"""

from __future__ import annotations

import ctypes
import json
import re

import numpy as np
import pytest
from splitllm import Error, Model, _core
from splitllm.grammar import JSON_GBNF, Grammar, json_schema_to_gbnf

EOG = 256  # the byte vocabulary's end-of-generation token


@pytest.fixture(scope="module")
def bytes_vocab():
    """One token per byte, and an end-of-generation token."""
    return _core.GrammarVocab([bytes([b]) for b in range(256)] + [b""], [EOG])


def matches(grammar: Grammar, text: str, vocab) -> bool:
    """Whether the grammar accepts the whole text (fed byte by byte)."""
    state = grammar.state()
    for b in text.encode("utf-8"):
        if not state.allows(vocab, b):
            return False
        state.accept(vocab, b)
    return state.allows(vocab, EOG)


# ---- parsing ----

@pytest.mark.parametrize(("text", "message"), [
    ('root ::= "a" b', "undefined rule 'b'"),
    ('root ::= root "a" | "b"', "left-recursive"),
    ('root ::= x\nx ::= y "a"\ny ::= "" | x', "left-recursive"),
    ('root ::= "a', "unterminated literal"),
    ('root ::= [a-', "unterminated character class"),
    ('root ::= []', "empty character class"),
    ('root ::= [z-a]', "runs backwards"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "a"{3,1}', "maximum is below"),
    ('root ::= *', "must follow a symbol"),
    ('root = "a"', "expected ::="),
    ('start ::= "a"', "no rule 'root'"),
    ('root ::= "a"\nroot ::= "b"', "defined twice"),
    ('root ::= ("a"', "expected )"),
])
def test_bad_grammars_are_reported(text, message):
    with pytest.raises(Error, match=re.escape(message)):
        Grammar(text)


def test_syntax_error_names_line_and_column():
    with pytest.raises(Error, match="line 3, column 11"):
        Grammar('root ::= a\na ::= "x"\nb ::= "y" @')


# ---- what grammars accept, against Python's re ----

CASES = [
    # (GBNF, the same language as a regular expression)
    ('root ::= "yes" | "no"', r"yes|no"),
    ('root ::= [a-c]+ "-" [0-9]{2,3}', r"[a-c]+-[0-9]{2,3}"),
    ('root ::= ("ab" | "c")* "."?', r"(ab|c)*\.?"),
    ('root ::= [^"\\\\]{0,4} "!"', r'[^"\\]{0,4}!'),
    ('root ::= x{2} y\nx ::= "(" [0-9] ")"\ny ::= . .', r"(\([0-9]\)){2}.."),
    ('root ::= "é" [α-ω]+ "€"? # a comment\n', r"é[α-ω]+€?"),
    ('root ::= "\\x41\\u00e9\\t" [\\n\\]]', "A\u00e9\t[\n\\]]"),
    ('root ::= (\n  "a"\n  | "b"\n) "c"{1,}', r"(a|b)c+"),
]
TEXTS = ["yes", "no", "ye", "abc-12", "a-1234", "cab-999", "", ".", "ababc.", "abx", "xy!", '"!', "ab!!",
         "(1)(2)zz", "(1)(2)z", "éαβ€", "éω", "é€", "A\u00e9\t\n", "A\u00e9\t]", "bccc", "ac", "c", "abc"]


@pytest.mark.parametrize(("gbnf", "regex"), CASES)
def test_grammar_language_equals_regex(gbnf, regex, bytes_vocab):
    g = Grammar(gbnf)
    for text in TEXTS:
        assert matches(g, text, bytes_vocab) == bool(re.fullmatch(regex, text, re.S)), text


def test_characters_split_between_tokens():
    """A token that ends inside a UTF-8 sequence is allowed when some completion fits."""
    pieces = [b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"a", "é".encode(), b"\xe2", b"\xc3\xa9\xe2"]
    vocab = _core.GrammarVocab(pieces + [b""], [len(pieces)])
    g = Grammar('root ::= "é" "a" | "€"')
    s = g.state()
    allowed = s.allowed(vocab)
    assert [bool(x) for x in allowed] == [True, False, True, False, False, True, True, False, False]
    s.accept(vocab, 0)  # half of é
    assert [bool(x) for x in s.allowed(vocab)[:8]] == [False, True, False, False, False, False, False, False]
    s.accept(vocab, 1)
    s.accept(vocab, 4)
    assert s.complete and s.allows(vocab, len(pieces))
    with pytest.raises(Error, match="cannot come next"):
        s.accept(vocab, 4)


# ---- JSON ----

def test_json_grammar(bytes_vocab):
    g = Grammar.json()
    good = ['{}', '{"a": 1}', '{"a": [1, 2.5, -3e10, "x\\n\\u00e9", true, null, {}]}', '{"k":{"n":[]}}',
            '{\n  "a" : [ 1 ,\n\t2 ]\n}']
    bad = ['[]', '{"a": 01}', '{"a": "\n"}', "{'a': 1}", '{"a": 1,}', '{"a" 1}', "1", '{"a": tru}',
           '{} ', '{}\n']  # nothing after the end: generation stops there
    for text in good:
        assert matches(g, text, bytes_vocab), text
        json.loads(text)
    for text in bad:
        assert not matches(g, text, bytes_vocab), text


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", None]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1, "maxItems": 2},
        "score": {"type": ["number", "null"]},
    },
    "required": ["name", "age"],
    "$defs": {"tag": {"type": "string", "minLength": 1, "maxLength": 5}},
}


def test_json_schema(bytes_vocab):
    g = Grammar.from_json_schema(SCHEMA)
    good = ['{"name": "Ann", "age": 3}', '{"name":"","age":-7,"role":null}',
            '{"name": "Bo", "age": 1, "tags": ["x", "yyyyy"], "score": 2.5}',
            '{"name": "Bo", "age": 1, "role": "user", "score": null}']
    bad = ['{"age": 3, "name": "Ann"}', '{"name": "Ann"}', '{"name": "Ann", "age": 3.5}',
           '{"name": "Ann", "age": 3, "role": "root"}', '{"name": "Ann", "age": 3, "tags": []}',
           '{"name": "Ann", "age": 3, "tags": ["a", "b", "c"]}', '{"name": "Ann", "age": 3, "tags": [""]}',
           '{"name": "Annnnnnnnnnnn", "age": 3}', '{"name": "Ann", "age": 3, "extra": 1}']
    for text in good:
        assert matches(g, text, bytes_vocab), text
    for text in bad:
        assert not matches(g, text, bytes_vocab), text
    # Only optional properties: any subset, in order, with commas right.
    opt = Grammar.from_json_schema({"properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}}})
    for text, ok in (("{}", True), ('{"a": 1}', True), ('{"b": true}', True), ('{"a": 1, "b": false}', True),
                     ('{, "b": true}', False), ('{"b": true, "a": 1}', False)):
        assert matches(opt, text, bytes_vocab) == ok, text


@pytest.mark.parametrize("schema", [{"type": "string", "pattern": "^a"}, {"type": "integer", "minimum": 0},
                                    {"$ref": "https://example.com/s.json"}, {"type": "date"},
                                    {"type": "object", "properties": {"a": {}}, "additionalProperties": {}}])
def test_json_schema_keywords_that_cannot_be_enforced(schema):
    with pytest.raises(ValueError, match="JSON schema"):
        json_schema_to_gbnf(schema)


# ---- against llama.cpp ----

ARITH = r"""
root  ::= expr
expr  ::= term ([-+*/] term)*
term  ::= num | "(" ws expr ws ")"
num   ::= [0-9]+ ("." [0-9]{1,2})?
ws    ::= [ ]?
"""
REFERENCE_CASES = [
    (JSON_GBNF, '{"name": "Bob \\"B\\"", "age": 42.5, "tags": ["a", {"é": null}]}'),
    (ARITH, "(12+3.5)*( 4-7 )/2"),
    (json_schema_to_gbnf(SCHEMA), '{"name": "Ann Lee", "age": 31, "tags": ["xy"], "score": -1.5e3}'),
    ('root ::= "ünï" [^a-z]{2,5} .* "€"', "ünïÀ1?☃ end €"),
]


@pytest.fixture(scope="module")
def llama_vocab(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=64, vocab_only=True, verbose=False)
    yield llama_cpp, llama_cpp.llama_model_get_vocab(llm._model.model)
    llm.close()


def reference_allowed(llama_vocab, gbnf: str, accepted: list[int], n_vocab: int) -> np.ndarray:
    llama_cpp, vocab = llama_vocab
    smpl = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    try:
        for t in accepted:
            llama_cpp.llama_sampler_accept(smpl, t)
        data = (llama_cpp.llama_token_data * n_vocab)()
        for i in range(n_vocab):
            data[i].id, data[i].logit, data[i].p = i, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
        return np.array([data[i].logit != float("-inf") for i in range(n_vocab)])
    finally:
        llama_cpp.llama_sampler_free(smpl)


@pytest.mark.reference
@pytest.mark.parametrize(("gbnf", "text"), REFERENCE_CASES, ids=["json", "arith", "schema", "unicode"])
def test_allowed_tokens_equal_llama_cpp(smollm2_path, llama_vocab, gbnf, text):
    """At every step of the text's tokens, the same allowed set as llama.cpp's grammar sampler,
    except the special tokens, which llama.cpp matches by their text (e.g. "<|im_start|>" inside a
    JSON string) and splitllm never allows (they have no text in the output)."""
    with Model(smollm2_path, n_ctx=64) as m:
        vocab = m.grammar_vocab()
        n = m.n_vocab()
        eog = sorted(m.tokenizer.eog_ids)
        special = np.array([not m.tokenizer.token_to_piece(i) for i in range(n)])
        special[eog] = False
        toks = m.tokenize(text.encode(), add_bos=False)
    state = Grammar(gbnf).state()
    for step in range(len(toks) + 1):
        ours = state.allowed(vocab)
        ref = reference_allowed(llama_vocab, gbnf, toks[:step], n)
        ref[eog] = ref[eog] & ours[eog]  # llama.cpp leaves end-of-generation to the caller
        differ = np.flatnonzero((ours != ref) & ~special)
        assert differ.size == 0, (step, [(int(i), m.tokenizer.token_to_piece(int(i))) for i in differ[:5]])
        assert not (ours & special).any()
        if step < len(toks):
            state.accept(vocab, toks[step])
    assert state.complete


# ---- generation ----

@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=512, n_threads=2) as m:
        yield m


def test_completion_follows_the_grammar(model):
    out = model.create_completion("Is the sky blue? Answer:", grammar='root ::= " " ("yes" | "no") "."',
                                  max_tokens=10, temperature=0)
    choice = out["choices"][0]
    assert choice["text"] in (" yes.", " no.") and choice["finish_reason"] == "stop"
    for seed in range(4):  # sampled too
        text = model.create_completion("A date: ", grammar=r'root ::= [12] [0-9]{3} "-" [01] [0-9]',
                                       max_tokens=20, temperature=1.0, seed=seed)["choices"][0]["text"]
        assert re.fullmatch(r"[12][0-9]{3}-[01][0-9]", text), text


def test_json_mode_and_schema(model):
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"},
                             "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2}}}
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    for seed in range(3):
        out = model.create_chat_completion(messages, max_tokens=80, temperature=0.8, seed=seed,
                                           response_format=fmt)
        choice = out["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        doc = json.loads(choice["message"]["content"])
        assert isinstance(doc["name"], str) and len(doc["name"]) <= 16 and isinstance(doc["age"], int)
        assert set(doc) <= {"name", "age", "pets"} and set(doc.get("pets", [])) <= {"cat", "dog"}
    # llama-cpp-python's form of a schema, and JSON mode with no schema (cut by max_tokens here).
    out = model.create_chat_completion(messages, max_tokens=60, temperature=0,
                                       response_format={"type": "json_object", "schema": schema})
    assert set(json.loads(out["choices"][0]["message"]["content"])) >= {"name", "age"}
    out = model.create_chat_completion(messages, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    assert out["choices"][0]["message"]["content"].startswith("{")
    with pytest.raises(ValueError, match="response_format"):
        model.create_chat_completion(messages, response_format={"type": "xml"})
    with pytest.raises(Error, match="grammar"):
        model.create_completion("x", grammar="root ::= nothing")


@pytest.mark.reference
def test_llama_cpp_python_grammar_object_is_taken(model):
    llama_cpp = pytest.importorskip("llama_cpp")
    g = llama_cpp.LlamaGrammar.from_string('root ::= " " ("yes" | "no")', verbose=False)
    text = model.create_completion("Is water wet? Answer:", grammar=g, max_tokens=5,
                                   temperature=0)["choices"][0]["text"]
    assert text in (" yes", " no")


# ---- limits and edge cases ----

@pytest.mark.parametrize(("text", "message"), [
    ('root ::= ("a"?){40000}', "repetition count above"),
    ('root ::= ' + "(" * 500 + '"a"' + ")" * 500, "nested more than"),
    ("root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(150000)) + 'r150000 ::= "a"\n',
     "too deeply nested"),
    ('root ::= ("a"?){2000}', "too ambiguous"),
])
def test_grammars_beyond_the_limits_are_errors_not_crashes(text, message):
    """A grammar from a request cannot crash the process or stall it (server safety)."""
    with pytest.raises(Error, match=message):
        Grammar(text).state()


def test_generated_rule_names_do_not_clash(bytes_vocab):
    g = Grammar('root ::= ("a") root_1 root-1\nroot_1 ::= "b"\nroot-1 ::= "c"{2}')
    assert matches(g, "abcc", bytes_vocab) and not matches(g, "abc", bytes_vocab)


def test_utf8_is_strict(bytes_vocab):
    """Overlong forms, surrogates and lone continuation bytes never get through a grammar."""
    g = Grammar.json()
    for text in ('{"a": "\u00e9\u20ac\U0001f600"}',):
        assert matches(g, text, bytes_vocab)
    for bad in (b'{"a": "\xe0\x81\x81"}', b'{"a": "\xc0\xaf"}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\x81"}',
                b'{"a": "\xf4\x90\x80\x80"}'):
        s = g.state()
        ok = True
        for b in bad:
            if not s.allows(bytes_vocab, b):
                ok = False
                break
            s.accept(bytes_vocab, b)
        assert not ok, bad


def test_costly_grammars_are_refused(bytes_vocab):
    """Deep chains kept alive by ambiguity: refused when they would stall the engine."""
    n = 1000
    rules = ["root ::= r0"] + [f"r{i} ::= r{i + 1} x" for i in range(n)] + [f"r{n} ::= x"]
    rules.append("x ::= " + " | ".join(f"a{j}" for j in range(40)))
    rules += [f"a{j} ::= [^a-z ] [^a-z ]" for j in range(40)]
    with pytest.raises(Error, match="too deeply nested|too costly"):
        g = Grammar("\n".join(rules))
        g.state().allowed(bytes_vocab)


def test_big_schemas_stay_small():
    """Optional properties give a grammar linear in their number (it was cubic)."""
    props = {f"p{i}": {"type": "integer"} for i in range(500)}
    text = json_schema_to_gbnf({"type": "object", "properties": props})
    assert len(text) < 200_000
    Grammar(text)
    with pytest.raises(ValueError, match="more than 1000 properties"):
        json_schema_to_gbnf({"type": "object", "properties": {f"p{i}": {} for i in range(1001)}})
    for bad in ('{"type": "string", "maxLength": Infinity}', '{"type": "array", "minItems": 1e400}',
                "[" * 50000 + "]" * 50000, '{"type": "array", "maxItems": true}'):
        with pytest.raises(ValueError, match="JSON schema"):
            json_schema_to_gbnf(bad)


def test_json_schema_edge_cases(bytes_vocab):
    # Property names outside ASCII; no properties and no others allowed; a recursive root.
    g = Grammar.from_json_schema({"type": "object", "properties": {"名前": {"type": "string"}},
                                  "required": ["名前"]})
    assert matches(g, '{"名前": "x"}', bytes_vocab)
    g = Grammar.from_json_schema({"type": "object", "additionalProperties": False})
    assert matches(g, "{}", bytes_vocab) and not matches(g, '{"a": 1}', bytes_vocab)
    tree = {"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}}}
    g = Grammar.from_json_schema(tree)
    assert matches(g, '{"n": 1, "kids": [{"n": 2}, {"n": 3, "kids": []}]}', bytes_vocab)
    # Two $refs whose paths end alike get rules of their own.
    inner = {"properties": {"inner": {"$ref": "#/$defs/y/properties/value"}}}
    y = {"properties": {"value": {"type": "integer"}}}
    two = {"$defs": {"x": {"properties": {"value": inner}}, "y": y}, "$ref": "#/$defs/x/properties/value"}
    assert matches(Grammar.from_json_schema(two), '{"inner": 5}', bytes_vocab)
    for bad in ({"type": "string", "minLength": -1}, {"enum": 5}, {"properties": [1]},
                {"required": ["x"], "properties": {"a": {}}}):
        with pytest.raises(ValueError, match="JSON schema"):
            json_schema_to_gbnf(bad)
