// resource_check.h: refusing sizes that cannot fit, before allocating them. Without these checks a huge batch
// or config overflows an int, or grows until the OOM killer ends the program, or ends in a bare std::bad_alloc;
// with them it gets an error with the figures (what it needs, what the machine has) and what to change.
#pragma once
#include <climits>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include <unistd.h>

#include "common.h"

// "12.3 GB": a byte count for messages.
inline std::string format_bytes(double bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GB", bytes / 1e9);
    if (bytes < 1e9) std::snprintf(text, sizeof text, "%.1f MB", bytes / 1e6);
    return text;
}

// Memory this process can still take, in bytes: the kernel's MemAvailable plus free swap, and no more than
// the cgroup (container) limit leaves. 0 when nothing can be read (then no check is made).
inline double available_memory_bytes() {
    double avail = 0, swap_free = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string key; meminfo >> key;) {
        double kb = 0;
        meminfo >> kb;
        if (key == "MemAvailable:") avail = kb * 1024;
        if (key == "SwapFree:") swap_free = kb * 1024;
        meminfo.ignore(1 << 10, '\n');
    }
    if (avail == 0) avail = (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    double limit = avail + swap_free;
    std::ifstream max_file("/sys/fs/cgroup/memory.max"), current_file("/sys/fs/cgroup/memory.current");
    std::string max_text;
    double current = 0;
    if (max_file >> max_text && max_text != "max" && current_file >> current) {
        const double left = std::stod(max_text) - current;
        if (left < limit) limit = left > 0 ? left : 0;
    }
    return limit;
}

// Refuses an allocation of `bytes` (computed in double, so no product can wrap) that the machine cannot hold.
// `what` names it ("the model's parameters, gradients and AdamW moments"); hint says which size to lower.
inline void check_fits_in_memory(double bytes, const std::string& what, const std::string& hint) {
    const double avail = available_memory_bytes();
    FLASH_CHECK(avail <= 0 || bytes <= avail,
                what << " need " << format_bytes(bytes) << ", but this machine has " << format_bytes(avail) << " available",
                hint);
}

// B rows of T tokens: the ops index the N = B*T positions with int.
inline void check_token_count(long long B, long long T) {
    FLASH_CHECK(B > 0 && T > 0 && B * T <= INT_MAX,
                "a batch of " << B << " x " << T << " tokens is " << B * T << " positions, more than the " << INT_MAX
                              << " an int indexes",
                "lower --batch (or seq_len)");
}

// Every architecture's state: n_params parameters, their gradients and the two AdamW moments, of real_size bytes
// each (model.h: four flat buffers of param_count() values). Each model's constructor calls it before allocating.
inline void check_model_state_fits(double n_params, size_t real_size) {
    check_fits_in_memory(4.0 * n_params * (double)real_size,
                         "the model's " + std::to_string((long long)n_params) + " parameters, their gradients and AdamW moments",
                         "choose a smaller config (vocab_size, d, e, n_layers)");
}

// The activations and their gradients (n_act + n_grad values of real_size bytes) for B rows of T tokens.
inline void check_activations_fit(double n_act, double n_grad, long long B, long long T, size_t real_size) {
    check_fits_in_memory((n_act + n_grad) * (double)real_size,
                         "the activations of a batch of " + std::to_string(B) + " x " + std::to_string(T) + " tokens",
                         "lower --batch or seq_len");
}
