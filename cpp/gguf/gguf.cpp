#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <limits>

#include "common/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace sl {

namespace {

constexpr uint32_t kLastValueType = uint32_t(GGUFType::FLOAT64);

// Fewest bytes a value of each type takes in the file (indexed by GGUFType): a string is at
// least its length, an array its element type and length.
constexpr uint64_t kMinValueSize[kLastValueType + 1] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8};

constexpr const char * kValueTypeNames[kLastValueType + 1] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};

constexpr uint64_t kMinKVSize = 8 + 4 + 1;  // key length, value type, a one-byte value
constexpr uint64_t kMinTensorInfoSize = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset

// Length of the valid UTF-8 sequence starting at s (n bytes available), or 0. Same rules as
// Python's strict decoder: no overlong forms, no surrogates, nothing above U+10FFFF.
size_t utf8_len(const unsigned char * s, size_t n) {
    const unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < len; ++k)
        if (s[k] < 0x80 || s[k] > 0xBF) return 0;
    return len;
}

// Bytes from the file made safe for a message: valid UTF-8 is kept, control characters and
// invalid bytes become \xNN, and anything past max_len bytes is cut.
std::string printable(std::string_view s, size_t max_len = 80) {
    const auto * p = reinterpret_cast<const unsigned char *>(s.data());
    const size_t n = std::min(s.size(), max_len);
    std::string out;
    for (size_t i = 0; i < n;) {
        const size_t len = utf8_len(p + i, n - i);
        if (len > 1 || (len == 1 && p[i] >= 0x20 && p[i] != 0x7F)) {
            out.append(s.data() + i, len);
            i += len;
        } else {
            out += strfmt("\\x%02x", p[i]);
            i += 1;
        }
    }
    if (s.size() > n) out += strfmt("... (%zu bytes)", s.size());
    return out;
}

bool is_signed_int(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

std::string dims_text(const GGUFTensor & t) {
    std::string out = "[";
    for (int d = 0; d < t.n_dims; ++d) out += strfmt(d ? ", %" PRId64 : "%" PRId64, t.ne[d]);
    return out + "]";
}

}  // namespace

const char * gguf_type_name(GGUFType t) {
    const uint32_t i = uint32_t(t);
    return i <= kLastValueType ? kValueTypeNames[i] : "?";
}

bool GGUFValue::is_integer() const {
    switch (type) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
            return true;
        default:
            return false;
    }
}

bool GGUFValue::is_float() const { return type == GGUFType::FLOAT32 || type == GGUFType::FLOAT64; }

// ---------------------------------------------------------------------------------------------
// Parser: walks the mapping once, checking every field before it is used.

class GGUFParser {
public:
    explicit GGUFParser(GGUFFile & f) : f_(f), path_(printable(f.path_, 4096)) {}

    void run() {
        header();
        metadata();
        tensor_infos();
        alignment();
        tensor_data();
        check_overlaps();
    }

private:
    [[noreturn]] void fail(const std::string & msg) const {
        throw GGUFError(path_ + ": " + (ctx_.empty() ? msg : ctx_ + ": " + msg));
    }

    uint64_t remaining() const { return f_.size_ - pos_; }

    void need(uint64_t n, const char * what) const {
        if (n > remaining())
            fail(strfmt("the file ends inside %s (%" PRIu64 " bytes needed at offset %" PRIu64
                        ", file size %" PRIu64 ")", what, n, pos_, f_.size_));
    }

    template <typename T>
    T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, f_.base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string_view str(const char * what, uint64_t max_len) {
        const uint64_t n = read<uint64_t>(what);
        if (n > max_len)
            fail(strfmt("%s of %" PRIu64 " bytes is longer than the limit of %" PRIu64 " bytes", what, n,
                        max_len));
        if (n > remaining())
            fail(strfmt("%s of %" PRIu64 " bytes at offset %" PRIu64 " runs past the end of the file (size %"
                        PRIu64 ")", what, n, pos_, f_.size_));
        std::string_view s(reinterpret_cast<const char *>(f_.base_ + pos_), size_t(n));
        pos_ += n;
        return s;
    }

