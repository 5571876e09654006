// GPT-2's byte-level BPE tokenizer in C++, as SmolLM2's tokenizer.json configures it, giving the
// token ids Hugging Face `tokenizers` gives (docs/examples.md "The byte-level BPE tokenizer").
// Pipeline: added (special) tokens are cut out of the raw text; each digit becomes a piece of its
// own (Digits pre-tokenizer); GPT-2's pattern splits the rest; every piece's UTF-8 bytes become the
// initial symbols, merged by rank. Decoding concatenates the tokens' bytes.
// Hand-written because `tokenizers` is a Rust library with no packaged C++ equivalent
// (docs/examples.md "Libraries"); the Unicode classes come from unicode_tables.h.
#pragma once

#include "files.h"
#include "unicode_tables.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace zotorch::examples {

/// Byte-level BPE (GPT-2, Llama-3, SmolLM2 style) read from a Hugging Face tokenizer.json.
/// encode() adds no BOS/EOS: the files it accepts have no post-processor that would.
/// Thread-safe: encode() and decode() may run concurrently (the piece cache has a lock).
class ByteLevelBPE {
 public:
  /// Reads tokenizer.json; refuses (c10::Error naming the file and the field) any normalizer,
  /// pre-tokenizer, model option, post-processor or decoder it does not implement.
  static ByteLevelBPE from_file(const std::string& tokenizer_json) {
    Json j;
    try {
      j = read_json_file(tokenizer_json);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, kName, ": cannot read ", tokenizer_json, ": ", e.what());
    }
    ByteLevelBPE t;
    try {
      t.load(j, tokenizer_json);
    } catch (const c10::Error&) {
      throw;
    } catch (const std::exception& e) {  // a missing key or a wrong type (nlohmann, json_value)
      TORCH_CHECK(false, kName, ": ", tokenizer_json, " is not a tokenizer.json as expected: ", e.what());
    }
    return t;
  }

  /// DIR/tokenizer.json.
  static ByteLevelBPE from_directory(const std::string& dir) {
    const std::filesystem::path p = std::filesystem::path(dir) / "tokenizer.json";
    TORCH_CHECK(std::filesystem::exists(p), kName, ": no tokenizer.json in '", dir,
                "' (pass the model directory that scripts/fetch-llm.sh prints)");
    return from_file(p.string());
  }

  /// Token ids of UTF-8 text. Bytes that are not valid UTF-8 (which `tokenizers` cannot be given)
  /// are kept as pieces of their own, so decode_bytes(encode(s)) == s for any byte string whose
  /// bytes all have a symbol in the vocabulary.
  std::vector<int64_t> encode(const std::string& text) const {
    std::vector<int64_t> ids;
    for_each_segment(text, [&](size_t begin, size_t end, int64_t added_id) {
      if (added_id >= 0) {
        ids.push_back(added_id);
        return;
      }
      pre_tokenize_range(text, begin, end, [&](size_t b, size_t e) { encode_piece(text.data() + b, e - b, ids); });
    });
    return ids;
  }

  /// The pieces the pre-tokenizers make (added tokens included), as raw UTF-8, for tests and inspection.
  std::vector<std::string> pre_tokenize(const std::string& text) const {
    std::vector<std::string> out;
    for_each_segment(text, [&](size_t begin, size_t end, int64_t added_id) {
      if (added_id >= 0) {
        out.push_back(text.substr(begin, end - begin));
        return;
      }
      pre_tokenize_range(text, begin, end, [&](size_t b, size_t e) { out.push_back(text.substr(b, e - b)); });
    });
    return out;
  }

  /// The bytes the ids stand for, concatenated (possibly ending inside a UTF-8 sequence: what a
  /// streaming generator wants). Throws for an id outside [0, vocab_size()).
  std::string decode_bytes(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    std::string out;
    for (const int64_t id : ids) {
      check_id(id);
      if (skip_special_tokens && special_[static_cast<size_t>(id)]) continue;
      out += token_bytes_[static_cast<size_t>(id)];
    }
    return out;
  }

  /// Text of the ids, as `tokenizers`' decode(ids, skip_special_tokens) gives it: the ByteLevel
  /// decoder's bytes with each malformed UTF-8 sequence replaced by U+FFFD (Rust's from_utf8_lossy).
  /// Special tokens are kept unless skip_special_tokens (the Python default is to skip them).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    return utf8_lossy(decode_bytes(ids, skip_special_tokens));
  }

  /// Id of a vocabulary token in its byte-level spelling ("Ġthe"), or of an added token; -1 if absent.
  int64_t token_to_id(const std::string& token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }

  /// The token string (byte-level spelling) of an id.
  const std::string& id_to_token(int64_t id) const {
    check_id(id);
    return tokens_[static_cast<size_t>(id)];
  }

  /// Number of ids: one past the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }

  /// Number of merge rules.
  size_t num_merges() const { return merges_.size(); }

 private:
  static constexpr const char* kName = "zotorch::examples::ByteLevelBPE";

  struct Added {
    std::string content;
    int64_t id;
  };

  ByteLevelBPE() = default;

  // ---- bytes_to_unicode: GPT-2's reversible map of the 256 bytes onto printable code points ----
  /// Printable Latin-1 bytes map to themselves; the others, in byte order, to U+0100, U+0101, ...
  static std::array<uint32_t, 256> byte_to_code_point() {
    std::array<uint32_t, 256> m{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      m[b] = printable ? b : next++;
    }
    return m;
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

  /// Length of the well-formed UTF-8 sequence at s[i] (1 to 4), or 0 when it is malformed. Also
  /// the length of the maximal prefix of a sequence that could still be valid, in *prefix (>= 1).
  static size_t utf8_sequence(const unsigned char* s, size_t n, size_t i, uint32_t* cp, size_t* prefix) {
    const unsigned char c = s[i];
    *prefix = 1;
    if (c < 0x80) {
      *cp = c;
      return 1;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte (Unicode Table 3-7)
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return 0;
    }
    uint32_t v = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= n) return 0;
      const unsigned char b = s[i + k];
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
      v = (v << 6) | (b & 0x3F);
      *prefix = k + 1;
    }
    *cp = v;
    return len;
  }

  /// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
  static std::string utf8_lossy(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size());
    const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
    const size_t n = bytes.size();
    size_t i = 0;
    while (i < n) {
      uint32_t cp;
      size_t prefix;
      const size_t len = utf8_sequence(s, n, i, &cp, &prefix);
      if (len) {
        out.append(bytes, i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        i += prefix;
      }
    }
    return out;
  }

  static uint8_t bpe_class(uint32_t cp) {
    const auto* it = std::upper_bound(std::begin(unicode::kBpeRuns), std::end(unicode::kBpeRuns), cp,
                                      [](uint32_t v, const unicode::FlagRun& r) { return v < r.first; });
    return it == std::begin(unicode::kBpeRuns) ? 0 : (it - 1)->flags;
  }

  // ---- loading ----
  static std::string dump(const Json& j) { return j.dump(); }

  void load(const Json& j, const std::string& path) {
    const Json& model = j.at("model");
    TORCH_CHECK(json_value<std::string>(model, "type", "") == "BPE", kName, ": ", path, ": model.type is '",
                json_value<std::string>(model, "type", "(none)"), "', not 'BPE'");
    TORCH_CHECK(!model.contains("dropout") || model["dropout"].is_null() || model["dropout"].get<double>() == 0.0,
                kName, ": ", path, ": model.dropout is ", dump(model["dropout"]),
                "; only deterministic BPE (dropout null) is implemented");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      TORCH_CHECK(json_value<std::string>(model, key, "").empty(), kName, ": ", path, ": model.", key, " is ",
                  dump(model[key]), "; byte-level BPE uses none (null)");
    }
    TORCH_CHECK(!json_value<bool>(model, "byte_fallback", false), kName, ": ", path,
                ": model.byte_fallback is true; that is SentencePiece-style BPE, not byte-level");
    ignore_merges_ = json_value<bool>(model, "ignore_merges", false);
    check_pipeline(j, path);

    // Vocabulary, then the added tokens (their ids may extend it).
    int64_t max_id = -1;
    for (const auto& [token, id_json] : model.at("vocab").items()) {
      const int64_t id = id_json.get<int64_t>();
      TORCH_CHECK(id >= 0, kName, ": ", path, ": token '", token, "' has a negative id ", id);
      vocab_.emplace(token, id);
      max_id = std::max(max_id, id);
    }
    std::vector<std::pair<std::string, int64_t>> added;
    std::vector<bool> added_special;
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      for (const Json& a : j["added_tokens"]) {
        const std::string content = a.at("content").get<std::string>();
        const int64_t id = a.at("id").get<int64_t>();
        TORCH_CHECK(id >= 0, kName, ": ", path, ": added token '", content, "' has a negative id ", id);
        TORCH_CHECK(!content.empty(), kName, ": ", path, ": added token ", id, " has empty content");
        for (const char* key : {"single_word", "lstrip", "rstrip"}) {
          TORCH_CHECK(!json_value<bool>(a, key, false), kName, ": ", path, ": added token '", content, "' has ", key,
                      " true; only literal matching (single_word, lstrip, rstrip false) is implemented");
        }
        const auto it = vocab_.find(content);
        TORCH_CHECK(it == vocab_.end() || it->second == id, kName, ": ", path, ": added token '", content, "' has id ",
                    id, " but the vocabulary gives it ", it == vocab_.end() ? -1 : it->second);
        vocab_[content] = id;
        max_id = std::max(max_id, id);
        added.emplace_back(content, id);
        added_special.push_back(json_value<bool>(a, "special", false));
      }
    }
    TORCH_CHECK(max_id >= 0, kName, ": ", path, ": the vocabulary is empty");
    tokens_.assign(static_cast<size_t>(max_id) + 1, std::string());
    std::vector<bool> present(tokens_.size(), false);
    for (const auto& [token, id] : vocab_) {
      TORCH_CHECK(!present[static_cast<size_t>(id)] || tokens_[static_cast<size_t>(id)] == token, kName, ": ", path,
                  ": id ", id, " is given to both '", tokens_[static_cast<size_t>(id)], "' and '", token, "'");
      tokens_[static_cast<size_t>(id)] = token;
      present[static_cast<size_t>(id)] = true;
    }
    special_.assign(tokens_.size(), false);
    for (size_t k = 0; k < added.size(); ++k) {
      if (added_special[k]) special_[static_cast<size_t>(added[k].second)] = true;
      added_.push_back({added[k].first, added[k].second});
      added_by_first_byte_[static_cast<unsigned char>(added[k].first[0])].push_back(added_.size() - 1);
    }

    // Each byte's single-symbol token. A vocabulary may lack some (SmolLM2's has none for 21 bytes
    // that never occur in its training text, e.g. 0x04 and 0xF1-0xFF): `tokenizers` then gives the
    // unk token where there is one and otherwise drops the byte, and so does merge_word().
    const auto b2u = byte_to_code_point();
    std::unordered_map<uint32_t, unsigned char> u2b;
    for (int b = 0; b < 256; ++b) {
      std::string sym;
      append_utf8(sym, b2u[b]);
      const auto it = vocab_.find(sym);
      byte_id_[b] = it == vocab_.end() ? -1 : static_cast<int32_t>(it->second);
      u2b[b2u[b]] = static_cast<unsigned char>(b);
    }
    const std::string unk = json_value<std::string>(model, "unk_token", "");
    if (!unk.empty()) {
      const auto it = vocab_.find(unk);
      TORCH_CHECK(it != vocab_.end(), kName, ": ", path, ": model.unk_token '", unk, "' is not in the vocabulary");
      unk_id_ = static_cast<int32_t>(it->second);
      fuse_unk_ = json_value<bool>(model, "fuse_unk", false);
    }
    // The ByteLevel decoder's bytes per token: its symbols mapped back, or (for a token with a
    // code point outside the map, e.g. an added token) its UTF-8 as it is, as `tokenizers` does.
    token_bytes_.resize(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
      const std::string& tok = tokens_[id];
      const auto* s = reinterpret_cast<const unsigned char*>(tok.data());
      std::string bytes;
      bool mapped = true;
      for (size_t i = 0; i < tok.size() && mapped;) {
        uint32_t cp;
        size_t prefix;
        const size_t len = utf8_sequence(s, tok.size(), i, &cp, &prefix);
        const auto it = len ? u2b.find(cp) : u2b.end();
        if (it == u2b.end()) {
          mapped = false;
        } else {
          bytes += static_cast<char>(it->second);
          i += len;
        }
      }
      token_bytes_[id] = mapped ? bytes : tok;
    }

    // Merges: rank = position; "a b" strings or ["a", "b"] pairs.
    const Json& merges = model.at("merges");
    merges_.reserve(merges.size() * 2);
    int32_t rank = 0;
    for (const Json& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        TORCH_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos,
                    kName, ": ", path, ": merge ", rank, " '", s, "' is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        TORCH_CHECK(m.is_array() && m.size() == 2, kName, ": ", path, ": merge ", rank, " is ", dump(m),
                    ", neither \"a b\" nor [\"a\", \"b\"]");
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      TORCH_CHECK(ia != vocab_.end() && ib != vocab_.end(), kName, ": ", path, ": merge ", rank, " ('", a, "' '", b,
                  "') names a token that is not in the vocabulary");
      TORCH_CHECK(iab != vocab_.end(), kName, ": ", path, ": merge ", rank, " ('", a, "' '", b, "') makes '", a + b,
                  "', which is not in the vocabulary");
      // A repeated pair keeps its first (highest-priority) rank.
      merges_.emplace(pair_key(static_cast<int32_t>(ia->second), static_cast<int32_t>(ib->second)),
                      Merge{rank, static_cast<int32_t>(iab->second)});
      ++rank;
    }
  }

  /// Accepts exactly the pipeline implemented here (SmolLM2's); refuses the rest by name.
  static void check_pipeline(const Json& j, const std::string& path) {
    const auto type_of = [](const Json& x) { return json_value<std::string>(x, "type", "(no type)"); };
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      TORCH_CHECK(false, kName, ": ", path, ": normalizer ", type_of(j["normalizer"]),
                  " is not implemented; only a null normalizer is");
    }
    const std::string expected =
        "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]";
    const Json& pre = j.at("pre_tokenizer");
    bool ok = !pre.is_null() && type_of(pre) == "Sequence" && pre.contains("pretokenizers") &&
              pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 2;
    if (ok) {
      const Json& d = pre["pretokenizers"][0];
      const Json& b = pre["pretokenizers"][1];
      ok = type_of(d) == "Digits" && json_value<bool>(d, "individual_digits", false) && type_of(b) == "ByteLevel" &&
           !json_value<bool>(b, "add_prefix_space", true) && json_value<bool>(b, "use_regex", true);
    }
    TORCH_CHECK(ok, kName, ": ", path, ": pre_tokenizer is ", pre.dump(), "; only ", expected,
                " (SmolLM2's) is implemented");
    if (j.contains("post_processor") && !j["post_processor"].is_null()) {
      TORCH_CHECK(type_of(j["post_processor"]) == "ByteLevel", kName, ": ", path, ": post_processor ",
                  type_of(j["post_processor"]),
                  " is not implemented; only null or ByteLevel (which adds no tokens) are");
    }
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      TORCH_CHECK(type_of(j["decoder"]) == "ByteLevel", kName, ": ", path, ": decoder ", type_of(j["decoder"]),
                  " is not implemented; only ByteLevel is");
    }
  }

  void check_id(int64_t id) const {
    TORCH_CHECK(id >= 0 && id < vocab_size(), kName, ": token id ", id, " is outside [0, ", vocab_size(), ")");
  }

  // ---- pre-tokenization ----
  /// Calls f(begin, end, id) for the added tokens (id >= 0) and the text between them (id -1),
  /// in order. Added tokens match literally, leftmost first and the longest at a position, before
  /// any pre-tokenization (tokenizers' AddedVocabulary on non-normalized tokens).
  template <class F>
  void for_each_segment(const std::string& text, F&& f) const {
    size_t start = 0, i = 0;
    const size_t n = text.size();
    while (i < n) {
      const auto& candidates = added_by_first_byte_[static_cast<unsigned char>(text[i])];
      const Added* best = nullptr;
      for (const size_t k : candidates) {
        const Added& a = added_[k];
        if (a.content.size() <= n - i && std::memcmp(text.data() + i, a.content.data(), a.content.size()) == 0 &&
            (!best || a.content.size() > best->content.size())) {
          best = &a;
        }
      }
      if (!best) {
        ++i;
        continue;
      }
      if (i > start) f(start, i, int64_t{-1});
      f(i, i + best->content.size(), best->id);
      i += best->content.size();
      start = i;
    }
    if (n > start) f(start, n, int64_t{-1});
  }

  struct Char {
    uint32_t cp;    ///< the code point, or 0xFFFFFFFF for a byte of malformed UTF-8
    uint32_t off;   ///< byte offset in the text
    uint8_t len;    ///< UTF-8 length
    uint8_t cls;    ///< unicode::BpeClass bits
  };

  /// Calls piece(begin, end) for each piece of text[begin, end): Digits(individual_digits) first,
  /// then GPT-2's pattern within each of its parts:
  ///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  /// by hand over code points (alternatives tried in order, as the backtracking engine does).
  template <class F>
  void pre_tokenize_range(const std::string& text, size_t begin, size_t end, F&& piece) const {
    thread_local std::vector<Char> chars;
    chars.clear();
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t i = begin; i < end;) {
      uint32_t cp;
      size_t prefix;
      size_t len = utf8_sequence(s, end, i, &cp, &prefix);
      uint8_t cls = 0;
      if (len == 0) {
        cp = 0xFFFFFFFFu;  // a malformed byte: a symbol of no class, like punctuation
        len = 1;
      } else {
        cls = cp < 0x80 ? ascii_class(cp) : bpe_class(cp);
      }
      chars.push_back({cp, static_cast<uint32_t>(i), static_cast<uint8_t>(len), cls});
      i += len;
    }
    size_t part = 0;
    for (size_t i = 0; i <= chars.size(); ++i) {
      if (i == chars.size() || (chars[i].cls & unicode::kBpeDigit)) {
        if (i > part) split_gpt2(chars.data() + part, i - part, piece);
        if (i < chars.size()) piece(chars[i].off, chars[i].off + chars[i].len);
        part = i + 1;
      }
    }
  }

  static uint8_t ascii_class(uint32_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return unicode::kBpeLetter;
    if (c >= '0' && c <= '9') return unicode::kBpeNumber | unicode::kBpeDigit;
    if (c == ' ' || (c >= '\t' && c <= '\r')) return unicode::kBpeSpace;
    return 0;
  }

  template <class F>
  static void split_gpt2(const Char* c, size_t n, F&& piece) {
    constexpr uint8_t L = unicode::kBpeLetter, N = unicode::kBpeNumber, S = unicode::kBpeSpace;
    const auto other = [](const Char& ch) { return (ch.cls & (L | N | S)) == 0; };
    const auto off = [&](size_t k) { return k < n ? static_cast<size_t>(c[k].off) : c[n - 1].off + c[n - 1].len; };
    size_t i = 0;
    while (i < n) {
      size_t j = i;
      // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
      if (c[i].cp == '\'' && i + 1 < n) {
        const uint32_t a = c[i + 1].cp;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') {
          j = i + 2;
        } else if (i + 2 < n) {
          const uint32_t b = c[i + 2].cp;
          if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) j = i + 3;
        }
      }
      if (j == i) {
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional ASCII space, then a run of one class.
        const size_t k = c[i].cp == ' ' ? i + 1 : i;
        if (k < n) {
          if (c[k].cls & L) {
            for (j = k; j < n && (c[j].cls & L); ++j) {
            }
          } else if (c[k].cls & N) {
            for (j = k; j < n && (c[j].cls & N); ++j) {
            }
          } else if (other(c[k])) {
            for (j = k; j < n && other(c[j]); ++j) {
            }
          }
        }
      }
      if (j == i) {
        // `\s+(?!\S)`: a whitespace run, less its last character when non-space follows; else `\s+`.
        size_t k = i;
        while (k < n && (c[k].cls & S)) ++k;
        j = (k == n || k - i == 1) ? k : k - 1;
      }
      piece(off(i), off(j));
      i = j;
    }
  }

  // ---- the BPE model ----
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  /// Appends the ids of one pre-tokenized piece (its raw bytes), through the cache.
  void encode_piece(const char* data, size_t len, std::vector<int64_t>& ids) const {
    const std::string key(data, len);
    {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      const auto it = cache_->pieces.find(key);
      if (it != cache_->pieces.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> word = merge_word(key);
    ids.insert(ids.end(), word.begin(), word.end());
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->pieces.size() >= kCacheCapacity) cache_->pieces.clear();  // bounded memory on endless distinct text
    cache_->pieces.emplace(key, std::move(word));
  }

  /// Byte symbols merged by rank: always the lowest-ranked adjacent pair, the leftmost of equals
  /// (tokenizers' priority-queue order), until no adjacent pair has a merge.
  std::vector<int32_t> merge_word(const std::string& bytes) const {
    const size_t n = bytes.size();
    if (ignore_merges_) {
      std::string spelled;
      const auto b2u = byte_to_code_point();
      for (const char ch : bytes) append_utf8(spelled, b2u[static_cast<unsigned char>(ch)]);
      const auto it = vocab_.find(spelled);
      if (it != vocab_.end()) return {static_cast<int32_t>(it->second)};
    }
    std::vector<int32_t> sym;
    sym.reserve(n);
    bool last_unk = false;
    for (size_t i = 0; i < n; ++i) {
      const int32_t id = byte_id_[static_cast<unsigned char>(bytes[i])];
      if (id >= 0) {
        sym.push_back(id);
        last_unk = false;
      } else if (unk_id_ >= 0 && !(fuse_unk_ && last_unk)) {
        sym.push_back(unk_id_);
        last_unk = true;
      }
    }
    const size_t m = sym.size();
    std::vector<int32_t> prev(m), next(m);
    for (size_t i = 0; i < m; ++i) {
      prev[i] = static_cast<int32_t>(i) - 1;
      next[i] = i + 1 < m ? static_cast<int32_t>(i + 1) : -1;
    }
    struct Candidate {
      int32_t rank, pos, id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    const auto push = [&](int32_t pos) {
      if (pos < 0 || next[pos] < 0) return;
      const auto it = merges_.find(pair_key(sym[pos], sym[next[pos]]));
      if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.id});
    };
    for (size_t i = 0; i + 1 < m; ++i) push(static_cast<int32_t>(i));
    std::vector<bool> dead(m, false);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      const int32_t p = top.pos;
      if (dead[p] || next[p] < 0) continue;
      const auto it = merges_.find(pair_key(sym[p], sym[next[p]]));
      if (it == merges_.end() || it->second.id != top.id) continue;  // stale: a neighbour changed
      const int32_t q = next[p];
      sym[p] = top.id;
      dead[q] = true;
      next[p] = next[q];
      if (next[q] >= 0) prev[next[q]] = p;
      push(prev[p]);
      push(p);
    }
    std::vector<int32_t> out;
    for (int32_t i = m ? 0 : -1; i >= 0; i = next[i]) out.push_back(sym[i]);
    return out;
  }

  static constexpr size_t kCacheCapacity = 1 << 16;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> tokens_;
  std::vector<std::string> token_bytes_;
  std::vector<bool> special_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<Added> added_;
  std::array<std::vector<size_t>, 256> added_by_first_byte_;
  std::array<int32_t, 256> byte_id_{};  ///< -1: no symbol for the byte
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  /// Ids of pieces already merged; shared by copies, which have the same vocabulary and merges.
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> pieces;
  };
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

}  // namespace zotorch::examples
