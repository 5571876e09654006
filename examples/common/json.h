// A small JSON reader/writer for the examples' model files (config.json, tokenizer_config.json, the
// safetensors header) and their summary.json output, so the examples need no JSON dependency.
// Strict RFC 8259 parsing; numbers are doubles (safetensors offsets stay exact below 2^53 bytes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace zotorch::examples {

/// A parsed JSON value. Objects keep their keys sorted (std::map); the order of a file's keys is not
/// needed by any reader here, except the safetensors header, whose tensors we sort by offset anyway.
class Json {
 public:
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;

  Json() : value_(nullptr) {}
  Json(std::nullptr_t) : value_(nullptr) {}
  Json(bool b) : value_(b) {}
  Json(double d) : value_(d) {}
  Json(int i) : value_(static_cast<double>(i)) {}
  Json(int64_t i) : value_(static_cast<double>(i)) {}
  Json(const char* s) : value_(std::string(s)) {}
  Json(std::string s) : value_(std::move(s)) {}
  Json(Array a) : value_(std::move(a)) {}
  Json(Object o) : value_(std::move(o)) {}

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(value_); }
  bool is_bool() const { return std::holds_alternative<bool>(value_); }
  bool is_number() const { return std::holds_alternative<double>(value_); }
  bool is_string() const { return std::holds_alternative<std::string>(value_); }
  bool is_array() const { return std::holds_alternative<Array>(value_); }
  bool is_object() const { return std::holds_alternative<Object>(value_); }

  bool as_bool() const { return get<bool>("a boolean"); }
  double as_number() const { return get<double>("a number"); }
  int64_t as_int() const {
    const double d = as_number();
    if (d != std::floor(d) || std::fabs(d) > 9007199254740992.0) {
      throw std::runtime_error("json: expected an integer, got " + dump());
    }
    return static_cast<int64_t>(d);
  }
  const std::string& as_string() const { return get<std::string>("a string"); }
  const Array& as_array() const { return get<Array>("an array"); }
  const Object& as_object() const { return get<Object>("an object"); }
  Array& as_array() { return const_cast<Array&>(std::as_const(*this).as_array()); }
  Object& as_object() { return const_cast<Object&>(std::as_const(*this).as_object()); }

  bool contains(const std::string& key) const { return is_object() && as_object().count(key) > 0; }
  /// Member access that names the missing key in its error.
  const Json& at(const std::string& key) const {
    const auto& o = as_object();
    auto it = o.find(key);
    if (it == o.end()) throw std::runtime_error("json: missing key \"" + key + "\"");
    return it->second;
  }
  /// The member's value, or `fallback` when the key is absent or null.
  template <class T>
  T value(const std::string& key, T fallback) const {
    if (!contains(key) || at(key).is_null()) return fallback;
    const Json& v = at(key);
    if constexpr (std::is_same_v<T, bool>) return v.as_bool();
    else if constexpr (std::is_same_v<T, std::string>) return v.as_string();
    else if constexpr (std::is_integral_v<T>) return static_cast<T>(v.as_int());
    else return static_cast<T>(v.as_number());
  }
  Json& operator[](const std::string& key) {
    if (is_null()) value_ = Object{};
    return as_object()[key];
  }

  /// Serialises compactly (indent < 0) or pretty-printed with `indent` spaces.
  std::string dump(int indent = -1) const {
    std::string out;
    dump_to(out, indent, 0);
    return out;
  }

  static Json parse(const std::string& text) {
    Parser p{text, 0};
    p.skip_ws();
    Json v = p.parse_value(0);
    p.skip_ws();
    if (p.pos != text.size()) p.fail("trailing characters after the JSON value");
    return v;
  }

 private:
  template <class T>
  const T& get(const char* what) const {
    if (const T* p = std::get_if<T>(&value_)) return *p;
    throw std::runtime_error(std::string("json: expected ") + what + ", got " + dump().substr(0, 80));
  }

  static void escape(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
    }
    out += '"';
  }

  void dump_to(std::string& out, int indent, int depth) const {
    auto newline = [&](int d) {
      if (indent >= 0) out += '\n' + std::string(static_cast<size_t>(indent * d), ' ');
    };
    if (is_null()) {
      out += "null";
    } else if (is_bool()) {
      out += as_bool() ? "true" : "false";
    } else if (is_number()) {
      const double d = as_number();
      if (!std::isfinite(d)) {
        out += "null";  // JSON has no NaN/inf
      } else if (d == std::floor(d) && std::fabs(d) < 1e15) {
        out += std::to_string(static_cast<int64_t>(d));
      } else {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", d);
        out += buf;
      }
    } else if (is_string()) {
      escape(out, as_string());
    } else if (is_array()) {
      const auto& a = as_array();
      out += '[';
      for (size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        newline(depth + 1);
        a[i].dump_to(out, indent, depth + 1);
      }
      if (!a.empty()) newline(depth);
      out += ']';
    } else {
      const auto& o = as_object();
      out += '{';
      bool first = true;
      for (const auto& [k, v] : o) {
        if (!first) out += ',';
        first = false;
        newline(depth + 1);
        escape(out, k);
        out += indent >= 0 ? ": " : ":";
        v.dump_to(out, indent, depth + 1);
      }
      if (!o.empty()) newline(depth);
      out += '}';
    }
  }

  struct Parser {
    const std::string& s;
    size_t pos;

    [[noreturn]] void fail(const std::string& why) const {
      throw std::runtime_error("json: " + why + " at byte " + std::to_string(pos));
    }
    void skip_ws() {
      while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) ++pos;
    }
    bool consume(const char* word) {
      size_t n = std::char_traits<char>::length(word);
      if (s.compare(pos, n, word) == 0) {
        pos += n;
        return true;
      }
      return false;
    }
    Json parse_value(int depth) {
      if (depth > 256) fail("nesting deeper than 256");
      if (pos >= s.size()) fail("unexpected end of input");
      const char c = s[pos];
      if (c == '{') return parse_object(depth);
      if (c == '[') return parse_array(depth);
      if (c == '"') return Json(parse_string());
      if (consume("true")) return Json(true);
      if (consume("false")) return Json(false);
      if (consume("null")) return Json(nullptr);
      if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
      fail(std::string("unexpected character '") + c + "'");
    }
    Json parse_number() {
      const size_t start = pos;
      if (s[pos] == '-') ++pos;
      auto digits = [&] {
        const size_t d = pos;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') ++pos;
        if (pos == d) fail("malformed number");
      };
      digits();
      if (pos < s.size() && s[pos] == '.') {
        ++pos;
        digits();
      }
      if (pos < s.size() && (s[pos] == 'e' || s[pos] == 'E')) {
        ++pos;
        if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) ++pos;
        digits();
      }
      std::istringstream in(s.substr(start, pos - start));
      in.imbue(std::locale::classic());
      double d = 0;
      in >> d;
      return Json(d);
    }
    unsigned hex4() {
      if (pos + 4 > s.size()) fail("truncated \\u escape");
      unsigned v = 0;
      for (int i = 0; i < 4; ++i) {
        const char h = s[pos++];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= static_cast<unsigned>(h - '0');
        else if (h >= 'a' && h <= 'f') v |= static_cast<unsigned>(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= static_cast<unsigned>(h - 'A' + 10);
        else fail("bad hex digit in \\u escape");
      }
      return v;
    }
    static void append_utf8(std::string& out, uint32_t cp) {
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    std::string parse_string() {
      ++pos;  // opening quote
      std::string out;
      while (true) {
        if (pos >= s.size()) fail("unterminated string");
        const char c = s[pos++];
        if (c == '"') return out;
        if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in string");
        if (c != '\\') {
          out += c;
          continue;
        }
        if (pos >= s.size()) fail("unterminated escape");
        const char e = s[pos++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xD800 && cp < 0xDC00 && s.compare(pos, 2, "\\u") == 0) {
              pos += 2;
              const uint32_t lo = hex4();
              if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              else fail("unpaired surrogate in \\u escape");
            }
            append_utf8(out, cp);
            break;
          }
          default: fail(std::string("unknown escape \\") + e);
        }
      }
    }
    Json parse_array(int depth) {
      ++pos;
      Array a;
      skip_ws();
      if (pos < s.size() && s[pos] == ']') {
        ++pos;
        return Json(std::move(a));
      }
      while (true) {
        skip_ws();
        a.push_back(parse_value(depth + 1));
        skip_ws();
        if (pos < s.size() && s[pos] == ',') {
          ++pos;
        } else if (pos < s.size() && s[pos] == ']') {
          ++pos;
          return Json(std::move(a));
        } else {
          fail("expected ',' or ']'");
        }
      }
    }
    Json parse_object(int depth) {
      ++pos;
      Object o;
      skip_ws();
      if (pos < s.size() && s[pos] == '}') {
        ++pos;
        return Json(std::move(o));
      }
      while (true) {
        skip_ws();
        if (pos >= s.size() || s[pos] != '"') fail("expected a string key");
        std::string key = parse_string();
        skip_ws();
        if (pos >= s.size() || s[pos] != ':') fail("expected ':'");
        ++pos;
        skip_ws();
        o[std::move(key)] = parse_value(depth + 1);
        skip_ws();
        if (pos < s.size() && s[pos] == ',') {
          ++pos;
        } else if (pos < s.size() && s[pos] == '}') {
          ++pos;
          return Json(std::move(o));
        } else {
          fail("expected ',' or '}'");
        }
      }
    }
  };

  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> value_;
};

/// Reads a whole file; the error names the path.
inline std::string read_text_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
  std::fclose(f);
  return data;
}

inline Json read_json_file(const std::string& path) {
  try {
    return Json::parse(read_text_file(path));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace zotorch::examples
