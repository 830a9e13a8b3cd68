#include "model/backend.h"

namespace sl {

size_t WeightRef::nbytes() const { return row_size(type, K) * size_t(rows); }

size_t KVLayout::k_row() const { return row_size(type_k, head_dim); }

size_t KVLayout::v_row() const { return row_size(type_v, head_dim); }

}  // namespace sl
