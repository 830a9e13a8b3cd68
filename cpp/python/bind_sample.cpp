#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "python/bind.h"
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
        .def_readwrite("logit_bias", &sl::SamplerParams::logit_bias);

    pyb::class_<sl::Sampler>(m, "Sampler", "Token sampler: penalty history and random state.")
        .def(pyb::init<const sl::SamplerParams &, int32_t, uint64_t>(), "params"_a, "n_vocab"_a, "seed"_a)
        .def("reset", &sl::Sampler::reset, "seed"_a)
        .def("accept", &sl::Sampler::accept, "token"_a)
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
        .def_property_readonly("n_vocab", &sl::Sampler::n_vocab);
}

}  // namespace sl::py
