#!/usr/bin/env python3
"""Makes the token ids the C++ byte-level BPE tokenizer (examples/common/bpe.h) is tested against,
with Hugging Face `tokenizers` on SmolLM2's tokenizer.json as the oracle:

  tests/fixtures/bpe_cases.jsonl   committed: hand-written edge cases (whitespace of every kind,
                                   contractions, digit runs, CJK, emoji and ZWJ sequences, combining
                                   marks, Arabic, Devanagari, the special tokens), seeded random
                                   multi-script strings, and WordNet 3.0 glosses and example
                                   sentences (Princeton WordNet licence, tests/fixtures/README.md).
  data/bpe/polarity.jsonl          not committed (the data is not ours): every sentence of
                                   data/polarity/*.tsv (scripts/fetch-data.sh).
  data/bpe/debian.jsonl            not committed: the long descriptions of the Debian packages
                                   installed here (/var/lib/dpkg/status), one paragraph per case.
  data/bpe/random.jsonl            with --random N: N random strings of any code points.

Each file: a first line {"meta": {...}} (the tokenizers version and tokenizer.json's sha256), then
one {"text": ..., "ids": [...]} per line; ids from encode(text, add_special_tokens=True), which the
script checks adds nothing (the post-processor is null). Where decode(ids, skip_special_tokens=False)
is not the text (SmolLM2's vocabulary has no symbol for 21 bytes, e.g. 0x04 and 0xF1-0xFF, which the
model drops), the case also has "decoded": what tokenizers decodes.
tests/test_bpe.cpp checks the committed file and every data/bpe/*.jsonl present.

Setup: .venv/bin/pip install tokenizers; scripts/fetch-data.sh; scripts/fetch-llm.sh --tokenizer-only.
Run:   .venv/bin/python scripts/make_bpe_fixtures.py [--tokenizer DIR/tokenizer.json] [--random 20000]
"""
import argparse
import hashlib
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_fixtures  # noqa: E402  (its hand-written texts, random strings and WordNet reader)

