// bench_util.h: what the benchmark programs share.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>

// Seconds f takes: the best of reps runs, after one warm-up run (the best, since a busy machine only ever adds time).
inline double seconds(const std::function<void()>& f, int reps = 3) {
    f();  // warm-up
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}
