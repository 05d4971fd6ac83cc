// value_check.h: refusing tensors whose values cannot be right. A NaN or infinite weight poisons every later
// step and every sample, and a negative AdamW second moment makes sqrt(v) NaN: a checkpoint holding either is
// refused when read, and the trainer refuses to write one.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "flash.h"

// The first tensor of the model's layout whose values in buf are not finite (or negative, when
// nonnegative is asked for): "" if none. `what` receives the offending value and its index in the tensor.
template <typename Real>
std::string first_bad_tensor(const FlashModel<Real>& m, const std::vector<Real>& buf, bool nonnegative,
                             std::string* what = nullptr) {
    for (const TensorSpec& spec : m.specs)
        for (size_t i = 0; i < spec.count; i++) {
            const Real x = buf[spec.offset + i];
            if (std::isfinite(x) && !(nonnegative && x < 0)) continue;
            if (what) *what = "value " + std::to_string((double)x) + " at index " + std::to_string(i);
            return spec.name;
        }
    return "";
}

// For a loader: refuses values that are not finite (weights, first moments) or negative (second moments).
template <typename Real>
void check_loaded_values(const FlashModel<Real>& m, const std::vector<Real>& buf, const std::string& prefix,
                         const std::string& path, bool nonnegative) {
    std::string what;
    const std::string bad = first_bad_tensor(m, buf, nonnegative, &what);
    FLASH_CHECK(bad.empty(), "'" << path << "': tensor '" << prefix << bad << "' holds " << what << " ("
                                 << (nonnegative ? "must be finite and >= 0" : "must be finite") << ")",
                "the file is corrupt, or was written by a run that diverged; use an earlier checkpoint");
}