    void header();
    void metadata();
    void value(uint32_t type, GGUFValue & v, int depth);
    void scalar(GGUFValue & v);
    void array(GGUFValue & v, int depth);
    void tensor_infos();
    void alignment();
    void tensor_data();
    void size_tensor(GGUFTensor & t);
    void check_overlaps();

    GGUFFile & f_;
    std::string path_;  // printable
    std::string ctx_;   // what is being read, for messages ("tensor 'x'")
    uint64_t pos_ = 0;
    uint64_t n_tensors_ = 0;
    uint64_t n_kv_ = 0;
    uint64_t elements_left_ = kGGUFMaxArrayElements;
};

void GGUFParser::header() {
    ctx_ = "header";
    need(4, "the magic");
    const uint8_t * m = f_.base_;
    if (std::memcmp(m, "GGUF", 4) != 0)
        fail(strfmt("bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file", m[0], m[1], m[2], m[3]));
    pos_ = 4;
    const uint32_t version = read<uint32_t>("the version");
    if (version == 1) fail("GGUF version 1 is not supported (this reader handles versions 2 and 3)");
    if (version != 2 && version != 3) {
        if (version != 0 && (version & 0xFFFF) == 0)
            fail(strfmt("version field 0x%08x looks byte-swapped: big-endian GGUF files are not supported",
                        version));
        fail(strfmt("unsupported GGUF version %u (this reader handles versions 2 and 3)", version));
    }
    f_.version_ = version;
    n_tensors_ = read<uint64_t>("the tensor count");
    n_kv_ = read<uint64_t>("the metadata count");
    if (n_tensors_ > remaining() / kMinTensorInfoSize)
        fail(strfmt("tensor count %" PRIu64 " cannot fit in the %" PRIu64 " bytes after the header", n_tensors_,
                    remaining()));
    if (n_kv_ > (remaining() - n_tensors_ * kMinTensorInfoSize) / kMinKVSize)
        fail(strfmt("metadata count %" PRIu64 " cannot fit in the %" PRIu64 " bytes after the header", n_kv_,
                    remaining()));
    ctx_.clear();
}

void GGUFParser::metadata() {
    f_.kvs_.reserve(size_t(std::min<uint64_t>(n_kv_, 1024)));
    for (uint64_t i = 0; i < n_kv_; ++i) {
        ctx_ = strfmt("metadata entry %" PRIu64, i);
        const std::string_view key = str("a metadata key", kGGUFMaxNameLength);
        ctx_ = "metadata key '" + printable(key) + "'";
        if (!f_.kv_index_.emplace(key, f_.kvs_.size()).second) fail("the key appears twice");
        const uint32_t type = read<uint32_t>("the value type");
        if (type > kLastValueType) fail(strfmt("unknown value type %u", type));
        f_.kvs_.emplace_back();
        f_.kvs_.back().key = std::string(key);
        value(type, f_.kvs_.back().value, 0);
    }
    ctx_.clear();
}

void GGUFParser::value(uint32_t type, GGUFValue & v, int depth) {
    v.type = GGUFType(type);
    if (v.type == GGUFType::STRING)
        v.str = str("a string value", std::numeric_limits<uint64_t>::max());
    else if (v.type == GGUFType::ARRAY)
        array(v, depth);
    else
        scalar(v);
}

void GGUFParser::scalar(GGUFValue & v) {
    switch (v.type) {
        case GGUFType::UINT8: v.num.u64 = read<uint8_t>("a UINT8 value"); break;
        case GGUFType::INT8: v.num.i64 = read<int8_t>("an INT8 value"); break;
        case GGUFType::UINT16: v.num.u64 = read<uint16_t>("a UINT16 value"); break;
        case GGUFType::INT16: v.num.i64 = read<int16_t>("an INT16 value"); break;
        case GGUFType::UINT32: v.num.u64 = read<uint32_t>("a UINT32 value"); break;
        case GGUFType::INT32: v.num.i64 = read<int32_t>("an INT32 value"); break;
        case GGUFType::UINT64: v.num.u64 = read<uint64_t>("a UINT64 value"); break;
        case GGUFType::INT64: v.num.i64 = read<int64_t>("an INT64 value"); break;
        case GGUFType::FLOAT32: v.num.f64 = read<float>("a FLOAT32 value"); break;
        case GGUFType::FLOAT64: v.num.f64 = read<double>("a FLOAT64 value"); break;
        case GGUFType::BOOL: {
            const uint8_t b = read<uint8_t>("a BOOL value");
            if (b > 1) fail(strfmt("BOOL byte %u at offset %" PRIu64 " is neither 0 nor 1", b, pos_ - 1));
            v.num.b = b != 0;
            break;
        }
        default: fail(strfmt("value type %u is not a scalar", uint32_t(v.type)));
    }
}

