// Grammar-constrained generation: GBNF grammars (llama.cpp's format) and the set of tokens that
// may come next.
//
// A grammar is rules of alternatives of sequences; a sequence holds literals ("abc", with \n \t
// \r \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH escapes), character classes ([a-z0-9_], [^"\\]), `.` (any
// character), rule names and parenthesized groups, each optionally repeated (* + ? {m} {m,}
// {m,n}); `#` starts a comment. Newlines end a rule except inside parentheses. Repetitions become
// rules of their own, as llama.cpp builds them.
//
// Matching is over Unicode code points: the state is a set of stacks of positions in the rules
// (the top is the next element to match, every top a character element; an empty stack means the
// text so far is a complete sentence). A token is accepted when each code point of its text keeps
// the set non-empty; a token that ends inside a UTF-8 sequence is kept when some completion of the
// sequence could match, and the rest is awaited with the next token. End of generation is allowed
// only when the grammar is complete. Tokens with no text (special tokens) or with a NUL character
// are never allowed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sl {

struct GrammarElem {
    enum Type : uint8_t {
        END,        // end of a rule's last alternative
        ALT,        // end of an alternative, another follows
        RULE_REF,   // value: rule id
        CHAR,       // value: code point; CHAR_RNG_UPPER / CHAR_ALT may follow
        CHAR_NOT,   // like CHAR, the class negated
        CHAR_RNG_UPPER,  // upper end of a range whose lower end is the previous element
        CHAR_ALT,   // another character of the class
        CHAR_ANY,   // any code point
    };
    Type type;
    uint32_t value;
};

// A parsed grammar: rules of elements, and the id of the root rule.
class GrammarRules {
public:
    // Throws sl::Error naming the line and column of a syntax error, an undefined rule or a
    // missing root.
    GrammarRules(const std::string & text, const std::string & root = "root");
    const std::vector<std::vector<GrammarElem>> & rules() const { return rules_; }
    uint32_t root() const { return root_; }
    int n_rules() const { return int(rules_.size()); }
    // Where each alternative of rule r starts (found once here, not at every expansion).
    const std::vector<size_t> & alternatives(uint32_t r) const { return alts_[r]; }

private:
    std::vector<std::vector<GrammarElem>> rules_;
    std::vector<std::vector<size_t>> alts_;
    uint32_t root_ = 0;
};

// The vocabulary as the grammar sees it: each token's text as code points (a trie shared by
// tokens with common prefixes), the bytes of a UTF-8 sequence it ends inside, and which tokens end
// generation.
class GrammarVocab {
public:
    GrammarVocab(const std::vector<std::string> & pieces, const std::vector<int32_t> & eog);
    int n_vocab() const { return int(tokens_.size()); }

    struct Token {
        std::string bytes;          // the token's text
        std::vector<uint32_t> cps;  // whole code points
        uint32_t partial = 0;       // value bits of an unfinished UTF-8 sequence at the end
        int n_missing = 0;          // continuation bytes it still needs (0: none)
        bool valid = true;          // false: invalid UTF-8 from a fresh start, no text, or a NUL
        bool eog = false;
    };
    const Token & token(int32_t id) const { return tokens_[size_t(id)]; }

    struct Node {
        uint32_t cp = 0;
        std::vector<int32_t> children;  // node indices
        std::vector<int32_t> ends;      // tokens whose whole code points end here
    };
    const std::vector<Node> & nodes() const { return nodes_; }

private:
    std::vector<Token> tokens_;
    std::vector<Node> nodes_;  // node 0: the root (no code point)
};

// The matching state of one generation.
class Grammar {
public:
    using Stack = std::vector<const GrammarElem *>;

    explicit Grammar(std::shared_ptr<const GrammarRules> rules);

    // Whether the token may come next / takes it (throws sl::Error if it may not).
    bool allows(const GrammarVocab & vocab, int32_t token) const;
    void accept(const GrammarVocab & vocab, int32_t token);
    // allowed[t] for every token of the vocabulary (the trie walked once from the current state).
    void allowed(const GrammarVocab & vocab, uint8_t * allowed) const;
    // The text so far is a complete sentence (end of generation is allowed).
    bool complete() const;
    // No character can follow (only the end).
    bool finished() const;

private:
    std::shared_ptr<const GrammarRules> rules_;
    std::vector<Stack> stacks_;
    uint32_t partial_ = 0;  // an unfinished UTF-8 sequence of accepted tokens
    int n_missing_ = 0;
    mutable size_t work_ = 0;          // stack entries handled in this call (see spend)
    mutable bool in_allowed_ = false;  // allows() called from allowed(): one budget for both

    void spend(size_t n) const;

    // The stacks after code point cp (empty: cp cannot come next).
    std::vector<Stack> step(const std::vector<Stack> & stacks, uint32_t cp) const;
    // Some stack could take a code point in [lo, hi].
    bool any_in_range(const std::vector<Stack> & stacks, uint32_t lo, uint32_t hi) const;
    bool allows_from(const std::vector<Stack> & stacks, uint32_t partial, int n_missing,
                     const GrammarVocab::Token & t, std::vector<Stack> * out, uint32_t * out_partial,
                     int * out_missing) const;
    struct WalkMemo;
    void walk(const GrammarVocab & vocab, int32_t node, int32_t set, WalkMemo & memo, uint8_t * allowed) const;
    bool partial_fits(const std::vector<Stack> & stacks, uint32_t partial, int n_missing) const;
    void expand(Stack stack, std::vector<Stack> & out) const;
};

}  // namespace sl
