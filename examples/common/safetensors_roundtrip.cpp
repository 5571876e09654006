// Test program of the safetensors writer (examples/common/safetensors.h), run by CTest
// (examples/CMakeLists.txt) and by safetensors_python_test.sh:
//   safetensors_roundtrip write FILE   writes the reference tensors, reads them back, checks them
//   safetensors_roundtrip check FILE   checks that FILE (written by Python) holds the reference tensors
//   safetensors_roundtrip list FILE    prints "name dtype [shape]" per tensor, for the smoke tests
// The reference tensors are defined identically in safetensors_check.py.
#include "safetensors.h"

#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>

namespace {

using zotorch::examples::NamedTensors;

/// One tensor of every dtype the format and our reader share, an empty one, a scalar, a transposed
/// (non-contiguous) one under a dotted LoRA-style name, and the values of each exactly representable
/// or rounded the same way by the same LibTorch ops in Python.
NamedTensors reference_tensors() {
  const at::Tensor real = ((at::arange(24, at::kDouble) - 7) * 0.37).reshape({2, 3, 4});
  const at::Tensor whole = (at::arange(24, at::kLong) - 7).reshape({4, 6});
  return {
      {"f64", real},
      {"f32", real.to(at::kFloat)},
      {"f16", real.to(at::kHalf)},
      {"bf16", real.to(at::kBFloat16)},
      {"i64", whole},
      {"i32", whole.to(at::kInt)},
      {"i16", whole.to(at::kShort)},
      {"i8", whole.to(at::kChar)},
      {"u8", (at::arange(24, at::kLong) * 10).to(at::kByte)},
      {"bool", at::arange(24, at::kLong).remainder(3).eq(0)},
      {"empty", at::zeros({0, 3})},
      {"scalar", at::scalar_tensor(2.5)},
      {"bert.encoder.layer.0.attention.self.query.lora_A", at::arange(12, at::kFloat).reshape({3, 4}).t()},
  };
}

/// Empty when `got` holds exactly the reference tensors (any order), else what differs.
std::string compare(const NamedTensors& got) {
  std::map<std::string, at::Tensor> by_name(got.begin(), got.end());
  std::string problems;
  for (const auto& [name, expected] : reference_tensors()) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) {
      problems += "  missing tensor '" + name + "'\n";
      continue;
    }
    const at::Tensor& t = it->second;
    if (t.scalar_type() != expected.scalar_type() || t.sizes() != expected.sizes() || !t.equal(expected)) {
      std::ostringstream line;
      line << "  '" << name << "': " << t.scalar_type() << t.sizes() << " differs from the expected "
           << expected.scalar_type() << expected.sizes() << "\n";
      problems += line.str();
    }
    by_name.erase(it);
  }
  for (const auto& [name, t] : by_name) problems += "  unexpected tensor '" + name + "'\n";
  return problems;
}

int check(const std::string& path, const std::string& what) {
  zotorch::examples::Json metadata;
  const NamedTensors got = zotorch::examples::load_safetensors(path, &metadata);
  std::string problems = compare(got);
  if (zotorch::examples::json_value<std::string>(metadata, "format", "") != "pt") {
    problems += "  __metadata__ lacks \"format\": \"pt\" (got " + metadata.dump() + ")\n";
  }
  if (!problems.empty()) {
    std::cerr << "safetensors_roundtrip: " << path << " (" << what << "):\n" << problems;
    return 1;
  }
  std::cout << "safetensors_roundtrip: " << path << " (" << what << "): all " << got.size()
            << " reference tensors read back bit-identical\n";
  return 0;
}

/// The layout rules a writer must follow (the reader does not need them all): the header length
/// prefix, the header padded with spaces to a multiple of 8 bytes, and no bytes after the data.
int check_layout(const std::string& path) {
  const std::string bytes = zotorch::examples::read_text_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const std::string header = bytes.substr(8, header_len);
  const auto last = header.find_last_not_of(' ');
  uint64_t data_end = 0;
  const zotorch::examples::Json parsed = zotorch::examples::Json::parse(header);
  for (const auto& [name, info] : parsed.items()) {
    if (name != "__metadata__") data_end = std::max(data_end, info.at("data_offsets")[1].get<uint64_t>());
  }
  if ((8 + header_len) % 8 != 0 || last == std::string::npos || header[last] != '}' ||
      8 + header_len + data_end != bytes.size()) {
    std::cerr << "safetensors_roundtrip: " << path << " breaks the layout: header length " << header_len
              << ", data end " << data_end << ", file size " << bytes.size() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string mode = argc == 3 ? argv[1] : "";
  if (mode != "write" && mode != "check" && mode != "list") {
    std::cerr << "Usage: safetensors_roundtrip write|check|list FILE\n";
    return 2;
  }
  const std::string path = argv[2];
  if (mode == "write") {
    zotorch::examples::save_safetensors(path, reference_tensors(), {{"format", "pt"}, {"written_by", "zotorch examples"}});
    return check_layout(path) != 0 ? 1 : check(path, "written by save_safetensors");
  }
  if (mode == "check") return check(path, "written by Python");
  for (const auto& [name, t] : zotorch::examples::load_safetensors(path)) {
    std::cout << name << " " << t.scalar_type() << " " << t.sizes() << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  std::cerr << "safetensors_roundtrip: " << (error ? error->what_without_backtrace() : e.what()) << "\n";
  return 1;
}
