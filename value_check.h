// value_check.h: refusing tensors whose values cannot be right. A NaN or infinite weight poisons every later
// step and every sample, and a negative AdamW second moment makes sqrt(v) NaN: a checkpoint holding either is
// refused when read (formats/checkpoint.cpp for every Model, transformer.cpp for the baselines' weights), and the
// trainer refuses to write one.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"  // TensorSpec

// The index of the first of count values that is not finite (or is negative, when nonnegative is asked for),
// or count if there is none; `what` receives the value and its index.
template <typename Real>
size_t first_bad_value(const Real* values, size_t count, bool nonnegative, std::string* what = nullptr) {
    for (size_t i = 0; i < count; i++) {
        const Real x = values[i];
        if (std::isfinite(x) && !(nonnegative && x < 0)) continue;
        if (what) *what = "value " + std::to_string((double)x) + " at index " + std::to_string(i);
        return i;
    }
    return count;
}

// The first tensor of a layout (a model's tensor_specs(), model.h) whose values in buf are bad as above: "" if
// none.
template <typename Real>
std::string first_bad_tensor(const std::vector<TensorSpec>& specs, const std::vector<Real>& buf, bool nonnegative,
                             std::string* what = nullptr) {
    for (const TensorSpec& spec : specs)
        if (first_bad_value(buf.data() + spec.offset, spec.count, nonnegative, what) < spec.count) return spec.name;
    return "";
}

// For a loader: refuses the values of tensor `name` of the file at path when they are not finite (weights, first
// moments) or negative (second moments).
template <typename Real>
void check_tensor_values(const Real* values, size_t count, const std::string& name, const std::string& path,
                         bool nonnegative) {
    std::string what;
    FLASH_CHECK(first_bad_value(values, count, nonnegative, &what) == count,
                "'" << path << "': tensor '" << name << "' holds " << what << " ("
                    << (nonnegative ? "must be finite and >= 0" : "must be finite") << ")",
                "the file is corrupt, or was written by a run that diverged; use an earlier checkpoint");
}

// The same for every tensor of a layout, read into buf from the tensors prefix + name.
template <typename Real>
void check_loaded_values(const std::vector<TensorSpec>& specs, const std::vector<Real>& buf, const std::string& prefix,
                         const std::string& path, bool nonnegative) {
    for (const TensorSpec& spec : specs)
        check_tensor_values(buf.data() + spec.offset, spec.count, prefix + spec.name, path, nonnegative);
}
