// rng.h: the project's one random-number generator. splitmix64 (Steele, Lea, Flood 2014) for the stream, Box-Muller
// for normals. The whole state is one uint64, so a checkpoint can save it, and the numbers are the same on every
// platform and compiler (unlike <random>'s distributions).
#pragma once
#include <cmath>
#include <cstdint>

// One step of splitmix64: one 64-bit add and a mixing function. Any seed, 0 too, is fine.
inline uint64_t splitmix64_next(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed = 0) : state(seed) {}
    uint64_t next_u64() { return splitmix64_next(state); }
    double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    int below(int n) { return (int)(next_u64() % (uint64_t)n); }                  // [0, n), n small
    // N(0, 1) by Box-Muller; 1 - uniform() is in (0, 1], so the log is finite.
    double normal() {
        double u1 = 1.0 - uniform(), u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    }
};