# Cases aimed at the byte-level pipeline: GPT-2's pattern, the Digits split, the special tokens.
BPE_HANDWRITTEN = [
    "Hello world, it's 2026!",
    "I'm sure you'll see they've said we'd go, isn't it? 'twas 'Tis",
    "CAPS: I'M, YOU'LL, THEY'VE, IT'S, WE'D, DON'T, 'S 'T 'RE 'VE 'M 'LL 'D",
    "quote 's 't 're 've 'm 'll 'd at the start, ''s doubled, '''s tripled, ' s spaced",
    "it’s curly, it‘s reversed, it`s backtick",
    "12345678901234567890",
    "1 22 333 4444 55555, 3.14159, -0.5e-10, 1,000,000 and 1_000",
    "x1y22z333 a1 1a 9th 21st 2nd",
    "Arabic-Indic ٠١٢٣٤٥٦٧٨٩ Devanagari ०१२३४५६७८९ fullwidth ０１２３ superscript ²³ fractions ½¾ roman Ⅻ",
    "circled ① ② ⑩ and Thai ๑๒๓",
    "  leading two spaces",
    "trailing two spaces  ",
    "trailing one space ",
    " single leading space",
    "a  b   c    d     e",
    "a\tb\t\tc\t\t\td",
    "line\nbreak\n\nparagraph\n\n\n",
    "crlf\r\nline\r\n\r\nend\r\n",
    "cr only\rhere\r\r",
    "vertical\x0btab and form\x0cfeed",
    "mixed \t\n \r\n\t  whitespace \n\t x",
    " \n ",
    "\n",
    "\t",
    " ",
    "  ",
    "nbsp\u00a0between\u00a0\u00a0twice and trailing\u00a0",
    "narrow\u202fnbsp, thin\u2009space, hair\u200aspace, em\u2003space, figure\u2007space",
    "ideographic\u3000space\u3000\u3000twice",
    "next-line\u0085char and line\u2028separator and paragraph\u2029separator",
    "ogham\u1680space and medium math\u205fspace",
    "zero width\u200bspace, joiner\u200d, non-joiner\u200c, word joiner\u2060, bom\ufeff",
    "file separators \x1c\x1d\x1e\x1f are not whitespace here",
    "NUL\x00in the middle and DEL\x7f and bell\x07",
    "CJK: 我们的模型需要一个分词器。日本語のテキスト、カタカナ。한국어 텍스트입니다.",
    "emoji: 😀😃😄 👍🏽👍🏿 🇫🇷🇯🇵 ❤️ ✔︎ ☃",
    "ZWJ families: 👨‍👩‍👧‍👦 👩‍❤️‍👨 🏳️‍🌈 🧑🏽‍💻",
    "combining: e\u0301 a\u0300 o\u0308 n\u0303 and stacked a\u0301\u0302\u0303\u0304",
    "a lone combining mark \u0301 after a space, and \u0301\u0301 two",
    "Arabic: مَرْحَبًا بِكُمْ في النموذج ١٢٣",
    "Hindi: नमस्ते दुनिया, यह एक परीक्षण है। ४२",
    "Hebrew with niqqud: שָׁלוֹם עוֹלָם",
    "Thai: สวัสดีครับ ภาษาไทยไม่มีช่องว่าง",
    "Greek final sigma: ΟΔΥΣΣΕΥΣ Οδυσσεύς",
    "math: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ ≠ ∏ⱼ bⱼ; 𝔸𝔹ℂ 𝒜ℬ𝒞",
    "4-byte letters: 𝐀𝐁𝐂 𐌰𐌱𐌲 𠀀𠀁 and music 𝄞",
    "private use \ue000\uf8ff and noncharacters \ufdd0\ufffe\uffff and max \U0010ffff",
    "replacement char \ufffd in valid text",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "<|endoftext|><|endoftext|>text between<|endoftext|>",
    "<|im_start|><|im_end|> adjacent specials",
    "<|im_start almost special |im_end|> and <|endoftext| broken",
    " <|im_start|> spaced specials <|im_end|> ",
    "code: def f(x):\n    return x ** 2  # square\n\tif x != 0: pass",
    "JSON: {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "URL https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "e-mail first.last+tag@example.co.uk, @handle #hashtag $100 50% 3/4",
    "punctuation runs !!! ??? ... --- *** ### ;;; ::: ''' \"\"\" ((( )))",
    " !!! space then punctuation, and ' quote-space",
    "Ünïcödé Ťëxt wïth dïäçrïtïçs, Ångström, Øre, Łódź, ß, ẞ, İı",
    "fullwidth ＡＢＣ ａｂｃ and halfwidth ｶﾀｶﾅ",
    "longword" * 40,
    "9" * 200,
    " " * 37 + "x" + " " * 37,
    "\n" * 20 + "end",
    "a" + "\u0301" * 30,
    "bytes without a symbol: \x04\x06\x13\x14\x16\x1d and planes 4-16: \U00040000 \U000f0000 \U00100000 ok",
    " \x1d\x1c between \x1d spaces",
]


def random_bpe_strings(n, seed):
    """Strings drawn from a palette of every class the pre-tokenizers tell apart."""
    rng = random.Random(seed)
    palette = list("aZ09 '\t\n\r.,!-_") + [
        "\u00a0", "\u0085", "\u1680", "\u2000", "\u2009", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
        "\u200b", "\u200d", "\ufeff", "\x1c", "\x0b", "\x0c", "é", "ß", "ñ", "\u0301", "\u0308", "Ω", "ж", "ع",
        "\u0660", "\u0966", "²", "½", "Ⅻ", "①", "東", "京", "カ", "한", "😀", "👍", "🏽", "🇫", "🇷", "\u2764", "\ufe0f",
        "𝐀", "𐌰", "\U00011de0", "\U00016ff4", "\U0001fbf0", "s", "t", "re", "ve", "m", "ll", "d", "S", "LL",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|", "|>",
    ]
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(palette) for _ in range(rng.randint(1, 24))))
    return out


