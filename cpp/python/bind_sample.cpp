#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "python/bind.h"
#include "sample/grammar.h"
#include "sample/sampler.h"

namespace sl::py {

using Logits = pyb::array_t<float, pyb::array::c_style | pyb::array::forcecast>;

void bind_sample(pyb::module_ & m) {
    using namespace pybind11::literals;

    pyb::class_<sl::SamplerParams>(m, "SamplerParams", "Sampler settings (see cpp/sample/sampler.h).")
        .def(pyb::init<>())
        .def_readwrite("temperature", &sl::SamplerParams::temperature)
        .def_readwrite("top_k", &sl::SamplerParams::top_k)
        .def_readwrite("top_p", &sl::SamplerParams::top_p)
        .def_readwrite("min_p", &sl::SamplerParams::min_p)
        .def_readwrite("repeat_penalty", &sl::SamplerParams::repeat_penalty)
        .def_readwrite("repeat_last_n", &sl::SamplerParams::repeat_last_n)
        .def_readwrite("frequency_penalty", &sl::SamplerParams::frequency_penalty)
        .def_readwrite("presence_penalty", &sl::SamplerParams::presence_penalty)
        .def_readwrite("logit_bias", &sl::SamplerParams::logit_bias)
        .def_readwrite("typical_p", &sl::SamplerParams::typical_p)
        .def_readwrite("mirostat", &sl::SamplerParams::mirostat)
        .def_readwrite("mirostat_tau", &sl::SamplerParams::mirostat_tau)
        .def_readwrite("mirostat_eta", &sl::SamplerParams::mirostat_eta)
        .def_readwrite("xtc_probability", &sl::SamplerParams::xtc_probability)
        .def_readwrite("xtc_threshold", &sl::SamplerParams::xtc_threshold)
        .def_readwrite("top_n_sigma", &sl::SamplerParams::top_n_sigma)
        .def_readwrite("dynatemp_range", &sl::SamplerParams::dynatemp_range)
        .def_readwrite("dynatemp_exponent", &sl::SamplerParams::dynatemp_exponent)
        .def_readwrite("dry_multiplier", &sl::SamplerParams::dry_multiplier)
        .def_readwrite("dry_base", &sl::SamplerParams::dry_base)
        .def_readwrite("dry_allowed_length", &sl::SamplerParams::dry_allowed_length)
        .def_readwrite("dry_penalty_last_n", &sl::SamplerParams::dry_penalty_last_n)
        .def_readwrite("dry_breakers", &sl::SamplerParams::dry_breakers)
        .def_readwrite("server_chain", &sl::SamplerParams::server_chain);

    pyb::class_<sl::Sampler>(m, "Sampler", "Token sampler: penalty history and random state.")
        .def(pyb::init<const sl::SamplerParams &, int32_t, uint64_t>(), "params"_a, "n_vocab"_a, "seed"_a)
        .def("reset", &sl::Sampler::reset, "seed"_a)
        .def("accept", &sl::Sampler::accept, "token"_a)
        .def(
            "accept_prompt",
            [](sl::Sampler & s, const std::vector<int32_t> & tokens) { s.accept_prompt(tokens.data(), tokens.size()); },
            "tokens"_a)
        .def(
            "sample",
            [](sl::Sampler & s, const Logits & logits) { return s.sample(logits.data(), size_t(logits.size())); },
            "logits"_a)
        .def(
            "probs",
            [](sl::Sampler & s, const Logits & logits) {
                std::vector<int32_t> ids;
                std::vector<float> p;
                s.probs(logits.data(), size_t(logits.size()), ids, p);
                return pyb::make_tuple(pyb::array_t<int32_t>(ids.size(), ids.data()),
                                       pyb::array_t<float>(p.size(), p.data()));
            },
            "logits"_a)
        .def(
            "adjusted",
            [](sl::Sampler & s, const Logits & logits) {
                pyb::array_t<float> out(logits.size());
                s.adjusted(logits.data(), size_t(logits.size()), out.mutable_data());
                return out;
            },
            "logits"_a)
        .def_property_readonly("n_vocab", &sl::Sampler::n_vocab)
        .def_property_readonly("general", &sl::Sampler::general)
        .def_property_readonly("dry", &sl::Sampler::dry)
        .def_property_readonly("mirostat_mu", &sl::Sampler::mirostat_mu);

    pyb::class_<sl::GrammarRules, std::shared_ptr<sl::GrammarRules>>(
        m, "GrammarRules", "A parsed GBNF grammar (see cpp/sample/grammar.h); sl.Error on a bad one.")
        .def(pyb::init([](const std::string & text, const std::string & root) {
                 pyb::gil_scoped_release nogil;
                 return std::make_shared<sl::GrammarRules>(text, root);
             }),
             "text"_a, "root"_a = "root")
        .def_property_readonly("n_rules", &sl::GrammarRules::n_rules);

    pyb::class_<sl::GrammarVocab, std::shared_ptr<sl::GrammarVocab>>(
        m, "GrammarVocab", "Each token's text as the grammar sees it, and the end-of-generation tokens.")
        .def(pyb::init([](const std::vector<pyb::bytes> & pieces, const std::vector<int32_t> & eog) {
                 std::vector<std::string> p(pieces.begin(), pieces.end());
                 pyb::gil_scoped_release nogil;
                 return std::make_shared<sl::GrammarVocab>(p, eog);
             }),
             "pieces"_a, "eog"_a)
        .def_property_readonly("n_vocab", &sl::GrammarVocab::n_vocab);

    pyb::class_<sl::Grammar>(m, "Grammar", "The matching state of one generation.")
        .def(pyb::init<std::shared_ptr<const sl::GrammarRules>>(), "rules"_a)
        .def("copy", [](const sl::Grammar & g) { return sl::Grammar(g); })
        .def("allows", &sl::Grammar::allows, "vocab"_a, "token"_a)
        .def("accept", &sl::Grammar::accept, "vocab"_a, "token"_a)
        .def(
            "allowed",
            [](const sl::Grammar & g, const sl::GrammarVocab & vocab) {
                pyb::array_t<bool> out(vocab.n_vocab());
                uint8_t * dst = reinterpret_cast<uint8_t *>(out.mutable_data());
                {
                    pyb::gil_scoped_release nogil;
                    g.allowed(vocab, dst);
                }
                return out;
            },
            "vocab"_a, "Boolean mask over the vocabulary: the tokens that may come next.")
        .def_property_readonly("complete", &sl::Grammar::complete)
        .def_property_readonly("finished", &sl::Grammar::finished);
}

}  // namespace sl::py
