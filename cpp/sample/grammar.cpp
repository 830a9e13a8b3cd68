#include "sample/grammar.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "common/error.h"

namespace sl {

namespace {

using Elem = GrammarElem;

// ---- UTF-8 ----

// Decodes bytes after an unfinished sequence (partial: its length in bits 24.. and value bits
// below; n_missing continuation bytes still to come). False on invalid UTF-8: bad lead or
// continuation bytes, overlong forms, surrogates, values above U+10FFFF. A sequence left
// unfinished at the end goes to partial / n_missing.
constexpr uint32_t kValueBits = (1u << 24) - 1;

bool decode_utf8(const std::string & bytes, uint32_t & partial, int & n_missing, std::vector<uint32_t> & cps) {
    for (unsigned char b : bytes) {
        if (n_missing > 0) {
            if ((b & 0xC0) != 0x80) return false;
            const uint32_t len = partial >> 24, v = ((partial & kValueBits) << 6) | (b & 0x3F);
            partial = len << 24 | v;
            if (--n_missing == 0) {
                const uint32_t lo = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
                if (v < lo || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return false;
                cps.push_back(v);
                partial = 0;
            }
        } else if (b < 0x80) {
            cps.push_back(b);
        } else if (b >= 0xC2 && b <= 0xDF) {
            partial = 2u << 24 | (b & 0x1F);
            n_missing = 1;
        } else if ((b & 0xF0) == 0xE0) {
            partial = 3u << 24 | (b & 0x0F);
            n_missing = 2;
        } else if (b >= 0xF0 && b <= 0xF4) {
            partial = 4u << 24 | (b & 0x07);
            n_missing = 3;
        } else {
            return false;  // a stray continuation byte, C0, C1 or F5..FF
        }
    }
    return true;
}

// ---- parsing ----

// Limits that keep a grammar from a request within bounds of memory, stack and time.
constexpr size_t kMaxRules = 100000;
constexpr size_t kMaxElems = 1000000;
constexpr int kMaxDepth = 100;      // nested groups
constexpr int kMaxRepeat = 10000;   // {m,n}
constexpr size_t kMaxStacks = 512;  // ways to continue at once (see Grammar::expand)
constexpr size_t kMaxExpand = 100000;  // rule references followed in one expansion
constexpr size_t kMaxStackDepth = 1000;  // nested positions one stack holds
constexpr size_t kMaxWork = 20000000;    // stack entries handled in one call (allowed, allows, accept)

bool is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

class Parser {
public:
    explicit Parser(const std::string & text) : text_(text), p_(text.c_str()) {}

    void parse(std::vector<std::vector<Elem>> & rules, std::map<std::string, uint32_t> & ids) {
        skip_space(true);
        while (*p_) {
            parse_rule();
            skip_space(true);
        }
        // Every referenced rule must be defined.
        for (const auto & [name, id] : ids_)
            if (id >= rules_.size() || rules_[id].empty())
                throw Error(strfmt("grammar: undefined rule '%s'", name.c_str()));
        rules = std::move(rules_);
        ids = std::move(ids_);
    }

private:
    const std::string & text_;
    const char * p_;
    std::vector<std::vector<Elem>> rules_;
    std::map<std::string, uint32_t> ids_;
    size_t n_elems_ = 0;
    int depth_ = 0;  // groups open

    [[noreturn]] void fail(const std::string & what) const {
        int line = 1, col = 1;
        for (const char * q = text_.c_str(); q < p_; ++q) {
            if (*q == '\n') {
                ++line;
                col = 1;
            } else {
                ++col;
            }
        }
        throw Error(strfmt("grammar: %s at line %d, column %d", what.c_str(), line, col));
    }

    uint32_t id_of(const std::string & name) {
        auto it = ids_.find(name);
        if (it != ids_.end()) return it->second;
        const uint32_t id = uint32_t(ids_.size());
        ids_[name] = id;
        return id;
    }

    // A rule for a group or a repetition, named so that no rule of the text can clash with it
    // ('#' is not a name character).
    uint32_t new_rule(const std::string & base) {
        SL_CHECK(ids_.size() < kMaxRules, "grammar: more than %zu rules", kMaxRules);
        return id_of(base + "#" + std::to_string(ids_.size()));
    }

    void set_rule(uint32_t id, std::vector<Elem> elems) {
        if (rules_.size() <= id) rules_.resize(id + 1);
        n_elems_ += elems.size();
        if (n_elems_ > kMaxElems) fail(strfmt("the grammar is too large (more than %zu elements)", kMaxElems));
        rules_[id] = std::move(elems);
    }

    void skip_space(bool newline_ok) {
        for (;;) {
            if (*p_ == ' ' || *p_ == '\t' || (newline_ok && (*p_ == '\n' || *p_ == '\r'))) {
                ++p_;
            } else if (*p_ == '#') {
                while (*p_ && *p_ != '\n') ++p_;
            } else {
                return;
            }
        }
    }

    std::string parse_name() {
        const char * s = p_;
        while (is_word_char(*p_)) ++p_;
        if (p_ == s) fail("expected a rule name");
        return std::string(s, p_);
    }

    uint32_t parse_hex(int n) {
        uint32_t v = 0;
        for (int i = 0; i < n; ++i, ++p_) {
            const char c = *p_;
            int d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if (c >= 'a' && c <= 'f')
                d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F')
                d = c - 'A' + 10;
            else
                fail(strfmt("expected %d hex digits", n));
            v = v << 4 | uint32_t(d);
        }
        return v;
    }

    // One character of a literal or a class (escapes included).
    uint32_t parse_char() {
        if (*p_ == '\\') {
            ++p_;
            const char c = *p_++;
            switch (c) {
                case 'x': return parse_hex(2);
                case 'u': return parse_hex(4);
                case 'U': return parse_hex(8);
                case 't': return '\t';
                case 'r': return '\r';
                case 'n': return '\n';
                case '\\': case '"': case '[': case ']': case '-': case '^': case '/': return uint32_t(c);
                default: --p_; fail(strfmt("unknown escape '\\%c'", c ? c : ' '));
            }
        }
        if (!*p_) fail("unexpected end of the grammar");
        uint32_t partial = 0;
        int missing = 0;
        std::vector<uint32_t> cp;
        while (cp.empty()) {
            if (!*p_ || !decode_utf8(std::string(1, *p_), partial, missing, cp)) fail("invalid UTF-8");
            ++p_;
        }
        return cp[0];
    }

    void parse_rule() {
        const std::string name = parse_name();
        const uint32_t id = id_of(name);
        skip_space(false);
        if (p_[0] != ':' || p_[1] != ':' || p_[2] != '=') fail("expected ::=");
        if (id < rules_.size() && !rules_[id].empty()) fail(strfmt("rule '%s' is defined twice", name.c_str()));
        p_ += 3;
        skip_space(true);
        parse_alternates(name, id, false);
        if (*p_ == '\r') ++p_;
        if (*p_ == '\n')
            ++p_;
        else if (*p_)
            fail("expected a newline or the end");
    }

    void parse_alternates(const std::string & name, uint32_t id, bool nested) {
        std::vector<Elem> elems;
        parse_sequence(name, elems, nested);
        while (*p_ == '|') {
            elems.push_back({Elem::ALT, 0});
            ++p_;
            skip_space(true);
            parse_sequence(name, elems, nested);
        }
        elems.push_back({Elem::END, 0});
        set_rule(id, std::move(elems));
    }

    void parse_sequence(const std::string & name, std::vector<Elem> & out, bool nested) {
        size_t last = out.size();  // where the last symbol starts (for a repetition)
        bool have_last = false;
        while (*p_) {
            if (*p_ == '"') {
                ++p_;
                last = out.size();
                while (*p_ != '"') {
                    if (!*p_) fail("unterminated literal");
                    out.push_back({Elem::CHAR, parse_char()});
                }
                ++p_;
                have_last = true;
            } else if (*p_ == '[') {
                ++p_;
                last = out.size();
                Elem::Type first = Elem::CHAR;
                if (*p_ == '^') {
                    first = Elem::CHAR_NOT;
                    ++p_;
                }
                bool empty = true;
                while (*p_ != ']') {
                    if (!*p_) fail("unterminated character class");
                    const uint32_t lo = parse_char();
                    out.push_back({empty ? first : Elem::CHAR_ALT, lo});
                    empty = false;
                    if (*p_ == '-' && p_[1] != ']' && p_[1]) {
                        ++p_;
                        const uint32_t hi = parse_char();
                        if (hi < lo) fail("a character range runs backwards");
                        out.push_back({Elem::CHAR_RNG_UPPER, hi});
                    }
                }
                if (empty) fail("empty character class");
                ++p_;
                have_last = true;
            } else if (is_word_char(*p_)) {
                last = out.size();
                out.push_back({Elem::RULE_REF, id_of(parse_name())});
                have_last = true;
            } else if (*p_ == '(') {
                if (++depth_ > kMaxDepth) fail(strfmt("groups nested more than %d deep", kMaxDepth));
                ++p_;
                skip_space(true);
                const uint32_t sub = new_rule(name);
                parse_alternates(name, sub, true);
                if (*p_ != ')') fail("expected )");
                ++p_;
                --depth_;
                last = out.size();
                out.push_back({Elem::RULE_REF, sub});
                have_last = true;
            } else if (*p_ == '.') {
                ++p_;
                last = out.size();
                out.push_back({Elem::CHAR_ANY, 0});
                have_last = true;
            } else if (*p_ == '*' || *p_ == '+' || *p_ == '?' || *p_ == '{') {
                if (!have_last) fail("a repetition must follow a symbol");
                int lo = 0, hi = -1;
                if (*p_ == '*') {
                    ++p_;
                } else if (*p_ == '+') {
                    lo = 1;
                    ++p_;
                } else if (*p_ == '?') {
                    hi = 1;
                    ++p_;
                } else {
                    ++p_;
                    skip_space(nested);
                    lo = parse_int();
                    skip_space(nested);
                    if (*p_ == ',') {
                        ++p_;
                        skip_space(nested);
                        hi = is_digit() ? parse_int() : -1;
                        skip_space(nested);
                    } else {
                        hi = lo;
                    }
                    if (*p_ != '}') fail("expected }");
                    ++p_;
                    if (hi >= 0 && hi < lo) fail("a repetition's maximum is below its minimum");
                }
                repeat(name, out, last, lo, hi);
                have_last = false;  // "x**" is an error, as in llama.cpp
            } else {
                break;
            }
            skip_space(nested);
        }
    }

    bool is_digit() const { return *p_ >= '0' && *p_ <= '9'; }

    int parse_int() {
        if (!is_digit()) fail("expected a number");
        long v = 0;
        while (is_digit()) {
            v = v * 10 + (*p_++ - '0');
            if (v > kMaxRepeat) fail(strfmt("a repetition count above %d", kMaxRepeat));
        }
        return int(v);
    }

    // out[last:] (one symbol) repeated lo..hi times (hi < 0: no upper bound).
    void repeat(const std::string & name, std::vector<Elem> & out, size_t last, int lo, int hi) {
        const std::vector<Elem> sym(out.begin() + long(last), out.end());
        out.resize(last);
        for (int i = 0; i < lo; ++i) out.insert(out.end(), sym.begin(), sym.end());
        if (hi < 0) {  // R ::= sym R | (nothing)
            const uint32_t r = new_rule(name);
            std::vector<Elem> body(sym);
            body.push_back({Elem::RULE_REF, r});
            body.push_back({Elem::ALT, 0});
            body.push_back({Elem::END, 0});
            set_rule(r, std::move(body));
            out.push_back({Elem::RULE_REF, r});
            return;
        }
        // hi - lo optional copies, nested: R1 ::= sym R2 | (nothing), ..., Rk ::= sym | (nothing)
        int64_t inner = -1;
        for (int i = 0; i < hi - lo; ++i) {
            const uint32_t r = new_rule(name);
            std::vector<Elem> body(sym);
            if (inner >= 0) body.push_back({Elem::RULE_REF, uint32_t(inner)});
            body.push_back({Elem::ALT, 0});
            body.push_back({Elem::END, 0});
            set_rule(r, std::move(body));
            inner = r;
        }
        if (inner >= 0) out.push_back({Elem::RULE_REF, uint32_t(inner)});
    }
};

// Alternatives of a rule: the index where each starts.
std::vector<size_t> alternatives(const std::vector<Elem> & rule) {
    std::vector<size_t> starts{0};
    for (size_t i = 0; i < rule.size(); ++i)
        if (rule[i].type == Elem::ALT) starts.push_back(i + 1);
    return starts;
}

bool ends_alt(const Elem & e) { return e.type == Elem::END || e.type == Elem::ALT; }

// Rejects left recursion (a rule that can reach itself before matching a character), which
// would make expansion endless.
void check_left_recursion(const std::vector<std::vector<Elem>> & rules, const std::map<std::string, uint32_t> & ids) {
    const size_t n = rules.size();
    // Nullable rules (those that can match nothing), by a worklist in linear time: an alternative
    // made only of rule references is nullable once all of them are.
    std::vector<char> nullable(n, 0);
    struct Alt {
        uint32_t rule;
        size_t pending;  // references not yet known nullable
    };
    std::vector<Alt> alts;
    std::vector<std::vector<size_t>> users(n);  // rule -> alternatives referring to it (repeats kept)
    std::vector<uint32_t> work;
    for (size_t r = 0; r < n; ++r)
        for (size_t s : alternatives(rules[r])) {
            size_t refs = 0;
            bool chars = false;
            for (size_t i = s; !ends_alt(rules[r][i]); ++i) {
                if (rules[r][i].type == Elem::RULE_REF)
                    ++refs;
                else
                    chars = true;
            }
            if (chars) continue;
            const size_t a = alts.size();
            alts.push_back({uint32_t(r), refs});
            for (size_t i = s; !ends_alt(rules[r][i]); ++i) users[rules[r][i].value].push_back(a);
            if (refs == 0 && !nullable[r]) {
                nullable[r] = 1;
                work.push_back(uint32_t(r));
            }
        }
    while (!work.empty()) {
        const uint32_t r = work.back();
        work.pop_back();
        for (size_t a : users[r])
            if (--alts[a].pending == 0 && !nullable[alts[a].rule]) {
                nullable[alts[a].rule] = 1;
                work.push_back(alts[a].rule);
            }
    }
    // Edges r -> rules it may start with; a cycle is left recursion.
    std::vector<std::vector<uint32_t>> first(n);
    for (size_t r = 0; r < n; ++r)
        for (size_t s : alternatives(rules[r]))
            for (size_t i = s; !ends_alt(rules[r][i]) && rules[r][i].type == Elem::RULE_REF; ++i) {
                first[r].push_back(rules[r][i].value);
                if (!nullable[rules[r][i].value]) break;
            }
    std::vector<char> state(n, 0);  // 0 new, 1 on the path, 2 done
    std::vector<std::pair<uint32_t, size_t>> path;
    for (uint32_t start = 0; start < n; ++start) {
        if (state[start]) continue;
        path.push_back({start, 0});
        state[start] = 1;
        while (!path.empty()) {
            auto & [r, k] = path.back();
            if (k == first[r].size()) {
                state[r] = 2;
                path.pop_back();
                continue;
            }
            const uint32_t next = first[r][k++];
            if (state[next] == 1) {
                std::string name = "?";
                for (const auto & [nm, id] : ids)
                    if (id == next) name = nm;
                throw Error(strfmt("grammar: rule '%s' is left-recursive", name.c_str()));
            }
            if (state[next] == 0) {
                state[next] = 1;
                path.push_back({next, 0});
            }
        }
    }
}

// Whether the character element at pos matches cp; *after: the element after its class.
bool match_char(const Elem * pos, uint32_t cp, const Elem ** after) {
    if (pos->type == Elem::CHAR_ANY) {
        *after = pos + 1;
        return true;
    }
    const bool positive = pos->type == Elem::CHAR;
    bool found = false;
    do {
        if (pos[1].type == Elem::CHAR_RNG_UPPER) {
            found = found || (pos->value <= cp && cp <= pos[1].value);
            pos += 2;
        } else {
            found = found || pos->value == cp;
            pos += 1;
        }
    } while (pos->type == Elem::CHAR_ALT);
    *after = pos;
    return found == positive;
}

// Whether the character element at pos matches some code point in [lo, hi] (for a negated
// class: unless one excluded range covers all of it).
bool match_range(const Elem * pos, uint32_t lo, uint32_t hi) {
    if (pos->type == Elem::CHAR_ANY) return true;
    const bool positive = pos->type == Elem::CHAR;
    bool meets = false, covers = false;
    do {
        const uint32_t a = pos->value, b = pos[1].type == Elem::CHAR_RNG_UPPER ? pos[1].value : pos->value;
        meets = meets || (a <= hi && lo <= b);
        covers = covers || (a <= lo && hi <= b);
        pos += pos[1].type == Elem::CHAR_RNG_UPPER ? 2 : 1;
    } while (pos->type == Elem::CHAR_ALT);
    return positive ? meets : !covers;
}

void dedup(std::vector<Grammar::Stack> & stacks) {
    std::sort(stacks.begin(), stacks.end());
    stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
}

}  // namespace

GrammarRules::GrammarRules(const std::string & text, const std::string & root) {
    std::map<std::string, uint32_t> ids;
    Parser(text).parse(rules_, ids);
    auto it = ids.find(root);
    if (it == ids.end()) throw Error(strfmt("grammar: no rule '%s' (the root)", root.c_str()));
    root_ = it->second;
    check_left_recursion(rules_, ids);
    for (const auto & rule : rules_) alts_.push_back(sl::alternatives(rule));
}

GrammarVocab::GrammarVocab(const std::vector<std::string> & pieces, const std::vector<int32_t> & eog) {
    tokens_.resize(pieces.size());
    nodes_.emplace_back();
    for (size_t id = 0; id < pieces.size(); ++id) {
        Token & t = tokens_[id];
        t.bytes = pieces[id];
        t.valid = !pieces[id].empty() && decode_utf8(pieces[id], t.partial, t.n_missing, t.cps) &&
                  std::find(t.cps.begin(), t.cps.end(), 0u) == t.cps.end();  // NUL: never, as in llama.cpp
        if (!t.valid) continue;
        int32_t node = 0;
        for (uint32_t cp : t.cps) {
            int32_t next = -1;
            for (int32_t c : nodes_[size_t(node)].children)
                if (nodes_[size_t(c)].cp == cp) next = c;
            if (next < 0) {
                next = int32_t(nodes_.size());
                nodes_.emplace_back();
                nodes_.back().cp = cp;
                nodes_[size_t(node)].children.push_back(next);
            }
            node = next;
        }
        nodes_[size_t(node)].ends.push_back(int32_t(id));
    }
    for (int32_t e : eog) {
        SL_CHECK(e >= 0 && size_t(e) < tokens_.size(), "end-of-generation token %d is outside the vocabulary", e);
        tokens_[size_t(e)].eog = true;
    }
}

Grammar::Grammar(std::shared_ptr<const GrammarRules> rules) : rules_(std::move(rules)) {
    const auto & root = rules_->rules()[rules_->root()];
    for (size_t s : rules_->alternatives(rules_->root())) {
        Stack stack;
        if (!ends_alt(root[s])) stack.push_back(&root[s]);
        expand(std::move(stack), stacks_);
    }
    dedup(stacks_);
    SL_CHECK(stacks_.size() <= kMaxStacks, "grammar: too ambiguous (more than %zu ways to start)", kMaxStacks);
}

// Follows rule references at the tops of stacks until each top is a character element (or the
// stack is empty: complete). Iterative, with limits: a grammar that nests nullable references
// deeply, or has more ways to continue than kMaxStacks, is an error rather than a crash or a
// stall.
void Grammar::expand(Stack stack, std::vector<Stack> & out) const {
    std::vector<Stack> work{std::move(stack)};
    size_t n_followed = 0;
    while (!work.empty()) {
        Stack st = std::move(work.back());
        work.pop_back();
        if (st.empty() || st.back()->type != Elem::RULE_REF) {
            out.push_back(std::move(st));
            SL_CHECK(out.size() <= 4 * kMaxStacks, "grammar: too ambiguous (more than %zu ways to continue at once)",
                     kMaxStacks);
            continue;
        }
        SL_CHECK(++n_followed <= kMaxExpand, "grammar: too deeply nested (more than %zu rules entered at once)",
                 kMaxExpand);
        const Elem * pos = st.back();
        st.pop_back();
        if (!ends_alt(pos[1])) st.push_back(pos + 1);
        const auto & rule = rules_->rules()[pos->value];
        const std::vector<size_t> & alts = rules_->alternatives(pos->value);
        SL_CHECK(st.size() < kMaxStackDepth, "grammar: too deeply nested (more than %zu rules open at once)",
                 kMaxStackDepth);
        for (size_t k = alts.size(); k-- > 0;) {  // reversed: the first alternative is taken first
            Stack next = st;
            if (!ends_alt(rule[alts[k]])) next.push_back(&rule[alts[k]]);
            spend(next.size());
            work.push_back(std::move(next));
        }
    }
}

std::vector<Grammar::Stack> Grammar::step(const std::vector<Stack> & stacks, uint32_t cp) const {
    std::vector<Stack> out;
    for (const Stack & st : stacks) {
        if (st.empty()) continue;
        const Elem * after = nullptr;
        if (!match_char(st.back(), cp, &after)) continue;
        spend(st.size());
        Stack next(st.begin(), st.end() - 1);
        if (!ends_alt(*after)) next.push_back(after);
        expand(std::move(next), out);
    }
    if (out.size() > 1) dedup(out);
    SL_CHECK(out.size() <= kMaxStacks, "grammar: too ambiguous (more than %zu ways to continue at once)", kMaxStacks);
    return out;
}

bool Grammar::any_in_range(const std::vector<Stack> & stacks, uint32_t lo, uint32_t hi) const {
    for (const Stack & st : stacks)
        if (!st.empty() && match_range(st.back(), lo, hi)) return true;
    return false;
}

bool Grammar::allows_from(const std::vector<Stack> & stacks, uint32_t partial, int n_missing,
                          const GrammarVocab::Token & t, std::vector<Stack> * out, uint32_t * out_partial,
                          int * out_missing) const {
    std::vector<uint32_t> cps;
    const std::vector<uint32_t> * seq = &t.cps;
    uint32_t end_partial = t.partial;
    int end_missing = t.n_missing;
    if (n_missing > 0) {  // the token continues a character of the text so far
        end_partial = partial;
        end_missing = n_missing;
        if (!decode_utf8(t.bytes, end_partial, end_missing, cps)) return false;
        seq = &cps;
    }
    std::vector<Stack> cur = stacks;
    for (uint32_t cp : *seq) {
        if (cp == 0) return false;  // NUL: never, as in llama.cpp
        cur = step(cur, cp);
        if (cur.empty()) return false;
    }
    if (end_missing > 0 && !partial_fits(cur, end_partial, end_missing)) return false;  // no completion fits
    if (out) *out = std::move(cur);
    if (out_partial) *out_partial = end_partial;
    if (out_missing) *out_missing = end_missing;
    return true;
}

bool Grammar::complete() const {
    if (n_missing_ > 0) return false;
    for (const Stack & st : stacks_)
        if (st.empty()) return true;
    return false;
}

bool Grammar::finished() const {
    for (const Stack & st : stacks_)
        if (!st.empty()) return false;
    return true;
}

bool Grammar::allows(const GrammarVocab & vocab, int32_t token) const {
    if (!in_allowed_) work_ = 0;
    SL_CHECK(token >= 0 && token < vocab.n_vocab(), "token %d is outside the vocabulary", token);
    const GrammarVocab::Token & t = vocab.token(token);
    if (t.eog) return complete();
    if (t.bytes.empty() || (n_missing_ == 0 && !t.valid)) return false;  // (valid: from a fresh start)
    return allows_from(stacks_, partial_, n_missing_, t, nullptr, nullptr, nullptr);
}

void Grammar::accept(const GrammarVocab & vocab, int32_t token) {
    work_ = 0;
    SL_CHECK(token >= 0 && token < vocab.n_vocab(), "token %d is outside the vocabulary", token);
    const GrammarVocab::Token & t = vocab.token(token);
    if (t.eog) {
        SL_CHECK(complete(), "grammar: token %d ends the text before the grammar is complete", token);
        return;
    }
    std::vector<Stack> next;
    uint32_t partial = 0;
    int missing = 0;
    SL_CHECK(allows(vocab, token) && allows_from(stacks_, partial_, n_missing_, t, &next, &partial, &missing),
             "grammar: token %d cannot come next", token);
    stacks_ = std::move(next);
    partial_ = partial;
    n_missing_ = missing;
}

// Stack sets met during one walk of the vocabulary trie, numbered, with the set each one steps
// to on a code point (inside a string, say, most characters lead back to the same set).
struct Grammar::WalkMemo {
    std::vector<std::vector<Stack>> sets;
    std::map<std::vector<Stack>, int32_t> ids;
    std::unordered_map<uint64_t, int32_t> steps;  // (set << 32 | cp) -> set, -1: none

