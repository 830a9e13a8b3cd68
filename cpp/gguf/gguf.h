// Memory-mapped GGUF reader (versions 2 and 3).
//
// Every count, length, offset, dimension and type read from the file is checked against the
// file size and sane limits before it is used; a bad file throws sl::GGUFError whose message
// names the file and what is wrong. Tensor data is never copied: GGUFTensor::data points into
// the read-only mapping, which lives as long as the GGUFFile.
//
// What the reader accepts (beyond the plain layout):
//   - little-endian files of version 2 or 3 (version 1 and big-endian files are refused);
//   - keys and tensor names of at most kGGUFMaxNameLength bytes, each key and name once;
//   - value types 0..12; BOOL bytes 0 or 1; arrays nested at most kGGUFMaxArrayDepth deep,
//     at most kGGUFMaxArrayElements elements in all the metadata arrays together;
//   - general.alignment, when present, a UINT32 power of two;
//   - tensors of at most 4 dimensions, each >= 0, of a type qtype_traits() knows, with a row
//     length that is a multiple of the block size, an element count and byte size that fit
//     in 64 bits, an offset that is a multiple of the alignment, data inside the file, and
//     no two tensors' bytes overlapping.
//
// Split files (llama.cpp's gguf-split: NAME-00001-of-0000N.gguf ... with split.no, split.count
// and split.tensors.count in each part's metadata): opening the first part opens the others,
// named as llama.cpp names them, beside it; the metadata is the first part's, the tensors are
// those of all the parts (each pointing into its own part's mapping). Opening a later part, a
// missing or mismatched part, a name twice across parts, or a tensor count other than
// split.tensors.count is a GGUFError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "quant/qtype.h"

namespace sl {

enum class GGUFType : uint32_t {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12,
};

const char * gguf_type_name(GGUFType t);  // "UINT8", ..., "FLOAT64"; "?" if out of range

constexpr uint64_t kGGUFMaxNameLength = 65535;             // bytes in a key or tensor name
constexpr int kGGUFMaxArrayDepth = 8;                      // arrays of arrays of ...
// Summed over all arrays. Each element is a GGUFValue (64 bytes), so this bounds the metadata's
// memory to 256 MiB whatever the file says; real tokenizers hold under 1.5M elements in all
// (a 262k vocabulary's tokens, scores and types; 128k tokens and 280k merges).
constexpr uint64_t kGGUFMaxArrayElements = uint64_t(1) << 22;
constexpr int kGGUFMaxDims = 4;

// One metadata value. Scalars hold their value; strings a view into the mapping; arrays their
// element type and elements (arrays of arrays nest).
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;
    union {
        uint64_t u64;
        int64_t i64;
        double f64;
        bool b;
    } num{};
    std::string_view str;           // STRING: bytes in the mapping (not NUL-terminated)
    GGUFType elem_type = GGUFType::UINT8;  // ARRAY: element type
    std::vector<GGUFValue> arr;     // ARRAY: elements

    bool is_integer() const;
    bool is_float() const;
};

struct GGUFKV {
    std::string key;
    GGUFValue value;
};

struct GGUFTensor {
    std::string name;
    QType type;
    int n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the row length (fastest-varying), as in ggml
    uint64_t offset = 0;           // relative to the start of its part's data section
    int part = 0;                  // the split part holding the data (0: the file itself)
    uint64_t nbytes = 0;
    const uint8_t * data = nullptr;  // into the mapping

    // The reader guarantees that every product of the ne fits in int64.
    int64_t nelements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    int64_t nrows() const { return ne[1] * ne[2] * ne[3]; }
};

class GGUFFile {
public:
    // Maps and parses the file (and the other parts of a split: see above); throws GGUFError.
    explicit GGUFFile(const std::string & path);
    ~GGUFFile();
    GGUFFile(const GGUFFile &) = delete;
    GGUFFile & operator=(const GGUFFile &) = delete;

    const std::string & path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const { return size_; }
    const uint8_t * mapping() const { return base_; }

    // Files of a split (1 for a whole file); part i's path (0: path()).
    int n_parts() const { return 1 + int(parts_.size()); }
    const std::string & part_path(int i) const { return i == 0 ? path_ : parts_[size_t(i - 1)]->path_; }
    // The offset of part i's data section; the headers of all the parts together.
    uint64_t part_data_offset(int i) const { return i == 0 ? data_offset_ : parts_[size_t(i - 1)]->data_offset_; }
    uint64_t header_bytes() const {
        uint64_t n = data_offset_;
        for (const auto & p : parts_) n += p->data_offset_;
        return n;
    }

    const std::vector<GGUFKV> & kvs() const { return kvs_; }
    const GGUFValue * find(std::string_view key) const;  // nullptr if absent

    // Typed getters: throw GGUFError naming the file and the key when the key is missing or
    // holds another type. Integer getters accept any integer type whose value fits.
    int64_t get_int(std::string_view key) const;
    int64_t get_int(std::string_view key, int64_t fallback) const;
    double get_float(std::string_view key) const;  // FLOAT32/FLOAT64 (or an integer)
    double get_float(std::string_view key, double fallback) const;
    bool get_bool(std::string_view key, bool fallback) const;
    std::string get_str(std::string_view key) const;
    std::string get_str(std::string_view key, const std::string & fallback) const;

    const std::vector<GGUFTensor> & tensors() const { return tensors_; }
    const GGUFTensor * find_tensor(std::string_view name) const;  // nullptr if absent

    // llama.cpp's kv_overrides: replaces the value of `key` (or adds the key) for every later read.
    // Scalars only; a STRING's bytes are `text` (kept by the file; value.str is set to them).
    void set_override(const std::string & key, GGUFValue value, const std::string & text = {});

    // Releases the pages of [ptr, ptr+n) from this process's resident set (after an upload to
    // another device). The mapping stays valid: a later read faults the pages back in from the
    // file. Only whole pages inside the range are dropped (the partial pages at either end may
    // hold a neighbour's bytes), except that a range reaching the end of the file includes the
    // file's last page. Throws sl::Error if the range is not inside the mapping.
    void advise_dontneed(const void * ptr, size_t n) const;
    // Whether [ptr, ptr + n) lies inside the mapping (of one of the parts).
    bool contains(const void * ptr, size_t n) const;

private:
    struct OnePart {};
    GGUFFile(const std::string & path, OnePart);  // a part of a split, parsed on its own
    void parse();
    void open_parts();  // the other parts of a split, when this is its first part
    void release();  // unmaps and closes
    bool contains_own(const void * ptr, size_t n) const;
    void advise_own(const void * ptr, size_t n) const;

    std::string path_;
    int fd_ = -1;
    const uint8_t * base_ = nullptr;
    uint64_t size_ = 0;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<GGUFKV> kvs_;
    std::vector<GGUFTensor> tensors_;
    // Keys and names are views of the bytes in the mapping, so they stay valid as it does.
    std::unordered_map<std::string_view, size_t> kv_index_;
    std::unordered_map<std::string_view, size_t> tensor_index_;
    std::vector<std::unique_ptr<GGUFFile>> parts_;  // parts 2.. of a split
    std::deque<std::string> owned_;  // keys and strings of overrides (addresses stay valid)

    friend class GGUFParser;
};

}  // namespace sl
