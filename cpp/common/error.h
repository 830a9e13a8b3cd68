// Typed errors. Nothing in the core exits or aborts on bad input: it throws one of these,
// and the Python binding turns each into an exception (GGUFError -> splitllm.GGUFError).
#pragma once

#include <stdexcept>
#include <string>

namespace sl {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A GGUF file that cannot be read: the message names the file and the field.
struct GGUFError : Error {
    using Error::Error;
};

// A CUDA runtime failure or a device that cannot hold what was asked of it.
struct CudaError : Error {
    using Error::Error;
};

// printf-style formatting into a std::string.
std::string strfmt(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace sl

#define SL_CHECK(cond, ...)                                    \
    do {                                                       \
        if (!(cond)) throw ::sl::Error(::sl::strfmt(__VA_ARGS__)); \
    } while (0)
