// formats/safetensors.h: the safetensors file format (docs/FLASH.md §7), which every weight, checkpoint and debug-state
// file of this project uses: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and
// byte range, and a __metadata__ map of strings), then the raw little-endian data. Any Hugging Face safetensors reader
// opens these files; the reader here refuses every kind of damage with its own message.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common.h"

struct SafeTensor {
    std::string name;
    std::string dtype;              // "F32", "F64", "I32", "I64"
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;      // raw bytes, row-major
};
struct SafeTensorsFile {
    std::map<std::string, std::string> metadata;
    std::vector<SafeTensor> tensors;   // in file order
    const SafeTensor* find(const std::string& name) const;
};
size_t dtype_size(const std::string& dtype);   // throws for an unknown dtype
// Writes atomically: to path + ".tmp", flushed and synced, then renamed over path.
void safetensors_write(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);
SafeTensorsFile safetensors_read(const std::string& path);

// Tensors of a float/double array, converted to the dtype asked for.
template <typename Real> SafeTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                                const Real* values, const std::string& dtype);
SafeTensor make_int_tensor(const std::string& name, const std::vector<int64_t>& shape, const int* values);
// Copies a tensor's values (F32 or F64, converted) into out, checking the shape.
template <typename Real> void read_tensor(const SafeTensor& t, const std::vector<int64_t>& shape, Real* out,
                                          const std::string& file);

