#!/usr/bin/env python3
"""Generates examples/common/unicode_tables.h, the per-character data the C++ WordPiece tokenizer
needs to normalise and split text exactly like Hugging Face `tokenizers` (BertNormalizer +
BertPreTokenizer). The reference library itself is the oracle: every code point is passed through
its normaliser and pre-tokeniser, so the tables carry its Unicode version and its quirks (it keeps
unassigned code points, for instance, where a reading of the BERT paper's code would drop them).

Tables:
* flags per code point (run-length encoded): dropped by clean_text, turned into a space by
  clean_text, padded with spaces by handle_chinese_chars, split on as whitespace, isolated as
  punctuation by the pre-tokeniser;
* strip_accents: what the normaliser's accent stripping (NFD minus nonspacing marks) leaves of the
  code point, where it differs (Hangul syllables are decomposed in C++ and checked here);
* lowercase: what its lowercasing leaves, where it differs.
The C++ side applies them in BertNormalizer's order: clean, CJK, strip accents, lowercase.
* byte-level BPE classes per code point (run-length encoded), for examples/common/bpe.h: what the
  Digits(individual_digits=true) pre-tokeniser isolates, and which of the GPT-2 pattern's classes
  \p{L}, \p{N} and \s (as the ByteLevel pre-tokeniser's regex engine reads them) it falls in. They
  come from the pre-tokenisers themselves, not from Python's unicodedata, whose Unicode version and
  idea of whitespace differ from the Rust side's.

Usage: .venv/bin/python scripts/make_unicode_tables.py > examples/common/unicode_tables.h
(needs `pip install tokenizers` in that environment)
"""
import sys

import tokenizers
from tokenizers import normalizers, pre_tokenizers

DROP, CLEAN_SPACE, CJK, SPLIT_SPACE, PUNCT = 1, 2, 4, 8, 16
BPE_LETTER, BPE_NUMBER, BPE_SPACE, BPE_DIGIT = 1, 2, 4, 8


def bpe_class(digits, byte_level, c):
    """The byte-level BPE class bits of character c, read off the pre-tokenisers' splits."""
    f = 0
    if len(digits.pre_tokenize_str("a%sa" % c)) == 3:
        f |= BPE_DIGIT
    # In the GPT-2 pattern " ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+", c continues the piece
    # started by "a" only if it is a letter, by "1" only if a number, by "!" only if neither nor \s.
    joins = [len(byte_level.pre_tokenize_str(lead + c)) == 1 for lead in ("a", "1", "!")]
    if sum(joins) > 1:
        sys.exit("make_unicode_tables: U+%04X joins more than one of the GPT-2 pattern's classes" % ord(c))
    if joins[0]:
        f |= BPE_LETTER
    elif joins[1]:
        f |= BPE_NUMBER
    elif not joins[2]:
        # Whitespace: a run of it at the end is one piece, split from the letter before it.
        if len(byte_level.pre_tokenize_str("a%s%s" % (c, c))) != 2:
            sys.exit("make_unicode_tables: U+%04X is in no class of the GPT-2 pattern" % ord(c))
        f |= BPE_SPACE
    return f


def bert(clean=False, cjk=False, strip=False, lower=False):
    return normalizers.BertNormalizer(clean_text=clean, handle_chinese_chars=cjk, strip_accents=strip, lowercase=lower)


