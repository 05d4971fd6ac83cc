// formats/safetensors.cpp: reading and writing safetensors files. Read formats/safetensors.h first.
#include "formats/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

#include "formats/json_file.h"

using json = nlohmann::json;

size_t dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F64" || dtype == "I64") return 8;
    FLASH_FAIL("unsupported safetensors dtype '" << dtype << "'", "this program reads F32, F64, I32 and I64");
}

const SafeTensor* SafeTensorsFile::find(const std::string& name) const {
    for (const SafeTensor& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

static std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

void safetensors_write(const std::string& path, const std::vector<SafeTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    // Header: every tensor with its dtype, shape and [begin, end) byte range, plus __metadata__.
    json header = json::object();
    uint64_t offset = 0;
    for (const SafeTensor& t : tensors) {
        size_t n = dtype_size(t.dtype);
        for (int64_t dim : t.shape) n *= (size_t)dim;
        FLASH_CHECK(n == t.data.size(), "tensor '" << t.name << "' has " << t.data.size() << " bytes but shape "
                                                   << shape_str(t.shape) << " of " << t.dtype << " needs " << n,
                    "this is a bug in the caller");
        FLASH_CHECK(!header.contains(t.name), "tensor name '" << t.name << "' appears twice", "");
        header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
        offset += n;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string text = header.dump();
    while (text.size() % 8 != 0) text += ' ';  // keeps the data 8-byte aligned
    const uint64_t header_len = text.size();

    // A name of this process's own: two writers of one path never share a temporary file.
    const std::string tmp = path + "." + std::to_string(getpid()) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    FLASH_CHECK(f, "cannot open '" << tmp << "' for writing: " << std::strerror(errno),
                "check that the directory exists and is writable");
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)(header_len >> (8 * i));  // little-endian
    bool ok = std::fwrite(len_bytes, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const SafeTensor& t : tensors)
        ok = ok && (t.data.empty() || std::fwrite(t.data.data(), 1, t.data.size(), f) == t.data.size());
    ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) {
        std::remove(tmp.c_str());
        FLASH_FAIL("writing '" << tmp << "' failed: " << std::strerror(errno), "check free disk space");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        FLASH_FAIL("cannot rename '" << tmp << "' to '" << path << "': " << std::strerror(errno), "");
    }
}

SafeTensorsFile safetensors_read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    FLASH_CHECK(in, "cannot open '" << path << "': " << std::strerror(errno), "check the path");
    in.seekg(0, std::ios::end);
    const uint64_t file_size = (uint64_t)in.tellg();
    in.seekg(0);
    FLASH_CHECK(file_size >= 8, "'" << path << "' is not a safetensors file: only " << file_size << " bytes",
                "the file is truncated or of another kind");
    uint8_t len_bytes[8];
    in.read((char*)len_bytes, 8);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; i++) header_len |= (uint64_t)len_bytes[i] << (8 * i);
    FLASH_CHECK(header_len <= file_size - 8 && header_len <= (100u << 20),
                "'" << path << "' has a bad safetensors header length " << header_len << " (file is " << file_size
                    << " bytes)",
                "the file is truncated or not a safetensors file");
    std::string text(header_len, '\0');
    in.read(text.data(), (std::streamsize)header_len);
    FLASH_CHECK(in, "cannot read the header of '" << path << "'", "the file is truncated");
    const json header =
        parse_json(text, "the header of '" + path + "'", "the file is corrupt or not a safetensors file");
    FLASH_CHECK(header.is_object(), "'" << path << "' has a header that is not a JSON object",
                "the file is corrupt or not a safetensors file");
    const uint64_t data_size = file_size - 8 - header_len;

    SafeTensorsFile out;
    struct Range { uint64_t begin, end; std::string name; };
    std::vector<Range> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") {
            FLASH_CHECK(it->is_object(), "'" << path << "': __metadata__ is not a map of strings", "");
            for (auto mt = it->begin(); mt != it->end(); ++mt) {
                FLASH_CHECK(mt->is_string(), "'" << path << "': __metadata__ entry '" << clip_text(mt.key()) << "' is not a string", "");
                out.metadata[mt.key()] = mt->get<std::string>();
            }
            continue;
        }
        const json& e = *it;
        const std::string& name = it.key();
        FLASH_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets") &&
                        e["dtype"].is_string() && e["shape"].is_array() && e["data_offsets"].is_array() &&
                        e["data_offsets"].size() == 2,
                    "'" << path << "': tensor '" << clip_text(name) << "' lacks a valid dtype, shape or data_offsets",
                    "the file is corrupt");
        SafeTensor t;
        t.name = name;
        t.dtype = e["dtype"].get<std::string>();
        size_t bytes = 0;
        try {
            bytes = dtype_size(t.dtype);
        } catch (const flash_error& ex) {
            FLASH_FAIL("'" << path << "': tensor '" << clip_text(name) << "': " << clip_text(ex.what(), 200), "the file is corrupt");
        }
        for (const json& dim : e["shape"]) {
            FLASH_CHECK(dim.is_number_integer() && dim.get<int64_t>() >= 0,
                        "'" << path << "': tensor '" << clip_text(name) << "' has a bad dimension " << json_excerpt(dim), "");
            t.shape.push_back(dim.get<int64_t>());
            FLASH_CHECK(t.shape.back() == 0 || bytes <= SIZE_MAX / (uint64_t)t.shape.back(),
                        "'" << path << "': tensor '" << clip_text(name) << "' has a shape of more than 2^64 bytes",
                        "the file is corrupt");
            bytes *= (size_t)t.shape.back();
        }
        const json& off = e["data_offsets"];
        FLASH_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                    "'" << path << "': tensor '" << clip_text(name) << "' has bad data_offsets", "the file is corrupt");
        Range r{off[0].get<uint64_t>(), off[1].get<uint64_t>(), name};
        FLASH_CHECK(r.begin <= r.end && r.end <= data_size,
                    "'" << path << "': tensor '" << clip_text(name) << "' lies at bytes [" << r.begin << ", " << r.end
                        << ") but the data section has " << data_size << " bytes",
                    "the file is truncated");
        FLASH_CHECK(r.end - r.begin == bytes, "'" << path << "': tensor '" << clip_text(name) << "' has " << r.end - r.begin
                                                  << " bytes but its shape " << shape_str(t.shape) << " of " << t.dtype
                                                  << " needs " << bytes,
                    "the file is corrupt");
        ranges.push_back(r);
        out.tensors.push_back(std::move(t));
    }
    // The tensors must tile the data section exactly, without overlaps or holes.
    std::vector<Range> sorted = ranges;
    std::sort(sorted.begin(), sorted.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    uint64_t expect = 0;
    for (const Range& r : sorted) {
        FLASH_CHECK(r.begin == expect, "'" << path << "': tensor '" << clip_text(r.name) << "' starts at byte " << r.begin
                                           << ", expected " << expect << " (overlap or hole)",
                    "the file is corrupt");
        expect = r.end;
    }
    FLASH_CHECK(expect == data_size, "'" << path << "': " << data_size - expect << " bytes after the last tensor",
                "the file is corrupt");
    // File order = order of data offsets.
    std::vector<SafeTensor> ordered;
    for (const Range& r : sorted)
        for (SafeTensor& t : out.tensors)
            if (t.name == r.name) {
                in.seekg((std::streamoff)(8 + header_len + r.begin));
                t.data.resize(r.end - r.begin);
                in.read((char*)t.data.data(), (std::streamsize)t.data.size());
                FLASH_CHECK(in || t.data.empty(), "cannot read tensor '" << clip_text(t.name) << "' of '" << path << "'",
                            "the file is truncated");
                ordered.push_back(std::move(t));
                break;
            }
    out.tensors = std::move(ordered);
    return out;
}

