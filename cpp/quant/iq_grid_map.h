// Lookup structures for the grid i-quant quantizers (iquants_grid_quantize.cpp): each lattice
// table of quant/iq_grids.h seen as points of small integer levels, an index from a point to its
// table entry, and for every point that is not an entry the list of entries nearest to it.
//
// A point is D coordinates (D = 8 for the IQ2 and IQ1 tables, 4 for the IQ3 ones), coordinate i
// a level l_i in [0, 2^bits); its index is sum l_i << (bits * i). The quantizer rounds values to
// levels, looks the index up, and if the point is not in the table picks, among the neighbours,
// the one with the smallest weighted error. The neighbour lists are ggml's (iq2xs_init_impl,
// iq3xs_init_impl): the entries at the `nwant` smallest squared distances, ordered by distance
// and then by entry number, since that order decides ties in the quantizer's search.
//
// Built once per lattice on first use (thread-safe), from the tables splitllm decodes with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sl::iqg {

enum class Lattice { IQ2XXS, IQ2XS, IQ2S, IQ1S, IQ3XXS, IQ3S };

class GridMap {
public:
    int dims = 0;  // coordinates per entry: 8 or 4
    int bits = 0;  // bits of an index per coordinate: 2 or 3
    int size = 0;  // entries

    // 2 l + 1 for each coordinate of entry j: the odd integers ggml's searches measure with.
    const int8_t * odd(int j) const { return odd_.data() + size_t(dims) * size_t(j); }
    // Level (0 .. 2^bits - 1) of coordinate i of entry j.
    int level(int j, int i) const { return (odd(j)[i] - 1) / 2; }
    // Entry whose levels have index u, or -1.
    int entry(uint32_t u) const { return map_[u] >= 0 ? map_[u] : -1; }
    // Entries nearest to the point of index u (not an entry, levels below the lattice's limit):
    // *count of them, then the list.
    const uint16_t * neighbours(uint32_t u, int * count) const {
        const uint16_t * p = neighbours_.data() + (-map_[u] - 1);
        *count = p[0];
        return p + 1;
    }

private:
    friend GridMap build_grid_map(Lattice which);
    std::vector<int8_t> odd_;           // size * dims
    std::vector<int32_t> map_;          // index -> entry (>= 0) or -(1 + offset of its neighbour list)
    std::vector<uint16_t> neighbours_;  // per listed point: count, then entry numbers
};

// The map of one lattice, built on first call.
const GridMap & grid_map(Lattice which);

}  // namespace sl::iqg