def hangul(cp):
    s = cp - 0xAC00
    out = [0x1100 + s // 588, 0x1161 + (s % 588) // 28]
    if s % 28:
        out.append(0x11A7 + s % 28)
    return "".join(map(chr, out))


def main():
    clean, cjk = bert(clean=True), bert(cjk=True)
    strip, lower = bert(strip=True), bert(lower=True)
    pre = pre_tokenizers.BertPreTokenizer()
    digits = pre_tokenizers.Digits(individual_digits=True)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    flags, strips, lowers, bpe = [], [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            flags.append(DROP)  # not representable in Python/Rust strings; C++ decodes them to U+FFFD
            bpe.append(0)  # bpe.h keeps malformed UTF-8 as single bytes of no class
            continue
        c = chr(cp)
        bpe.append(bpe_class(digits, byte_level, c))
        f = 0
        cleaned = clean.normalize_str(c)
        if cleaned == "":
            f |= DROP
        elif cleaned == " " and c != " ":
            f |= CLEAN_SPACE
        elif cleaned != c:
            sys.exit("make_unicode_tables: clean_text maps U+%04X to %r, which the C++ side cannot express" % (cp, cleaned))
        padded = cjk.normalize_str(c)
        if padded == " %s " % c:
            f |= CJK
        elif padded != c:
            sys.exit("make_unicode_tables: handle_chinese_chars maps U+%04X to %r" % (cp, padded))
        words = [w for w, _ in pre.pre_tokenize_str("a%sb" % c)]
        if words == ["a", "b"]:
            f |= SPLIT_SPACE
        elif words == ["a", c, "b"]:
            f |= PUNCT
        elif words != ["a%sb" % c]:
            sys.exit("make_unicode_tables: the pre-tokenizer splits 'a' U+%04X 'b' as %r" % (cp, words))
        flags.append(f)
        s = strip.normalize_str(c)
        if 0xAC00 <= cp <= 0xD7A3:
            if s != hangul(cp):
                sys.exit("make_unicode_tables: Hangul U+%04X strips to %r, not its algorithmic NFD" % (cp, s))
        elif s != c:
            strips.append((cp, s))
        low = lower.normalize_str(c)
        if low != c:
            lowers.append((cp, low))

    out = sys.stdout
    out.write("// Generated by scripts/make_unicode_tables.py from Hugging Face tokenizers %s (its\n"
              "// BertNormalizer and BertPreTokenizer run on every code point). Do not edit; regenerate.\n"
              % tokenizers.__version__)
    out.write("#pragma once\n\n#include <cstdint>\n\nnamespace zotorch::examples::unicode {\n\n")
    out.write('inline constexpr const char* kReference = "tokenizers %s";\n\n' % tokenizers.__version__)
    out.write("enum Flag : uint8_t {\n  kDrop = %d,        ///< removed by clean_text (controls, formats, U+FFFD, NUL)\n"
              "  kCleanSpace = %d,  ///< replaced by ' ' by clean_text\n"
              "  kCjk = %d,         ///< padded with spaces by handle_chinese_chars\n"
              "  kSplitSpace = %d,  ///< the pre-tokenizer splits on it and drops it\n"
              "  kPunct = %d,      ///< the pre-tokenizer isolates it as a word of its own\n};\n\n"
              % (DROP, CLEAN_SPACE, CJK, SPLIT_SPACE, PUNCT))
    runs = []
    for cp, f in enumerate(flags):
        if not runs or runs[-1][1] != f:
            runs.append((cp, f))
    out.write("/// Flag runs: entry i covers code points [first_i, first_{i+1}).\n")
    out.write("struct FlagRun {\n  uint32_t first;\n  uint8_t flags;\n};\n")
    out.write("inline constexpr FlagRun kFlagRuns[] = {\n")
    for i in range(0, len(runs), 6):
        out.write("    " + " ".join("{0x%X, %d}," % r for r in runs[i:i + 6]) + "\n")
    out.write("};\n\n")

    out.write("/// A code point and what it maps to (0 to 3 code points).\n")
    out.write("struct Mapping {\n  uint32_t cp;\n  uint8_t len;\n  uint32_t to[3];\n};\n\n")
    for name, doc, entries in (("kStripAccents", "strip_accents, where it changes the code point (Hangul excluded).", strips),
                               ("kLowercase", "lowercase, where it changes the code point.", lowers)):
        out.write("/// %s Sorted.\n" % doc)
        out.write("inline constexpr Mapping %s[] = {\n" % name)
        for i in range(0, len(entries), 3):
            row = []
            for cp, to in entries[i:i + 3]:
                if len(to) > 3:
                    sys.exit("make_unicode_tables: U+%04X maps to %d code points, more than the table holds" % (cp, len(to)))
                codes = [ord(x) for x in to] + [0] * (3 - len(to))
                row.append("{0x%X, %d, {0x%X, 0x%X, 0x%X}}," % (cp, len(to), *codes))
            out.write("    " + " ".join(row) + "\n")
        out.write("};\n\n")

    out.write("/// Byte-level BPE classes (examples/common/bpe.h): the GPT-2 pattern's \\p{L}, \\p{N} and \\s as the\n"
              "/// ByteLevel pre-tokenizer's regex engine reads them, and what Digits(individual_digits) isolates.\n")
    out.write("enum BpeClass : uint8_t {\n  kBpeLetter = %d,\n  kBpeNumber = %d,\n  kBpeSpace = %d,\n  kBpeDigit = %d,\n};\n\n"
              % (BPE_LETTER, BPE_NUMBER, BPE_SPACE, BPE_DIGIT))
    bpe_runs = []
    for cp, f in enumerate(bpe):
        if not bpe_runs or bpe_runs[-1][1] != f:
            bpe_runs.append((cp, f))
    out.write("/// BPE class runs: entry i covers code points [first_i, first_{i+1}) (FlagRun's layout).\n")
    out.write("inline constexpr FlagRun kBpeRuns[] = {\n")
    for i in range(0, len(bpe_runs), 6):
        out.write("    " + " ".join("{0x%X, %d}," % r for r in bpe_runs[i:i + 6]) + "\n")
    out.write("};\n\n")
    out.write("}  // namespace zotorch::examples::unicode\n")
    print("make_unicode_tables: %d flag runs, %d strip and %d lowercase mappings, %d BPE class runs"
          % (len(runs), len(strips), len(lowers), len(bpe_runs)), file=sys.stderr)


if __name__ == "__main__":
    main()
