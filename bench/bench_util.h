// bench_util.h: what the benchmark programs share.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>

// Seconds f takes: the best of reps runs, after one warm-up run (the best, since a busy machine only ever adds time).
// before_each, when given, runs untimed before each timed run (bench_cpu empties the caches with it).
inline double seconds(const std::function<void()>& f, int reps = 3, const std::function<void()>& before_each = {}) {
    f();  // warm-up
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        if (before_each) before_each();
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}
