// Reading and writing Hugging Face weight files for the examples: safetensors (8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes)
// and PyTorch's pytorch_model.bin (a torch.save zip archive of a state_dict, read by
// torch::jit::pickle_load, which torch::pickle_load forwards to). Hand-written because no maintained
// C++ safetensors library is packaged; the JSON header goes through nlohmann-json
// (docs/examples.md "Libraries").
#pragma once

#include "files.h"

#include <zotorch/checkpoint.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// Tensors by name, in the file's order (safetensors: by offset; .bin: the state_dict's order).
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

namespace detail {

inline bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

inline at::ScalarType safetensors_dtype(const std::string& name, const std::string& path, const std::string& tensor) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool}};
  auto it = kTypes.find(name);
  TORCH_CHECK(it != kTypes.end(), "load_safetensors: ", path, ": tensor '", tensor, "' has dtype ", name,
              ", which is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL are); convert the file "
              "with the Python safetensors package");
  return it->second;
}

inline const char* safetensors_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: TORCH_CHECK(false, "save_safetensors: dtype ", t, " has no safetensors name");
  }
}

/// Read-only mapping of a whole file, unmapped on scope exit.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    TORCH_CHECK(fd_ >= 0, "cannot open ", path, ": ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      ::close(fd_);
      TORCH_CHECK(false, "cannot stat ", path, ": ", std::strerror(errno));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (data_ == MAP_FAILED) {
        ::close(fd_);
        TORCH_CHECK(false, "cannot map ", path, ": ", std::strerror(errno));
      }
    }
  }
  ~MappedFile() {
    if (data_ && data_ != MAP_FAILED) ::munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const unsigned char* data() const { return static_cast<const unsigned char*>(data_); }
  size_t size() const { return size_; }

 private:
  int fd_ = -1;
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace detail

/// Loads every tensor of a .safetensors file into CPU tensors that own their memory (the file is
/// mapped, copied tensor by tensor, and unmapped). `metadata`, if given, receives "__metadata__".
/// Validates what a truncated or hostile file could get wrong: header bounds, offsets inside the
/// data section, byte counts matching dtype x shape, and no overlapping tensors.
inline NamedTensors load_safetensors(const std::string& path, Json* metadata = nullptr) {
  TORCH_CHECK(detail::host_is_little_endian(), "load_safetensors: big-endian hosts are not supported");
  detail::MappedFile file(path);
  const unsigned char* bytes = file.data();
  TORCH_CHECK(file.size() >= 8, "load_safetensors: ", path, " is ", file.size(),
              " bytes, too short for a safetensors header; is it a complete download?");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  TORCH_CHECK(header_len <= file.size() - 8 && header_len <= (100u << 20), "load_safetensors: ", path,
              " declares a ", header_len, "-byte header but the file has ", file.size(),
              " bytes; the file is truncated or not safetensors");
  Json header;
  try {
    header = Json::parse(std::string(reinterpret_cast<const char*>(bytes + 8), header_len));
  } catch (const Json::exception& e) {
    TORCH_CHECK(false, "load_safetensors: ", path, ": malformed JSON header: ", e.what());
  }
  TORCH_CHECK(header.is_object(), "load_safetensors: ", path, ": the header is not a JSON object");
  const unsigned char* data = bytes + 8 + header_len;
  const uint64_t data_len = file.size() - 8 - header_len;

  struct Entry {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (metadata) *metadata = info;
      continue;
    }
    // Types are checked here so that a hostile header gets an error naming the tensor, not a bare
    // nlohmann type_error.
    const auto dtype = info.is_object() ? info.find("dtype") : info.end();
    const auto shape = info.is_object() ? info.find("shape") : info.end();
    const auto offsets = info.is_object() ? info.find("data_offsets") : info.end();
    TORCH_CHECK(dtype != info.end() && dtype->is_string() && shape != info.end() && shape->is_array() &&
                    offsets != info.end() && offsets->is_array() && offsets->size() == 2 &&
                    (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                "load_safetensors: ", path, ": tensor '", name,
                "' needs a string dtype, an array shape and two non-negative integer data_offsets; got ", info.dump());
    Entry e{name, detail::safetensors_dtype(dtype->get<std::string>(), path, name), {}, 0, 0};
    uint64_t numel = 1;
    for (const auto& d : *shape) {
      TORCH_CHECK(d.is_number_unsigned(), "load_safetensors: ", path, ": tensor '", name, "' has the dimension ", d.dump(),
                  "; dimensions are non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      TORCH_CHECK(dim <= (uint64_t{1} << 48) && (dim == 0 || numel <= (uint64_t{1} << 48) / dim), "load_safetensors: ", path,
                  ": tensor '", name, "' has an impossibly large shape ", shape->dump());
      e.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;
    }
    e.begin = (*offsets)[0].get<uint64_t>();
    e.end = (*offsets)[1].get<uint64_t>();
    TORCH_CHECK(e.begin <= e.end && e.end <= data_len, "load_safetensors: ", path, ": tensor '", name,
                "' has data_offsets [", e.begin, ", ", e.end, ") outside the ", data_len, "-byte data section");
    const uint64_t expected = numel * c10::elementSize(e.dtype);
    TORCH_CHECK(e.end - e.begin == expected, "load_safetensors: ", path, ": tensor '", name, "' has ",
                e.end - e.begin, " bytes but its dtype and shape need ", expected);
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  NamedTensors out;
  out.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    TORCH_CHECK(i == 0 || entries[i - 1].end <= e.begin, "load_safetensors: ", path, ": tensors '",
                entries[i - 1].name, "' and '", e.name, "' overlap");
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

/// Writes tensors as a .safetensors file, so a fine-tuned model can be used by any safetensors reader
/// (Python's `safetensors` package reads it, examples/common/safetensors_check.py checks that):
/// an 8-byte little-endian header length, the JSON header {name: {dtype, shape, data_offsets}} plus
/// an optional "__metadata__" of strings, padded with spaces to a multiple of 8 bytes so that the
/// data section is aligned, then every tensor's bytes in the given order. Tensors are made
/// contiguous on the CPU; the file is written atomically (zotorch::write_file_atomically).
inline void save_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;  // the format allows string values only
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(name != "__metadata__" && !header.contains(name), "save_safetensors: duplicate or reserved tensor name '",
                name, "'");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", detail::safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the format pads the header to 8 bytes with spaces
  // zotorch's atomic write (temp file, fsync, rename): a crash leaves the old file or the new one.
  zotorch::write_file_atomically(path, [&](const zotorch::WriteBytes& write) {
    const uint64_t len = text.size();  // little-endian on every host load_safetensors accepts
    if (!write(&len, 8) || !write(text.data(), text.size())) return;
    for (const auto& t : contiguous) {
      const size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
      if (nbytes > 0 && !write(t.data_ptr(), nbytes)) return;
    }
  });
}

/// Loads a pytorch_model.bin (torch.save of a state_dict) with torch::jit::pickle_load. Only tensors are
/// kept; nested dicts (e.g. {"state_dict": ...}) are flattened with "." like PyTorch's names.
inline NamedTensors load_torch_state_dict(const std::string& path) {
  const std::string text = read_text_file(path);
  c10::IValue root = torch::jit::pickle_load(std::vector<char>(text.begin(), text.end()));
  NamedTensors out;
  std::function<void(const c10::IValue&, const std::string&)> walk = [&](const c10::IValue& v, const std::string& prefix) {
    if (v.isTensor()) {
      out.emplace_back(prefix, v.toTensor().contiguous());
    } else if (v.isGenericDict()) {
      for (const auto& item : v.toGenericDict()) {
        TORCH_CHECK(item.key().isString(), "load_torch_state_dict: ", path, " has a non-string key");
        walk(item.value(), prefix.empty() ? item.key().toStringRef() : prefix + "." + item.key().toStringRef());
      }
    }
  };
  walk(root, "");
  TORCH_CHECK(!out.empty(), "load_torch_state_dict: ", path, " holds no tensors; expected torch.save(model.state_dict())");
  return out;
}

}  // namespace zotorch::examples