void GGUFParser::array(GGUFValue & v, int depth) {
    if (depth >= kGGUFMaxArrayDepth) fail(strfmt("arrays are nested more than %d deep", kGGUFMaxArrayDepth));
    const uint32_t et = read<uint32_t>("an array's element type");
    if (et > kLastValueType) fail(strfmt("unknown array element type %u", et));
    const uint64_t n = read<uint64_t>("an array's length");
    if (n > remaining() / kMinValueSize[et])
        fail(strfmt("array of %" PRIu64 " %s values at offset %" PRIu64 " cannot fit in the %" PRIu64
                    " bytes left in the file", n, kValueTypeNames[et], pos_, remaining()));
    if (n > elements_left_)
        fail(strfmt("the metadata arrays hold more than %" PRIu64 " elements in all", kGGUFMaxArrayElements));
    elements_left_ -= n;
    v.elem_type = GGUFType(et);
    v.arr.resize(size_t(n));
    for (GGUFValue & e : v.arr) value(et, e, depth + 1);
}

void GGUFParser::tensor_infos() {
    f_.tensors_.reserve(size_t(std::min<uint64_t>(n_tensors_, 4096)));
    for (uint64_t i = 0; i < n_tensors_; ++i) {
        ctx_ = strfmt("tensor info %" PRIu64, i);
        const std::string_view name = str("a tensor name", kGGUFMaxNameLength);
        ctx_ = "tensor '" + printable(name) + "'";
        if (!f_.tensor_index_.emplace(name, f_.tensors_.size()).second) fail("the name appears twice");
        GGUFTensor t;
        t.name = std::string(name);
        const uint32_t n_dims = read<uint32_t>("the dimension count");
        if (n_dims > uint32_t(kGGUFMaxDims))
            fail(strfmt("%u dimensions (at most %d are allowed)", n_dims, kGGUFMaxDims));
        t.n_dims = int(n_dims);
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = read<uint64_t>("a dimension");
            if (ne > uint64_t(std::numeric_limits<int64_t>::max()))
                fail(strfmt("dimension %u is %" PRIu64 " (negative as a signed 64-bit number)", d, ne));
            t.ne[d] = int64_t(ne);
        }
        const uint32_t type = read<uint32_t>("the tensor type");
        if (!qtype_traits(type)) fail(strfmt("unknown tensor type %u", type));
        t.type = QType(type);
        t.offset = read<uint64_t>("the tensor offset");
        f_.tensors_.push_back(std::move(t));
    }
    ctx_.clear();
}

void GGUFParser::alignment() {
    if (const GGUFValue * v = f_.find("general.alignment")) {
        ctx_ = "metadata key 'general.alignment'";
        if (v->type != GGUFType::UINT32) fail(strfmt("has type %s (expected UINT32)", gguf_type_name(v->type)));
        const uint64_t a = v->num.u64;
        if (a == 0 || (a & (a - 1)) != 0) fail(strfmt("%" PRIu64 " is not a power of two", a));
        f_.alignment_ = a;
        ctx_.clear();
    }
    // pos_ <= size_ and alignment < 2^32: no overflow.
    f_.data_offset_ = (pos_ + f_.alignment_ - 1) / f_.alignment_ * f_.alignment_;
}

void GGUFParser::tensor_data() {
    for (GGUFTensor & t : f_.tensors_) {
        ctx_ = "tensor '" + printable(t.name) + "'";
        size_tensor(t);
    }
    ctx_.clear();
}