def random_code_point_strings(n, seed):
    """Half palette strings, half any code points (mostly below U+3000, 30% from all planes)."""
    rng = random.Random(seed)
    out = random_bpe_strings(n // 2, seed)

    def code_point():
        while True:
            c = rng.randint(0, 0x10FFFF) if rng.random() < 0.3 else rng.randint(0, 0x3000)
            if not 0xD800 <= c < 0xE000:
                return chr(c)
    for _ in range(n - n // 2):
        out.append("".join(code_point() if rng.random() < 0.5 else rng.choice(" \t\n'sa1 ")
                           for _ in range(rng.randint(1, 40))))
    return out


def tokenizer_from_fetch_llm():
    script = os.path.join(ROOT, "scripts", "fetch-llm.sh")
    if not os.path.isfile(script):
        sys.exit("make_bpe_fixtures: no scripts/fetch-llm.sh; pass --tokenizer DIR/tokenizer.json")
    out = subprocess.run([script, "--tokenizer-only"], check=True, stdout=subprocess.PIPE, text=True).stdout
    return os.path.join(out.strip().splitlines()[-1], "tokenizer.json")


def polarity_texts():
    texts = []
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        path = os.path.join(ROOT, "data", "polarity", name)
        if not os.path.isfile(path):
            sys.exit("make_bpe_fixtures: %s is missing; run scripts/fetch-data.sh first" % path)
        with open(path, encoding="utf-8") as f:
            texts += [line.rstrip("\n").rsplit("\t", 1)[0] for line in f if line.strip()]
    return sorted(set(texts))


def debian_texts(path="/var/lib/dpkg/status"):
    """Long package descriptions as dpkg stores them: continuation lines, " ." for blank lines."""
    texts, current, in_desc = [], [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Description:"):
                in_desc, current = True, []
                continue
            if in_desc and line.startswith(" "):
                body = line[1:].rstrip("\n")
                current.append("" if body == "." else body)
                continue
            if in_desc and current:
                texts += [p.strip("\n") for p in "\n".join(current).split("\n\n") if p.strip()]
            in_desc = False
    if in_desc and current:
        texts += [p.strip("\n") for p in "\n".join(current).split("\n\n") if p.strip()]
    return sorted(set(texts))


def write_cases(path, tok, texts, meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lossy = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for text in texts:
            enc = tok.encode(text, add_special_tokens=True)
            if enc.ids != tok.encode(text, add_special_tokens=False).ids:
                sys.exit("make_bpe_fixtures: the post-processor adds tokens; bpe.h implements none")
            case = {"text": text, "ids": enc.ids}
            decoded = tok.decode(enc.ids, skip_special_tokens=False)
            if decoded != text:
                case["decoded"] = decoded  # bytes without a vocabulary symbol were dropped
                lossy += 1
            f.write(json.dumps(case, ensure_ascii=False, separators=(",", ":")) + "\n")
    print("make_bpe_fixtures: %d cases (%d not decoding back to the text) -> %s (%d bytes)"
          % (len(texts), lossy, path, os.path.getsize(path)), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", help="tokenizer.json (default: scripts/fetch-llm.sh --tokenizer-only's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "bpe_cases.jsonl"))
    ap.add_argument("--extra-dir", default=os.path.join(ROOT, "data", "bpe"),
                    help="where the uncommitted polarity and Debian cases go ('' to skip them)")
    ap.add_argument("--random", type=int, default=0,
                    help="also write N random strings of any code points to EXTRA_DIR/random.jsonl")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer
    path = args.tokenizer or tokenizer_from_fetch_llm()
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    tok = Tokenizer.from_file(path)
    meta = {"tokenizers": tokenizers.__version__, "tokenizer_json_sha256": sha}

    committed = BPE_HANDWRITTEN + make_fixtures.HANDWRITTEN + random_bpe_strings(300, seed=11) + \
        make_fixtures.random_strings(200, seed=12) + make_fixtures.wordnet_sentences(1800, seed=13)
    seen = set()
    committed = [t for t in committed if not (t in seen or seen.add(t))]
    write_cases(args.out, tok, committed, dict(meta, source="scripts/make_bpe_fixtures.py"))
    if args.extra_dir:
        write_cases(os.path.join(args.extra_dir, "polarity.jsonl"), tok, polarity_texts(),
                    dict(meta, source="data/polarity (Pang & Lee 2005)"))
        write_cases(os.path.join(args.extra_dir, "debian.jsonl"), tok, debian_texts(),
                    dict(meta, source="/var/lib/dpkg/status long descriptions"))
        if args.random:
            write_cases(os.path.join(args.extra_dir, "random.jsonl"), tok, random_code_point_strings(args.random, 21),
                        dict(meta, source="make_bpe_fixtures.py --random %d" % args.random))


if __name__ == "__main__":
    main()
