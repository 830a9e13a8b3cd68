// GGUF reader: sl::GGUFFile as _core.GGUFFile. Metadata becomes Python values; tensors become
// read-only numpy views of the mapping that keep the file alive (a capsule holding a
// shared_ptr is each array's base).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "gguf/gguf.h"
#include "python/bind.h"

namespace sl::py {

namespace {

using FilePtr = std::shared_ptr<GGUFFile>;

pyb::object steal_checked(PyObject * o) {
    if (!o) throw pyb::error_already_set();
    return pyb::reinterpret_steal<pyb::object>(o);
}

// Strings are UTF-8 with surrogateescape: bytes that are not UTF-8 survive the round trip
// (s.encode("utf-8", "surrogateescape") gives them back).
pyb::object to_str(std::string_view s) {
    return steal_checked(PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "surrogateescape"));
}

pyb::object to_python(const GGUFValue & v) {
    switch (v.type) {
        case GGUFType::UINT8: case GGUFType::UINT16: case GGUFType::UINT32: case GGUFType::UINT64:
            return steal_checked(PyLong_FromUnsignedLongLong(v.num.u64));
        case GGUFType::INT8: case GGUFType::INT16: case GGUFType::INT32: case GGUFType::INT64:
            return steal_checked(PyLong_FromLongLong(v.num.i64));
        case GGUFType::FLOAT32: case GGUFType::FLOAT64:
            return steal_checked(PyFloat_FromDouble(v.num.f64));
        case GGUFType::BOOL:
            return pyb::bool_(v.num.b);
        case GGUFType::STRING:
            return to_str(v.str);
        case GGUFType::ARRAY: {
            pyb::object list = steal_checked(PyList_New(Py_ssize_t(v.arr.size())));
            for (size_t i = 0; i < v.arr.size(); ++i)
                PyList_SET_ITEM(list.ptr(), Py_ssize_t(i), to_python(v.arr[i]).release().ptr());
            return list;
        }
    }
    throw sl::Error("unreachable GGUF value type");
}

pyb::dict metadata(const GGUFFile & f) {
    pyb::dict d;
    for (const GGUFKV & kv : f.kvs()) d[to_str(kv.key)] = to_python(kv.value);
    return d;
}

// numpy dtype of the plain number types, as gguf-py's GGUFReader gives them; every other
// type (block-quantized, and BF16) is viewed as uint8 bytes.
const char * plain_dtype(QType t) {
    switch (t) {
        case QType::F32: return "float32";
        case QType::F16: return "float16";
        case QType::F64: return "float64";
        case QType::I8: return "int8";
        case QType::I16: return "int16";
        case QType::I32: return "int32";
        case QType::I64: return "int64";
        default: return nullptr;
    }
}

// numpy shape of the elements: ggml's ne reversed (row-major, the row is the last axis).
std::vector<int64_t> element_shape(const GGUFTensor & t) {
    return std::vector<int64_t>(std::make_reverse_iterator(t.ne + t.n_dims), std::make_reverse_iterator(t.ne));
}

// numpy shape of the view: the element shape, or for byte views the last axis in bytes.
std::vector<int64_t> view_shape(const GGUFTensor & t) {
    std::vector<int64_t> shape = element_shape(t);
    if (plain_dtype(t.type)) return shape;
    const QTypeTraits * tr = qtype_traits(t.type);
    if (shape.empty()) return {int64_t(t.nbytes)};
    shape.back() = shape.back() / tr->blck_size * int64_t(tr->type_size);
    return shape;
}

pyb::tuple tensor_info(const GGUFFile & f, const GGUFTensor & t) {
    return pyb::make_tuple(to_str(t.name), qtype_traits(t.type)->name, pyb::tuple(pyb::cast(element_shape(t))),
                           f.part_data_offset(t.part) + t.offset, t.nbytes, t.part);
}

pyb::list tensor_infos(const GGUFFile & f) {
    pyb::list out;
    for (const GGUFTensor & t : f.tensors()) out.append(tensor_info(f, t));
    return out;
}

pyb::array tensor_view(const FilePtr & f, const std::string & name) {
    const GGUFTensor * t = f->find_tensor(name);
    if (!t) throw pyb::key_error(f->path() + ": no tensor named '" + name + "'");
    const char * dt = plain_dtype(t->type);
    pyb::capsule owner(new FilePtr(f), [](void * p) { delete static_cast<FilePtr *>(p); });
    pyb::array a(pyb::dtype(dt ? dt : "uint8"), view_shape(*t), std::vector<pyb::ssize_t>{}, t->data, owner);
    // The mapping is PROT_READ: a write through the array must raise, not fault.
    pyb::detail::array_proxy(a.ptr())->flags &= ~pyb::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

void advise_dontneed(const GGUFFile & f, const std::string & name) {
    const GGUFTensor * t = f.find_tensor(name);
    if (!t) throw pyb::key_error(f.path() + ": no tensor named '" + name + "'");
    f.advise_dontneed(t->data, t->nbytes);
}

}  // namespace

void bind_gguf(pyb::module_ & m) {
    pyb::class_<GGUFFile, FilePtr>(m, "GGUFFile", "Memory-mapped GGUF file (versions 2 and 3).")
        .def(pyb::init<const std::string &>(), pyb::arg("path"), pyb::call_guard<pyb::gil_scoped_release>(),
             "Maps and checks the file; raises GGUFError naming the file and the field.")
        .def_property_readonly("path", [](const GGUFFile & f) { return pyb::bytes(f.path()); })
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def_property_readonly("data_offset", &GGUFFile::data_offset)
        .def_property_readonly("file_size", &GGUFFile::file_size)
        .def_property_readonly("part_paths",
                               [](const GGUFFile & f) {
                                   pyb::list out;
                                   for (int i = 0; i < f.n_parts(); ++i) out.append(pyb::bytes(f.part_path(i)));
                                   return out;
                               })
        .def("metadata", &metadata, "All key/value pairs as a dict of Python values (arrays as lists).")
        .def("tensor_infos", &tensor_infos,
             "(name, type name, numpy element shape, absolute byte offset in its part, nbytes, part) per tensor, "
             "in file order (a split's parts one after the other).")
        .def("tensor", &tensor_view, pyb::arg("name"), "Read-only numpy view of a tensor's bytes in the mapping.")
        .def("advise_dontneed", &advise_dontneed, pyb::arg("name"),
             "Drops the tensor's whole pages from the resident set; the view stays valid.")
        .def("get_int", pyb::overload_cast<std::string_view>(&GGUFFile::get_int, pyb::const_), pyb::arg("key"))
        .def("get_float", pyb::overload_cast<std::string_view>(&GGUFFile::get_float, pyb::const_), pyb::arg("key"))
        .def("get_bool", &GGUFFile::get_bool, pyb::arg("key"), pyb::arg("fallback"))
        .def("get_str", pyb::overload_cast<std::string_view>(&GGUFFile::get_str, pyb::const_), pyb::arg("key"));
}

}  // namespace sl::py
