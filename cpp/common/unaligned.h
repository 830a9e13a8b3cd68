// Scalar loads of little-endian fields at any byte offset (block formats pack 16- and 32-bit
// fields at odd offsets; memcpy compiles to one unaligned load).
#pragma once

#include <cstdint>
#include <cstring>

namespace sl {

inline uint16_t load_u16(const void * p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline uint32_t load_u32(const void * p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline uint64_t load_u64(const void * p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace sl
