// common.h: error reporting shared by every part of the project (CPU, CUDA host code, tokenizer, data).
// A failed check throws flash_error carrying "file:line: what went wrong (hint: what to do)", so that
// tests can assert on the message and programs print it once in main() and exit non-zero.
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

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
