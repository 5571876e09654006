// Command lines of the examples: CLI11 (Debian's libcli11-dev, docs/examples.md "Libraries"), with
// the behaviour every example shares: --help prints the usage to stdout and exits 0; a bad option
// or value prints "<program>: <what is wrong>" and a hint to stderr and exits 2.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

namespace zotorch::examples {

/// A number >= `min` (> `min` when `strict`). CLI11's Range validators describe a non-number as
/// out of a range of 1.8e308 wide; this says what is wrong in words.
inline CLI::Validator at_least(double min, bool strict = false) {
  std::ostringstream name;
  name << (strict ? "> " : ">= ") << min;
  return CLI::Validator(
      [min, strict](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "'" + text + "' is not a number";
        if (strict ? !(v > min) : !(v >= min)) {
          std::ostringstream out;
          out << "must be " << (strict ? "> " : ">= ") << min << ", got " << text;
          return out.str();
        }
        return "";
      },
      name.str());
}
inline CLI::Validator positive() { return at_least(0, /*strict=*/true); }
inline CLI::Validator non_negative() { return at_least(0); }

/// An application whose help lists options with their defaults in a wide first column.
inline void configure_cli(CLI::App& app) {
  app.get_formatter()->column_width(36);
  app.option_defaults()->always_capture_default();
}

/// Parses argv; exits 0 after --help and 2 after an error, as described above.
inline void parse_or_exit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) std::exit(app.exit(e));  // --help
    std::cerr << app.get_name() << ": " << e.what() << "\n(run with --help for the options)\n";
    std::exit(2);
  }
}

/// For checks CLI11 cannot express: the same message and exit status as a parse error.
[[noreturn]] inline void usage_error(const CLI::App& app, const std::string& message) {
  std::cerr << app.get_name() << ": " << message << "\n(run with --help for the options)\n";
  std::exit(2);
}

}  // namespace zotorch::examples
