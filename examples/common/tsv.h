// Labelled text in the examples' TSV format (one example per line: text<TAB>label), the format
// scripts/fetch-data.sh writes and any user's own data can be put in.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace zotorch::examples {

struct LabelledText {
  std::string text;
  std::string label;
};

/// Reads text<TAB>label lines; the label is the part after the last tab, so texts may not contain
/// tabs but may contain anything else. Blank lines are skipped; a line without a tab is an error
/// that names the file and line.
inline std::vector<LabelledText> read_tsv(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, "read_tsv: cannot open ", path, "; scripts/fetch-data.sh makes data/polarity/{train,dev,test}.tsv");
  std::vector<LabelledText> rows;
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const size_t tab = line.rfind('\t');
    TORCH_CHECK(tab != std::string::npos && tab + 1 < line.size(), "read_tsv: ", path, ":", number,
                ": expected text<TAB>label, got \"", line.substr(0, 80), "\"");
    rows.push_back({line.substr(0, tab), line.substr(tab + 1)});
  }
  TORCH_CHECK(!rows.empty(), "read_tsv: ", path, " has no examples");
  return rows;
}

/// The sorted distinct labels of `rows`: class i of the classifier is labels[i].
inline std::vector<std::string> label_set(const std::vector<LabelledText>& rows) {
  std::vector<std::string> labels;
  for (const auto& r : rows) labels.push_back(r.label);
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
  return labels;
}

/// Class indices of `rows` under `labels`; a label absent from `labels` is an error naming `what`.
inline std::vector<int64_t> label_indices(const std::vector<LabelledText>& rows, const std::vector<std::string>& labels,
                                          const std::string& what) {
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < labels.size(); ++i) index[labels[i]] = static_cast<int64_t>(i);
  std::vector<int64_t> out;
  for (const auto& r : rows) {
    auto it = index.find(r.label);
    TORCH_CHECK(it != index.end(), what, " has the label '", r.label, "', which the training set does not have; "
                "every label must occur in --train");
    out.push_back(it->second);
  }
  return out;
}

}  // namespace zotorch::examples