    int32_t id_of(std::vector<Stack> && set) {
        auto it = ids.find(set);
        if (it != ids.end()) return it->second;
        const int32_t id = int32_t(sets.size());
        ids.emplace(set, id);
        sets.push_back(std::move(set));
        return id;
    }
};

void Grammar::spend(size_t n) const {
    work_ += n;
    SL_CHECK(work_ <= kMaxWork, "grammar: too costly to follow (more than %zu stack entries handled for one token)",
             kMaxWork);
}

void Grammar::allowed(const GrammarVocab & vocab, uint8_t * allowed) const {
    work_ = 0;
    const int n = vocab.n_vocab();
    std::fill(allowed, allowed + n, uint8_t(0));
    if (n_missing_ > 0) {  // after an unfinished character: token by token (rare)
        in_allowed_ = true;
        try {
            for (int32_t id = 0; id < n; ++id) allowed[id] = allows(vocab, id);
        } catch (...) {
            in_allowed_ = false;
            throw;
        }
        in_allowed_ = false;
    } else {
        WalkMemo memo;
        std::vector<Stack> start = stacks_;
        walk(vocab, 0, memo.id_of(std::move(start)), memo, allowed);
    }
    const bool done = complete();
    for (int32_t id = 0; id < n; ++id)
        if (vocab.token(id).eog) allowed[id] = done;
}

void Grammar::walk(const GrammarVocab & vocab, int32_t node, int32_t set, WalkMemo & memo, uint8_t * allowed) const {
    const GrammarVocab::Node & nd = vocab.nodes()[size_t(node)];
    for (int32_t id : nd.ends) {
        const GrammarVocab::Token & t = vocab.token(id);
        if (t.n_missing == 0)
            allowed[id] = node != 0;  // at the root: no text at all
        else
            allowed[id] = partial_fits(memo.sets[size_t(set)], t.partial, t.n_missing);
    }
    for (int32_t child : nd.children) {
        const uint32_t cp = vocab.nodes()[size_t(child)].cp;
        const uint64_t key = uint64_t(uint32_t(set)) << 32 | cp;
        auto it = memo.steps.find(key);
        int32_t next;
        if (it != memo.steps.end()) {
            next = it->second;
        } else {
            std::vector<Stack> stepped = step(memo.sets[size_t(set)], cp);
            next = stepped.empty() ? -1 : memo.id_of(std::move(stepped));
            memo.steps.emplace(key, next);
        }
        if (next >= 0) walk(vocab, child, next, memo, allowed);
    }
}

bool Grammar::partial_fits(const std::vector<Stack> & stacks, uint32_t partial, int n_missing) const {
    // The code points the unfinished sequence may still become: its value bits followed by any
    // continuation bits, within the range of its length (no overlong forms, at most U+10FFFF).
    const uint32_t len = partial >> 24;
    const int bits = 6 * n_missing;
    uint32_t lo = (partial & kValueBits) << bits;
    uint32_t hi = lo | ((1u << bits) - 1);
    lo = std::max(lo, len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u);
    hi = std::min(hi, 0x10FFFFu);
    if (lo > hi) return false;
    // Surrogates (U+D800..DFFF) are not characters: only the parts of the range outside them.
    if (lo < 0xD800 && any_in_range(stacks, lo, std::min(hi, 0xD7FFu))) return true;
    return hi > 0xDFFF && any_in_range(stacks, std::max(lo, 0xE000u), hi);
}

}  // namespace sl
