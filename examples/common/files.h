// File and JSON helpers of the examples: whole-file reads and JSON documents (nlohmann-json,
// docs/examples.md "Libraries") with errors that name the file and the key.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace zotorch::examples {

/// JSON documents: config.json, tokenizer.json, the safetensors header, summary.json.
using Json = nlohmann::json;

/// Reads a whole file; the error names the path.
inline std::string read_text_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw std::runtime_error("cannot read " + path);
  return data;
}

/// Parses a JSON file; a syntax error names the file and nlohmann's byte position.
inline Json read_json_file(const std::string& path) {
  try {
    return Json::parse(read_text_file(path));
  } catch (const Json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

/// The member `key` of object `j` as a T, or `fallback` when `j` is no object or the key is absent
/// or null: Hugging Face files write null for "not set" (nlohmann's value() throws on null).
template <class T>
T json_value(const Json& j, const std::string& key, T fallback) {
  if (!j.is_object()) return fallback;
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->template get<T>();
  } catch (const Json::exception& e) {
    throw std::runtime_error("\"" + key + "\": " + e.what());
  }
}

}  // namespace zotorch::examples
