// libFuzzer target for the GGUF reader (clang only: cmake -DSPLITLLM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++).
// Without clang, bench/fuzz/fuzz_gguf.py drives the same reader through atheris.
//
// Each input becomes an in-memory file (memfd) opened by path; the reader must throw
// sl::GGUFError or accept it, and an accepted file's tensors must lie inside the input.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/error.h"
#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const int fd = memfd_create("gguf-fuzz", MFD_CLOEXEC);
    if (fd < 0) return 0;
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) break;
        done += size_t(n);
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    try {
        sl::GGUFFile f(path);
        for (const sl::GGUFTensor & t : f.tensors()) {
            const uint64_t start = uint64_t(t.data - f.mapping());
            if (start > size || t.nbytes > size - start || std::memcmp(t.data, data + start, t.nbytes) != 0) {
                std::fprintf(stderr, "tensor outside the input or not matching it\n");
                std::abort();
            }
        }
    } catch (const sl::GGUFError &) {
    }
    close(fd);
    return 0;
}