void GGUFParser::size_tensor(GGUFTensor & t) {
    const QTypeTraits * tr = qtype_traits(t.type);
    // Every partial product of the dimensions (nrows(), nelements()) and every byte stride (a
    // row's bytes times later dimensions) must fit in int64, empty tensors included: check them
    // with each dimension of 0 counted as 1.
    int64_t bound = 1;
    for (int d = 0; d < t.n_dims; ++d)
        if (__builtin_mul_overflow(bound, std::max<int64_t>(t.ne[d], 1), &bound))
            fail(strfmt("the element count of dimensions %s overflows 64 bits", dims_text(t).c_str()));
    if (t.ne[0] % tr->blck_size != 0)
        fail(strfmt("row length %" PRId64 " is not a multiple of the %s block size %" PRId64, t.ne[0], tr->name,
                    tr->blck_size));
    int64_t byte_bound = 0;
    bool overflow = __builtin_mul_overflow(std::max(t.ne[0], tr->blck_size) / tr->blck_size,
                                           int64_t(tr->type_size), &byte_bound);
    for (int d = 1; d < t.n_dims && !overflow; ++d)
        overflow = __builtin_mul_overflow(byte_bound, std::max<int64_t>(t.ne[d], 1), &byte_bound);
    if (overflow)
        fail(strfmt("the byte size of %s %s values overflows 64 bits (dimensions of 0 counted as 1)",
                    dims_text(t).c_str(), tr->name));
    const uint64_t nbytes = uint64_t(t.nelements() / tr->blck_size) * tr->type_size;  // <= byte_bound
    if (t.offset % f_.alignment_ != 0)
        fail(strfmt("offset %" PRIu64 " is not a multiple of the alignment %" PRIu64, t.offset, f_.alignment_));
    uint64_t start = 0;
    if (__builtin_add_overflow(f_.data_offset_, t.offset, &start) || start > f_.size_ ||
        nbytes > f_.size_ - start)
        fail(strfmt("%" PRIu64 " bytes at offset %" PRIu64 " of the data section (which starts at %" PRIu64
                    ") run past the end of the file (size %" PRIu64 ")", nbytes, t.offset, f_.data_offset_,
                    f_.size_));
    t.nbytes = nbytes;
    t.data = f_.base_ + start;
}

void GGUFParser::check_overlaps() {
    std::vector<const GGUFTensor *> order;
    for (const GGUFTensor & t : f_.tensors_)
        if (t.nbytes > 0) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const GGUFTensor * a, const GGUFTensor * b) { return a->offset < b->offset; });
    // Sorted by start, so each region need only end before the next one starts.
    for (size_t i = 1; i < order.size(); ++i) {
        const GGUFTensor & a = *order[i - 1];
        const GGUFTensor & b = *order[i];
        if (a.offset + a.nbytes > b.offset)
            fail(strfmt("tensors '%s' (bytes %" PRIu64 "..%" PRIu64 " of the data section) and '%s' (bytes %" PRIu64
                        "..%" PRIu64 ") overlap", printable(a.name).c_str(), a.offset, a.offset + a.nbytes,
                        printable(b.name).c_str(), b.offset, b.offset + b.nbytes));
    }
}

// ---------------------------------------------------------------------------------------------
// The file.

GGUFFile::GGUFFile(const std::string & path) : path_(path) {
    try {
        parse();
        open_parts();
    } catch (...) {
        parts_.clear();
        release();
        throw;
    }
}

GGUFFile::GGUFFile(const std::string & path, OnePart) : path_(path) {
    try {
        parse();
    } catch (...) {
        release();
        throw;
    }
}

namespace {

// A split key's value as an integer (any integer type), or `fallback` if absent.
int64_t split_key(const GGUFFile & f, const char * key, int64_t fallback) {
    const GGUFValue * v = f.find(key);
    if (!v) return fallback;
    if (!v->is_integer()) throw GGUFError(printable(f.path(), 4096) + ": metadata '" + key + "' must be an integer");
    return f.get_int(key);
}

// llama.cpp's name of part `no` (0-based) of `count`: PREFIX-%05d-of-%05d.gguf.
std::string split_name(const std::string & prefix, int64_t no, int64_t count) {
    return prefix + strfmt("-%05d-of-%05d.gguf", int(no + 1), int(count));
}

}  // namespace