template <typename Real>
SafeTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape, const Real* values,
                       const std::string& dtype) {
    SafeTensor t;
    t.name = name;
    t.dtype = dtype;
    t.shape = shape;
    size_t n = 1;
    for (int64_t dim : shape) n *= (size_t)dim;
    t.data.resize(n * dtype_size(dtype));
    if (dtype == "F32") {
        for (size_t i = 0; i < n; i++) {
            float v = (float)values[i];
            std::memcpy(t.data.data() + 4 * i, &v, 4);
        }
    } else if (dtype == "F64") {
        for (size_t i = 0; i < n; i++) {
            double v = (double)values[i];
            std::memcpy(t.data.data() + 8 * i, &v, 8);
        }
    } else {
        FLASH_FAIL("make_tensor: floating dtype expected, got " << dtype, "");
    }
    return t;
}

SafeTensor make_int_tensor(const std::string& name, const std::vector<int64_t>& shape, const int* values) {
    SafeTensor t;
    t.name = name;
    t.dtype = "I32";
    t.shape = shape;
    size_t n = 1;
    for (int64_t dim : shape) n *= (size_t)dim;
    t.data.resize(4 * n);
    for (size_t i = 0; i < n; i++) {
        int32_t v = values[i];
        std::memcpy(t.data.data() + 4 * i, &v, 4);
    }
    return t;
}

template <typename Real>
void read_tensor(const SafeTensor& t, const std::vector<int64_t>& shape, Real* out, const std::string& file) {
    FLASH_CHECK(t.shape == shape, "'" << file << "': tensor '" << t.name << "' has shape " << shape_str(t.shape)
                                      << ", the model expects " << shape_str(shape),
                "the checkpoint belongs to another model shape");
    const size_t n = t.data.size() / dtype_size(t.dtype);
    if (t.dtype == "F32") {
        for (size_t i = 0; i < n; i++) {
            float v;
            std::memcpy(&v, t.data.data() + 4 * i, 4);
            out[i] = (Real)v;
        }
    } else if (t.dtype == "F64") {
        for (size_t i = 0; i < n; i++) {
            double v;
            std::memcpy(&v, t.data.data() + 8 * i, 8);
            out[i] = (Real)v;
        }
    } else {
        FLASH_FAIL("'" << file << "': tensor '" << t.name << "' has dtype " << t.dtype << ", expected F32 or F64",
                   "the file was not written by this program");
    }
}

#define INSTANTIATE(fn)                       \
    template decltype(fn<float>) fn<float>;   \
    template decltype(fn<double>) fn<double>;
INSTANTIATE(make_tensor)
INSTANTIATE(read_tensor)
