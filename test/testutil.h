// testutil.h: helpers shared by the tests: random tensors and tokens, errors, and the finite-difference gradient check.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "debug_state.h"
#include "flash.h"
#include "formats/checkpoint.h"
#include "formats/config.h"
#include "formats/safetensors.h"

inline std::vector<double> randn(size_t n, Rng& rng, double std = 1.0, double mean = 0.0) {
    std::vector<double> x(n);
    for (double& v : x) v = mean + std * rng.normal();
    return x;
}

inline double max_abs(const std::vector<double>& x) {
    double m = 0;
    for (double v : x) m = std::max(m, std::fabs(v));
    return m;
}

inline double max_abs_diff(const double* a, const double* b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

// Largest |a − b| over n values, relative to the largest |b| (for logits: their scale).
template <typename Real>
double rel_err(const Real* a, const Real* b, size_t n) {
    double err = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        err = std::max(err, std::fabs((double)a[i] - (double)b[i]));
        scale = std::max(scale, std::fabs((double)b[i]));
    }
    return err / scale;
}

// n token ids drawn uniformly from [0, V) by an Rng of the seed.
inline std::vector<int> random_tokens(int V, int n, uint64_t seed) {
    Rng rng(seed);
    std::vector<int> t(n);
    for (int& x : t) x = rng.below(V);
    return t;
}

// Relative error of an analytic gradient against central finite differences, measured per tensor as
//     max_i |analytic_i − numeric_i|  /  max_i |numeric_i|
// over the checked entries i (the max-norm relative error; it does not blow up on entries near zero).
// numeric_i = (loss(x + h e_i) − loss(x − h e_i)) / 2h, in double; x is restored afterwards.
// `entries` lists the indices to check (all of them when empty).
inline double gradcheck(std::vector<double>& x, const std::vector<double>& analytic, const std::function<double()>& loss,
                        std::vector<size_t> entries = {}, double h = 1e-5) {
    if (entries.empty())
        for (size_t i = 0; i < x.size(); i++) entries.push_back(i);
    double max_err = 0, max_num = 0;
    for (size_t i : entries) {
        const double saved = x[i];
        x[i] = saved + h;
        const double lp = loss();
        x[i] = saved - h;
        const double lm = loss();
        x[i] = saved;
        const double num = (lp - lm) / (2 * h);
        max_err = std::max(max_err, std::fabs(analytic[i] - num));
        max_num = std::max(max_num, std::fabs(num));
    }
    return max_num > 0 ? max_err / max_num : max_err;
}

// Σ_i y_i · w_i: turns an op's output into a scalar whose gradient with respect to y is w.
inline double dot(const std::vector<double>& y, const std::vector<double>& w) {
    double s = 0;
    for (size_t i = 0; i < y.size(); i++) s += y[i] * w[i];
    return s;
}