void GGUFFile::open_parts() {
    const int64_t count = split_key(*this, "split.count", 1);
    if (count <= 1) return;
    const std::string where = printable(path_, 4096);
    if (count > 9999) throw GGUFError(where + strfmt(": split.count %lld is out of range", (long long)count));
    const int64_t no = split_key(*this, "split.no", 0);
    if (no != 0)
        throw GGUFError(where + strfmt(": this is part %lld of a GGUF split in %lld files: open the first part "
                                       "(...-00001-of-%05d.gguf), which reads the others",
                                       (long long)no + 1, (long long)count, int(count)));
    const std::string suffix = split_name("", 0, count);
    if (path_.size() <= suffix.size() || path_.compare(path_.size() - suffix.size(), suffix.size(), suffix) != 0)
        throw GGUFError(where + ": the first part of a GGUF split in " + std::to_string(count) +
                        " files must be named PREFIX" + suffix + ", as llama.cpp's gguf-split names it, so that the "
                        "other parts can be found");
    const std::string prefix = path_.substr(0, path_.size() - suffix.size());
    for (int64_t i = 1; i < count; ++i) {
        const std::string part_path = split_name(prefix, i, count);
        auto part = std::unique_ptr<GGUFFile>(new GGUFFile(part_path, OnePart{}));
        const std::string pw = printable(part_path, 4096);
        if (split_key(*part, "split.count", 1) != count || split_key(*part, "split.no", -1) != i)
            throw GGUFError(pw + strfmt(": not part %lld of %lld of %s (its split.no / split.count differ)",
                                        (long long)i + 1, (long long)count, where.c_str()));
        parts_.push_back(std::move(part));
        const GGUFFile & p = *parts_.back();
        for (const GGUFTensor & t : p.tensors_) {
            if (!tensor_index_.emplace(p.tensor_index_.find(t.name)->first, tensors_.size()).second)
                throw GGUFError(pw + ": tensor '" + printable(t.name) + "' is in an earlier part too");
            tensors_.push_back(t);
            tensors_.back().part = int(i);
        }
    }
    const int64_t want = split_key(*this, "split.tensors.count", int64_t(tensors_.size()));
    if (want != int64_t(tensors_.size()))
        throw GGUFError(where + strfmt(": split.tensors.count is %lld but the %lld parts hold %zu tensors",
                                       (long long)want, (long long)count, tensors_.size()));
}

GGUFFile::~GGUFFile() { release(); }

void GGUFFile::release() {
    if (base_) munmap(const_cast<uint8_t *>(base_), size_t(size_));
    if (fd_ >= 0) close(fd_);
    base_ = nullptr;
    fd_ = -1;
}

