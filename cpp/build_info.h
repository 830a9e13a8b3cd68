// The commit the library was built from (short hash, "-dirty" if the C++ sources differed from
// it, "unknown" outside a git checkout), written at build time by cmake/build_info.cmake.
#pragma once

namespace sl {
const char * build_commit();
}  // namespace sl
