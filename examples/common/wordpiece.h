// BERT's WordPiece tokenizer in C++, matching Hugging Face `tokenizers` (BertNormalizer,
// BertPreTokenizer, WordPiece model, [CLS] A [SEP] template) on a model directory's vocab.txt /
// tokenizer.json, so the fine-tuning examples read raw text like the Python stack would.
// Hand-written because `tokenizers` is a Rust library with no packaged C++ equivalent
// (docs/examples.md "Libraries").
#pragma once

#include "files.h"
#include "unicode_tables.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace zotorch::examples {

namespace utf8 {

/// Decodes UTF-8; a malformed sequence becomes U+FFFD (which BERT's clean_text then drops), so
/// bytes that are not text never crash the tokenizer.
inline std::vector<uint32_t> decode(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  auto cont = [&](size_t k) { return k < n && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80; };
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if (c >= 0xC2 && c < 0xE0 && cont(i + 1)) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      len = 2;
    } else if (c >= 0xE0 && c < 0xF0 && cont(i + 1) && cont(i + 2)) {
      cp = ((c & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
           (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
      len = 3;
      if (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000)) cp = 0xFFFD;
    } else if (c >= 0xF0 && c < 0xF5 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      cp = ((c & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
           ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
      len = 4;
      if (cp < 0x10000 || cp > 0x10FFFF) cp = 0xFFFD;
    } else {
      cp = 0xFFFD;
      len = 1;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

inline void append(std::string& out, uint32_t cp) {
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

inline std::string encode(const uint32_t* begin, const uint32_t* end) {
  std::string out;
  for (const uint32_t* p = begin; p != end; ++p) append(out, *p);
  return out;
}

}  // namespace utf8

namespace unicode {

inline uint8_t flags(uint32_t cp) {
  const auto* it = std::upper_bound(std::begin(kFlagRuns), std::end(kFlagRuns), cp,
                                    [](uint32_t v, const FlagRun& r) { return v < r.first; });
  return it == std::begin(kFlagRuns) ? 0 : (it - 1)->flags;
}

inline const Mapping* find_mapping(const Mapping* begin, const Mapping* end, uint32_t cp) {
  const Mapping* it = std::lower_bound(begin, end, cp, [](const Mapping& m, uint32_t v) { return m.cp < v; });
  return it != end && it->cp == cp ? it : nullptr;
}

inline void append_lowercase(std::vector<uint32_t>& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (const Mapping* m = find_mapping(std::begin(kLowercase), std::end(kLowercase), cp)) {
    out.insert(out.end(), m->to, m->to + m->len);
  } else {
    out.push_back(cp);
  }
}

/// Appends cp as BertNormalizer leaves it: NFD without nonspacing marks when `strip_accents`, then
/// lowercased when `lowercase` (in that order, so "İ" becomes "i", not "i̇").
inline void append_normalized(std::vector<uint32_t>& out, uint32_t cp, bool strip_accents, bool lowercase) {
  uint32_t buf[3] = {cp, 0, 0};
  size_t n = 1;
  if (strip_accents && cp >= 0x80) {
    if (cp >= 0xAC00 && cp <= 0xD7A3) {  // Hangul syllable: algorithmic NFD to conjoining jamo
      const uint32_t s = cp - 0xAC00;
      buf[0] = 0x1100 + s / 588;
      buf[1] = 0x1161 + (s % 588) / 28;
      buf[2] = 0x11A7 + s % 28;
      n = s % 28 ? 3 : 2;
    } else if (const Mapping* m = find_mapping(std::begin(kStripAccents), std::end(kStripAccents), cp)) {
      n = m->len;
      for (size_t i = 0; i < n; ++i) buf[i] = m->to[i];
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (lowercase) append_lowercase(out, buf[i]);
    else out.push_back(buf[i]);
  }
}

}  // namespace unicode

/// Normaliser options, named like tokenizer.json's BertNormalizer fields.
struct WordPieceOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  std::optional<bool> strip_accents;  ///< unset: follow `lowercase`, as BERT does
  bool lowercase = true;
  std::string unk_token = "[UNK]";
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;
};

/// A batch ready for a BERT forward: [batch, seq] int64 tensors.
struct TokenBatch {
  at::Tensor input_ids;
  at::Tensor attention_mask;
  at::Tensor token_type_ids;
};

/// BERT WordPiece tokenizer. Build it from a model directory with from_directory().
class WordPieceTokenizer {
 public:
  WordPieceTokenizer(std::vector<std::string> vocab, WordPieceOptions options, std::vector<std::string> special_tokens = {})
      : vocab_(std::move(vocab)), options_(std::move(options)) {
    TORCH_CHECK(!vocab_.empty(), "WordPieceTokenizer: the vocabulary is empty");
    ids_.reserve(vocab_.size());
    for (size_t i = 0; i < vocab_.size(); ++i) ids_.emplace(vocab_[i], static_cast<int64_t>(i));
    unk_id_ = require_id(options_.unk_token, "unk_token");
    cls_id_ = require_id(options_.cls_token, "cls_token");
    sep_id_ = require_id(options_.sep_token, "sep_token");
    pad_id_ = require_id(options_.pad_token, "pad_token");
    if (special_tokens.empty()) {
      special_tokens = {options_.pad_token, options_.unk_token, options_.cls_token, options_.sep_token, "[MASK]"};
    }
    for (auto& t : special_tokens) {
      if (!t.empty() && ids_.count(t)) specials_.push_back(t);
    }
    // Longest first: "leftmost-longest" matching of added tokens, as tokenizers does.
    std::sort(specials_.begin(), specials_.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  }

  /// Reads vocab.txt (or the vocab inside tokenizer.json) and the normaliser settings of
  /// tokenizer.json (else tokenizer_config.json) from a Hugging Face model directory.
  static WordPieceTokenizer from_directory(const std::string& dir) {
    namespace fs = std::filesystem;
    WordPieceOptions options;
    std::vector<std::string> vocab, specials;
    const fs::path tj = fs::path(dir) / "tokenizer.json";
    const fs::path tc = fs::path(dir) / "tokenizer_config.json";
    const fs::path vt = fs::path(dir) / "vocab.txt";
    Json tokenizer_json;
    // A missing key or a wrong type in the files surfaces as nlohmann's exception: name the directory.
    try {
      if (fs::exists(tj)) {
        tokenizer_json = read_json_file(tj.string());
        const Json& model = tokenizer_json.at("model");
        TORCH_CHECK(json_value<std::string>(model, "type", "") == "WordPiece", "WordPieceTokenizer: ", tj.string(),
                    " describes a ", json_value<std::string>(model, "type", "?"), " model, not WordPiece; this loader reads BERT-family tokenizers");
        options.unk_token = json_value<std::string>(model, "unk_token", options.unk_token);
        options.continuing_subword_prefix = json_value<std::string>(model, "continuing_subword_prefix", "##");
        options.max_input_chars_per_word = json_value<size_t>(model, "max_input_chars_per_word", 100);
        if (tokenizer_json.contains("normalizer") && tokenizer_json.at("normalizer").is_object()) {
          const Json& n = tokenizer_json.at("normalizer");
          TORCH_CHECK(json_value<std::string>(n, "type", "") == "BertNormalizer", "WordPieceTokenizer: ", tj.string(),
                      " uses the normalizer ", json_value<std::string>(n, "type", "?"), "; only BertNormalizer is implemented");
          options.clean_text = json_value<bool>(n, "clean_text", true);
          options.handle_chinese_chars = json_value<bool>(n, "handle_chinese_chars", true);
          options.lowercase = json_value<bool>(n, "lowercase", true);
          if (n.contains("strip_accents") && !n.at("strip_accents").is_null()) options.strip_accents = n.at("strip_accents").get<bool>();
        }
        if (tokenizer_json.contains("added_tokens")) {
          for (const auto& t : tokenizer_json.at("added_tokens")) specials.push_back(t.at("content").get<std::string>());
        }
        if (!fs::exists(vt)) {
          const Json& v = model.at("vocab");
          vocab.resize(v.size());
          for (const auto& [token, id] : v.items()) {
            const int64_t i = id.get<int64_t>();
            TORCH_CHECK(i >= 0 && static_cast<size_t>(i) < vocab.size(), "WordPieceTokenizer: ", tj.string(),
                        " has a vocab id ", i, " out of range");
            vocab[static_cast<size_t>(i)] = token;
          }
        }
      } else if (fs::exists(tc)) {
        const Json c = read_json_file(tc.string());
        options.lowercase = json_value<bool>(c, "do_lower_case", true);
        options.handle_chinese_chars = json_value<bool>(c, "tokenize_chinese_chars", true);
        if (c.contains("strip_accents") && !c.at("strip_accents").is_null()) options.strip_accents = c.at("strip_accents").get<bool>();
        for (const char* key : {"unk_token", "cls_token", "sep_token", "pad_token"}) {
          if (c.contains(key) && c.at(key).is_string()) {
            std::string& slot = std::string(key) == "unk_token"   ? options.unk_token
                                : std::string(key) == "cls_token" ? options.cls_token
                                : std::string(key) == "sep_token" ? options.sep_token
                                                                  : options.pad_token;
            slot = c.at(key).get<std::string>();
          }
        }
      }
    } catch (const Json::exception& e) {
      TORCH_CHECK(false, "WordPieceTokenizer: ", dir, ": tokenizer.json or tokenizer_config.json is not as expected: ", e.what());
    }
    if (vocab.empty()) {
      TORCH_CHECK(fs::exists(vt), "WordPieceTokenizer: ", dir, " has neither vocab.txt nor tokenizer.json; point --model at a "
                  "Hugging Face BERT directory");
      std::ifstream in(vt);
      std::string line;
      while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        vocab.push_back(line);
      }
    }
    return WordPieceTokenizer(std::move(vocab), options, specials);
  }

  /// The normalised, pre-tokenised words of `text` (before WordPiece), for tests and debugging.
  std::vector<std::string> pre_tokenize(const std::string& text) const {
    std::vector<std::string> words;
    for (const auto& seg : split_specials(text)) {
      if (seg.second) {
        words.push_back(seg.first);
        continue;
      }
      for_each_word(seg.first, [&](const uint32_t* b, const uint32_t* e) { words.push_back(utf8::encode(b, e)); });
    }
    return words;
  }

  /// WordPiece ids of `text`, without [CLS]/[SEP].
  std::vector<int64_t> tokenize_ids(const std::string& text) const {
    std::vector<int64_t> ids;
    for (const auto& seg : split_specials(text)) {
      if (seg.second) {
        ids.push_back(ids_.at(seg.first));
        continue;
      }
      for_each_word(seg.first, [&](const uint32_t* b, const uint32_t* e) { wordpiece(b, e, ids); });
    }
    return ids;
  }

  /// The word pieces of `text` as strings ("un", "##believ", "##able").
  std::vector<std::string> tokenize(const std::string& text) const {
    std::vector<std::string> out;
    for (int64_t id : tokenize_ids(text)) out.push_back(vocab_[static_cast<size_t>(id)]);
    return out;
  }

  /// [CLS] pieces [SEP], truncated to `max_length` tokens in all (the tail is dropped, as
  /// tokenizers' LongestFirst does for one sequence); max_length <= 0 means no truncation.
  std::vector<int64_t> encode(const std::string& text, int64_t max_length = 0) const {
    std::vector<int64_t> pieces = tokenize_ids(text);
    if (max_length > 0) {
      TORCH_CHECK(max_length >= 2, "WordPieceTokenizer::encode: max_length must be >= 2 to hold [CLS] and [SEP], got ", max_length);
      if (static_cast<int64_t>(pieces.size()) > max_length - 2) pieces.resize(static_cast<size_t>(max_length - 2));
    }
    std::vector<int64_t> ids;
    ids.reserve(pieces.size() + 2);
    ids.push_back(cls_id_);
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    ids.push_back(sep_id_);
    return ids;
  }

  /// Encodes texts and pads them with [PAD] to the longest one (dynamic padding: short batches cost
  /// less), giving input ids, the attention mask (1 = token, 0 = padding) and zero token types.
  TokenBatch encode_batch(const std::vector<std::string>& texts, int64_t max_length) const {
    std::vector<std::vector<int64_t>> rows;
    rows.reserve(texts.size());
    size_t longest = 0;
    for (const auto& t : texts) {
      rows.push_back(encode(t, max_length));
      longest = std::max(longest, rows.back().size());
    }
    const auto n = static_cast<int64_t>(rows.size());
    const auto L = static_cast<int64_t>(longest);
    TokenBatch b{at::full({n, L}, pad_id_, at::kLong), at::zeros({n, L}, at::kLong), at::zeros({n, L}, at::kLong)};
    auto ids = b.input_ids.accessor<int64_t, 2>();
    auto mask = b.attention_mask.accessor<int64_t, 2>();
    for (int64_t i = 0; i < n; ++i) {
      const auto& r = rows[static_cast<size_t>(i)];
      for (size_t j = 0; j < r.size(); ++j) {
        ids[i][static_cast<int64_t>(j)] = r[j];
        mask[i][static_cast<int64_t>(j)] = 1;
      }
    }
    return b;
  }

  int64_t token_to_id(const std::string& token) const {
    auto it = ids_.find(token);
    return it == ids_.end() ? unk_id_ : it->second;
  }
  const std::string& id_to_token(int64_t id) const {
    TORCH_CHECK(id >= 0 && static_cast<size_t>(id) < vocab_.size(), "WordPieceTokenizer: id ", id, " is outside the vocabulary of ",
                vocab_.size());
    return vocab_[static_cast<size_t>(id)];
  }
  size_t vocab_size() const { return vocab_.size(); }
  int64_t pad_id() const { return pad_id_; }
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t unk_id() const { return unk_id_; }
  const WordPieceOptions& options() const { return options_; }

 private:
  int64_t require_id(const std::string& token, const char* what) const {
    auto it = ids_.find(token);
    TORCH_CHECK(it != ids_.end(), "WordPieceTokenizer: the ", what, " '", token, "' is not in the vocabulary (",
                vocab_.size(), " tokens); is this a BERT vocab.txt?");
    return it->second;
  }

  /// Splits raw text around exact occurrences of special tokens ("[MASK]" in the input stays one
  /// token, as tokenizers' added tokens do). Pairs of (segment, is_special).
  std::vector<std::pair<std::string, bool>> split_specials(const std::string& text) const {
    std::vector<std::pair<std::string, bool>> out;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const std::string* hit = nullptr;
      if (text[i] == '[') {
        for (const auto& s : specials_) {
          if (text.compare(i, s.size(), s) == 0) {
            hit = &s;
            break;
          }
        }
      }
      if (hit) {
        if (i > start) out.emplace_back(text.substr(start, i - start), false);
        out.emplace_back(*hit, true);
        i += hit->size();
        start = i;
      } else {
        ++i;
      }
    }
    if (start < text.size()) out.emplace_back(text.substr(start), false);
    return out;
  }

  /// BertNormalizer (clean_text, CJK spacing, strip accents, lowercase) then BertPreTokenizer
  /// (split on whitespace, isolate punctuation); calls fn(begin, end) for each word's code points.
  template <class Fn>
  void for_each_word(const std::string& text, Fn&& fn) const {
    const bool strip = options_.strip_accents.value_or(options_.lowercase);
    std::vector<uint32_t> norm;
    norm.reserve(text.size() + 8);
    for (uint32_t cp : utf8::decode(text)) {
      const uint8_t f = unicode::flags(cp);
      if (options_.clean_text) {
        if (f & unicode::kDrop) continue;
        if (f & unicode::kCleanSpace) {
          norm.push_back(' ');
          continue;
        }
      }
      if (options_.handle_chinese_chars && (f & unicode::kCjk)) {
        norm.push_back(' ');
        unicode::append_normalized(norm, cp, strip, options_.lowercase);
        norm.push_back(' ');
        continue;
      }
      unicode::append_normalized(norm, cp, strip, options_.lowercase);
    }
    size_t start = 0;
    for (size_t i = 0; i <= norm.size(); ++i) {
      const bool end = i == norm.size();
      const uint8_t f = end ? 0 : unicode::flags(norm[i]);
      const bool space = f & unicode::kSplitSpace;
      const bool punct = f & unicode::kPunct;
      if (end || space || punct) {
        if (i > start) fn(norm.data() + start, norm.data() + i);
        if (punct) fn(norm.data() + i, norm.data() + i + 1);
        start = i + 1;
      }
    }
  }

  /// Greedy longest-match-first WordPiece; a word with any unmatched remainder, or longer than
  /// max_input_chars_per_word, becomes a single [UNK].
  void wordpiece(const uint32_t* begin, const uint32_t* end, std::vector<int64_t>& ids) const {
    const size_t n = static_cast<size_t>(end - begin);
    if (n > options_.max_input_chars_per_word) {
      ids.push_back(unk_id_);
      return;
    }
    const size_t mark = ids.size();
    size_t start = 0;
    std::string piece;
    while (start < n) {
      size_t stop = n;
      int64_t found = -1;
      while (stop > start) {
        piece = start > 0 ? options_.continuing_subword_prefix : std::string();
        piece += utf8::encode(begin + start, begin + stop);
        auto it = ids_.find(piece);
        if (it != ids_.end()) {
          found = it->second;
          break;
        }
        --stop;
      }
      if (found < 0) {
        ids.resize(mark);
        ids.push_back(unk_id_);
        return;
      }
      ids.push_back(found);
      start = stop;
    }
  }

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int64_t> ids_;
  WordPieceOptions options_;
  std::vector<std::string> specials_;
  int64_t unk_id_ = 0, cls_id_ = 0, sep_id_ = 0, pad_id_ = 0;
};

}  // namespace zotorch::examples