void GGUFFile::parse() {
    const std::string where = printable(path_, 4096);
    fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block
    if (fd_ < 0) throw GGUFError(where + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (fstat(fd_, &st) != 0) throw GGUFError(where + ": cannot stat: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw GGUFError(where + ": not a regular file");
    size_ = uint64_t(st.st_size);
    if (size_ == 0) throw GGUFError(where + ": the file is empty, not a GGUF file");
    void * p = mmap(nullptr, size_t(size_), PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) throw GGUFError(where + ": cannot map: " + std::strerror(errno));
    base_ = static_cast<const uint8_t *>(p);
    GGUFParser(*this).run();
}

const GGUFValue * GGUFFile::find(std::string_view key) const {
    const auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

void GGUFFile::set_override(const std::string & key, GGUFValue value, const std::string & text) {
    if (value.type == GGUFType::ARRAY)
        throw GGUFError(printable(path_, 4096) + ": metadata key '" + printable(key) + "': arrays cannot be overridden");
    if (value.type == GGUFType::STRING) value.str = owned_.emplace_back(text);
    if (const auto it = kv_index_.find(key); it != kv_index_.end()) {
        kvs_[it->second].value = std::move(value);
        return;
    }
    kv_index_.emplace(std::string_view(owned_.emplace_back(key)), kvs_.size());
    kvs_.push_back(GGUFKV{key, std::move(value)});
}

const GGUFTensor * GGUFFile::find_tensor(std::string_view name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

[[noreturn]] void key_error(const GGUFFile & f, std::string_view key, const std::string & what) {
    throw GGUFError(printable(f.path(), 4096) + ": metadata key '" + printable(key) + "' " + what);
}

const GGUFValue & require(const GGUFFile & f, std::string_view key) {
    const GGUFValue * v = f.find(key);
    if (!v) key_error(f, key, "is missing");
    return *v;
}

int64_t as_int(const GGUFFile & f, std::string_view key, const GGUFValue & v) {
    if (!v.is_integer()) key_error(f, key, strfmt("holds a %s, not an integer", gguf_type_name(v.type)));
    if (is_signed_int(v.type)) return v.num.i64;
    if (v.num.u64 > uint64_t(std::numeric_limits<int64_t>::max()))
        key_error(f, key, strfmt("value %" PRIu64 " does not fit in a signed 64-bit integer", v.num.u64));
    return int64_t(v.num.u64);
}

double as_float(const GGUFFile & f, std::string_view key, const GGUFValue & v) {
    if (v.is_float()) return v.num.f64;
    if (v.is_integer()) return is_signed_int(v.type) ? double(v.num.i64) : double(v.num.u64);
    key_error(f, key, strfmt("holds a %s, not a number", gguf_type_name(v.type)));
}

std::string as_str(const GGUFFile & f, std::string_view key, const GGUFValue & v) {
    if (v.type != GGUFType::STRING) key_error(f, key, strfmt("holds a %s, not a STRING", gguf_type_name(v.type)));
    return std::string(v.str);
}

}  // namespace

int64_t GGUFFile::get_int(std::string_view key) const { return as_int(*this, key, require(*this, key)); }

int64_t GGUFFile::get_int(std::string_view key, int64_t fallback) const {
    const GGUFValue * v = find(key);
    return v ? as_int(*this, key, *v) : fallback;
}

double GGUFFile::get_float(std::string_view key) const { return as_float(*this, key, require(*this, key)); }

double GGUFFile::get_float(std::string_view key, double fallback) const {
    const GGUFValue * v = find(key);
    return v ? as_float(*this, key, *v) : fallback;
}

bool GGUFFile::get_bool(std::string_view key, bool fallback) const {
    const GGUFValue * v = find(key);
    if (!v) return fallback;
    if (v->type != GGUFType::BOOL) key_error(*this, key, strfmt("holds a %s, not a BOOL", gguf_type_name(v->type)));
    return v->num.b;
}

std::string GGUFFile::get_str(std::string_view key) const { return as_str(*this, key, require(*this, key)); }

std::string GGUFFile::get_str(std::string_view key, const std::string & fallback) const {
    const GGUFValue * v = find(key);
    return v ? as_str(*this, key, *v) : fallback;
}

bool GGUFFile::contains_own(const void * ptr, size_t n) const {
    const uintptr_t b = reinterpret_cast<uintptr_t>(base_);
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    return base_ && p >= b && p - b <= size_ && n <= size_ - (p - b);
}

bool GGUFFile::contains(const void * ptr, size_t n) const {
    if (contains_own(ptr, n)) return true;
    for (const auto & part : parts_)
        if (part->contains_own(ptr, n)) return true;
    return false;
}

void GGUFFile::advise_dontneed(const void * ptr, size_t n) const {
    if (n == 0) return;
    for (const auto & part : parts_)
        if (part->contains_own(ptr, n)) return part->advise_own(ptr, n);
    if (!contains_own(ptr, n))
        throw Error(printable(path_, 4096) + ": advise_dontneed: the range is not inside the mapping");
    advise_own(ptr, n);
}

void GGUFFile::advise_own(const void * ptr, size_t n) const {
    const uintptr_t b = reinterpret_cast<uintptr_t>(base_);
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
    const uint64_t off = p - b;
    const uint64_t begin = (off + page - 1) / page * page;
    const uint64_t end = off + n == size_ ? (size_ + page - 1) / page * page : (off + n) / page * page;
    if (begin < end) madvise(const_cast<uint8_t *>(base_) + begin, size_t(end - begin), MADV_DONTNEED);
}

}  // namespace sl
