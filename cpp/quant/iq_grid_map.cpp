#include "quant/iq_grid_map.h"

#include <mutex>
#include <string>

#include "common/error.h"
#include "quant/iq_grids.h"

namespace sl::iqg {

namespace {

struct LatticeSpec {
    const uint64_t * grid8;  // 8-coordinate tables, or
    const uint32_t * grid4;  // 4-coordinate tables
    int size;
    int bits;
    int max_level;           // highest level the quantizers round to (kMaxQ - 1)
    int nwant;               // distinct distances kept in a neighbour list (ggml's nwant)
    int n_values;
    int16_t values[8];       // the table's byte for level 0, 1, ...
    bool signed_bytes;       // iq1s_grid holds int8 -1, 0, 1
};

// Indexed by Lattice. Byte values per level checked against ggml's kgrid_* index tables.
const LatticeSpec kSpecs[] = {
    {iq2xxs_grid, nullptr, 256, 2, 2, 2, 3, {8, 25, 43}, false},
    {iq2xs_grid, nullptr, 512, 2, 2, 2, 3, {8, 25, 43}, false},
    {iq2s_grid, nullptr, 1024, 2, 2, 1, 3, {8, 25, 43}, false},
    {iq1s_grid, nullptr, 2048, 2, 2, 3, 3, {-1, 0, 1}, true},
    {nullptr, iq3xxs_grid, 256, 3, 7, 2, 8, {4, 12, 20, 28, 36, 44, 52, 62}, false},
    {nullptr, iq3s_grid, 512, 3, 7, 3, 8, {1, 3, 5, 7, 9, 11, 13, 15}, false},
};

int level_of(const LatticeSpec & s, uint8_t byte) {
    const int v = s.signed_bytes ? int(int8_t(byte)) : int(byte);
    for (int l = 0; l < s.n_values; ++l)
        if (s.values[l] == v) return l;
    throw Error("iq grid map: table byte " + std::to_string(v) + " is no level of its lattice");
}

// Whether every coordinate of index u is at most max_level (the points a quantizer can reach).
bool reachable(uint32_t u, int dims, int bits, int max_level) {
    for (int i = 0; i < dims; ++i)
        if (int((u >> (bits * i)) & ((1u << bits) - 1)) > max_level) return false;
    return true;
}

// Appends the neighbour list of point u: the entries at the nwant smallest distances, by
// distance and then entry number (the order of ggml's sort of (distance, entry) pairs). Squared
// distances in levels are ggml's (in odd units) divided by 4: the same order.
void append_neighbours(const GridMap & g, uint32_t u, int nwant, std::vector<int> & dist,
                       std::vector<uint16_t> & out) {
    constexpr int kMaxDist = 256;  // 8 * 3^2 and 4 * 7^2 are below
    int lu[8];
    for (int i = 0; i < g.dims; ++i) lu[i] = int((u >> (g.bits * i)) & ((1u << g.bits) - 1));
    bool present[kMaxDist] = {};
    for (int j = 0; j < g.size; ++j) {
        int d2 = 0;
        for (int i = 0; i < g.dims; ++i) d2 += (g.level(j, i) - lu[i]) * (g.level(j, i) - lu[i]);
        dist[j] = d2;
        present[d2] = true;
    }
    const size_t head = out.size();
    out.push_back(0);
    int kept = 0;
    for (int d = 0; d < kMaxDist && kept < nwant; ++d) {
        if (!present[d]) continue;
        ++kept;
        for (int j = 0; j < g.size; ++j)
            if (dist[j] == d) out.push_back(uint16_t(j));
    }
    out[head] = uint16_t(out.size() - head - 1);
}

}  // namespace

GridMap build_grid_map(Lattice which) {
    const LatticeSpec & s = kSpecs[int(which)];
    GridMap g;
    g.dims = s.grid8 ? 8 : 4;
    g.bits = s.bits;
    g.size = s.size;
    g.odd_.resize(size_t(g.size) * g.dims);
    g.map_.assign(size_t(1) << (g.bits * g.dims), -1);
    for (int j = 0; j < g.size; ++j) {
        const uint64_t e = s.grid8 ? s.grid8[j] : s.grid4[j];
        uint32_t u = 0;
        for (int i = 0; i < g.dims; ++i) {
            const int l = level_of(s, uint8_t(e >> (8 * i)));
            g.odd_[size_t(j) * g.dims + i] = int8_t(2 * l + 1);
            u |= uint32_t(l) << (g.bits * i);
        }
        g.map_[u] = j;
    }
    std::vector<int> dist(g.size);
    for (uint32_t u = 0; u < g.map_.size(); ++u) {
        if (g.map_[u] >= 0 || !reachable(u, g.dims, g.bits, s.max_level)) continue;
        g.map_[u] = -int32_t(g.neighbours_.size()) - 1;
        append_neighbours(g, u, s.nwant, dist, g.neighbours_);
    }
    return g;
}

const GridMap & grid_map(Lattice which) {
    constexpr int n = int(sizeof(kSpecs) / sizeof(kSpecs[0]));
    static std::once_flag once[n];
    static GridMap maps[n];
    const int i = int(which);
    std::call_once(once[i], [i] { maps[i] = build_grid_map(Lattice(i)); });
    return maps[i];
}

}  // namespace sl::iqg
