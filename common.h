// common.h: error reporting shared by every part of the project (CPU, CUDA host code, tokenizer, data).
// A failed check throws flash_error carrying "file:line: what went wrong (hint: what to do)", so that
// tests can assert on the message and programs print it once in main() and exit non-zero.
#pragma once
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <sstream>

// Small index rules shared by the CPU code and the CUDA kernels are marked FLASH_HD: __host__ __device__ under nvcc,
// plain inline functions elsewhere.
#ifdef __CUDACC__
#define FLASH_HD __host__ __device__
#else
#define FLASH_HD
#endif

struct flash_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// FAIL(msg-expression, hint-expression): both are streamed, e.g. FAIL("bad size " << n, "use an even s").
#define FLASH_FAIL(msg, hint)                                                        \
    do {                                                                             \
        std::ostringstream flash_os_;                                                \
        flash_os_ << __FILE__ << ":" << __LINE__ << ": " << msg;                     \
        std::ostringstream flash_hint_;                                              \
        flash_hint_ << hint;                                                         \
        if (!flash_hint_.str().empty()) flash_os_ << " (hint: " << flash_hint_.str() << ")"; \
        throw flash_error(flash_os_.str());                                          \
    } while (0)

#define FLASH_CHECK(cond, msg, hint)          \
    do {                                      \
        if (!(cond)) FLASH_FAIL(msg, hint);   \
    } while (0)

// The whole content of a file, as bytes. `what` names the file in errors ("tokenizer", "text file"), and
// open_hint says what to do when it cannot be opened.
inline std::string read_whole_file(const std::string& path, const std::string& what, const std::string& open_hint) {
    FILE* f = std::fopen(path.c_str(), "rb");
    FLASH_CHECK(f, "cannot open " << what << " " << path << ": " << std::strerror(errno), open_hint);
    std::string text;
    char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    FLASH_CHECK(!failed, "reading " << path << " failed", "check the file");
    return text;
}
