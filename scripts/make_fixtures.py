#!/usr/bin/env python3
"""Makes the reference fixtures the C++ loader and tokenizer tests compare against, with the Python
reference implementations (Hugging Face `tokenizers` and `transformers`), run once and committed:

  tests/fixtures/wordpiece_cases.json  token ids from tokenizers.Tokenizer.from_file(tokenizer.json)
                                       of all-MiniLM-L6-v2 for hand-written edge cases, WordNet
                                       glosses and example sentences (Princeton WordNet licence,
                                       from data/.cache of scripts/fetch-data.sh) and seeded random
                                       multi-script strings; with and without truncation.
  tests/fixtures/minilm_pooled.json    transformers' BertModel outputs for a few sentences: the
                                       mean-pooled and [CLS] vectors (fp32, float64 math not used).
  tests/fixtures/tiny-bert/            a 2-layer BERT with random weights (seed 0) saved as both
                                       model.safetensors and pytorch_model.bin, a small vocab, and
                                       its reference outputs: the loader test that runs everywhere.

Setup: .venv/bin/pip install tokenizers transformers safetensors (torch is already in .venv);
scripts/fetch-model.sh; scripts/fetch-data.sh. Run: .venv/bin/python scripts/make_fixtures.py
Extra check on any corpus without committing it: --texts data/polarity/*.tsv --wordpiece-out F.json,
then ZOTORCH_WORDPIECE_FIXTURES=F.json build-d/tests/zotorch_tests "[wordpiece]".
"""
import argparse
import glob
import hashlib
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HANDWRITTEN = [
    "Hello, world!",
    "this sequel's \" hero \" is n't half the man he was in 1999 , and the 2nd act drags .",
    "It's not a bad film -- it's a terrible one...",
    "Don't you think?! (Really.) [Maybe] {not} <html> a@b.com $5.00 100% #1 ~tilde~ ^caret^ `tick` |pipe|",
    "Crème brûlée, naïve café, façade, résumé, Ångström, Øresund, Dvořák, Łódź, Ærø.",
    "İstanbul and ISTANBUL and ıi — Turkish dotted and dotless i.",
    "Straße, STRASSE, ß, ẞ.",
    "ΑΘΗΝΑ Αθήνα, ΟΔΥΣΣΕΥΣ, Ελληνικά: σοφία ς Σ.",
    "Москва — столица России. Ёлка, ЙОГУРТ.",
    "東京は日本の首都です。中文分词测试：你好，世界！",
    "한국어 문장입니다. 서울특별시",
    "日本語のひらがなとカタカナ、そして漢字。",
    "emoji 😀👍🏽 and symbols ™ © ® € £ ¥ § ¶ † ‡ • … ‰ ′ ″",
    "fancy quotes “double” ‘single’ «guillemets» „low“ ‹angle›",
    "dashes - – — ― and ellipsis … and middle dot ·",
    "tabs\tand\nnewlines\r\nand  multiple   spaces",
    "non\u00a0breaking\u2009thin\u3000ideographic\u200bzero-width\u200dspaces\ufeffbom",
    "control\u0000chars\u0001here\u0007and\u001b[31mescape\u007f",
    "soft\u00adhyphen and combining e\u0301 a\u0300 o\u0308 n\u0303",
    "fullwidth ＡＢＣ １２３ ！？",
    "ligatures ﬁ ﬂ ﬀ and superscripts x² H₂O ½ ¼",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "x" * 250,
    "unbelievable unaffable ungooglable blorptastic zzyzx qwertyuiop asdfghjkl",
    "[CLS] special [SEP] tokens [MASK] in [PAD] text [UNK] and [cls] lowercase [MASK]x",
    "[[MASK]] [ MASK ] [MASK",
    "Numbers: 3.14159, 2,718, 1e-10, -42, +7, 0x1F, 1/2, 10:30pm, 2024-01-31.",
    "URLs http://example.com/path?q=1&r=2#frag and C:\\Windows\\path and ~/home/user",
    "Mixed123Alpha456 and under_scores and hyphen-ated-words and CamelCaseWords",
    "العربية نص عربي مع تشكيل: مَرْحَبًا",
    "עברית טקסט",
    "हिन्दी पाठ देवनागरी",
    "ภาษาไทย ไม่มีช่องว่าง",
    "Tiếng Việt có dấu: Hà Nội, Đà Nẵng, Huế.",
    "Polski: zażółć gęślą jaźń. Čeština: příliš žluťoučký kůň.",
    "",
    "   ",
    ".",
    "...!!!???",
    "a",
    "A B C D E F G",
    "ALL CAPS SHOUTING IN A MOVIE REVIEW!!!",
    "the movie's " * 80,
]

SCRIPTS = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
    (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F),
    (0x20A0, 0x20CF), (0x2100, 0x214F), (0x3000, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAD00),
    (0xF900, 0xF920), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F600, 0x1F64F), (0x20000, 0x20010),
]


def random_strings(n, seed):
    rng = random.Random(seed)
    words = ["movie", "film", "great", "bad", "the", "a", "performance", "script", "director", "boring"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                w = rng.choice(words)
                parts.append(w.upper() if rng.random() < 0.2 else w)
            else:
                lo, hi = rng.choice(SCRIPTS)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
            parts.append(rng.choice([" ", " ", " ", "", "\t", ", ", ". "]))
        s = "".join(parts)
        # Python strings cannot hold lone surrogates in UTF-8; the ranges above contain none.
        out.append(s)
    return out


def wordnet_sentences(n, seed):
    base = os.path.join(ROOT, "data", ".cache", "root", "usr", "share", "wordnet")
    paths = [os.path.join(base, "data." + pos) for pos in ("noun", "verb", "adj", "adv")]
    if not all(os.path.isfile(p) for p in paths):
        sys.exit("make_fixtures: WordNet not found under data/.cache; run scripts/fetch-data.sh first")
    texts = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                _, sep, gloss = line.partition(" | ")
                if sep:
                    texts.append(gloss.strip())
    texts.sort(key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    # Prefer glosses rich in what tokenizers get wrong: quotes, parentheses, digits, long words.
    rich = [t for t in texts if any(c in t for c in "\"'()0123456789;:-/")]
    return rich[: n // 2] + [t for t in texts if t not in rich][: n - n // 2]


def wordpiece_cases(tokenizer_json, texts, tokenizers_version):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
    tok.enable_truncation(max_length=16)
    truncated = [{"text": t, "max_length": 16, "ids": tok.encode(t).ids} for t in texts[:40]]
    return {
        "generator": "scripts/make_fixtures.py",
        "reference": "tokenizers %s, Tokenizer.from_file(tokenizer.json), add_special_tokens=True" % tokenizers_version,
        "cases": cases,
        "truncated": truncated,
    }


def write_lines_json(path, obj):
    """JSON with one list element per line: compact, yet a regenerated fixture diffs line by line."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        items = list(obj.items())
        for i, (key, value) in enumerate(items):
            f.write("%s: " % json.dumps(key))
            if isinstance(value, list):
                f.write("[\n" + ",\n".join(json.dumps(v, ensure_ascii=False) for v in value) + "\n]")
            else:
                f.write(json.dumps(value, ensure_ascii=False))
            f.write(",\n" if i + 1 < len(items) else "\n")
        f.write("}\n")


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def reference_outputs(model_dir, texts, max_length):
    import torch
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    pooled = mean_pool(hidden, batch["attention_mask"])
    return batch, hidden, pooled


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rounded(t):
    return [float("%.7g" % v) for v in t.reshape(-1).tolist()]


def make_tiny_bert(out_dir):
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel
    os.makedirs(out_dir, exist_ok=True)
    # A vocabulary with specials, whole words and ## continuations, enough to exercise WordPiece.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "'", "the", "a", "movie", "film",
             "is", "was", "not", "good", "bad", "great", "boring", "fun", "un", "##believ", "##able", "##s",
             "##ly", "##ing", "act", "##or", "plot", "very", "i", "it", "and", "but", "love", "hate", "s"]
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]",
                   "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}, f, indent=1)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=32, type_vocab_size=2,
                        pad_token_id=0, layer_norm_eps=1e-12, hidden_act="gelu")
    model = BertModel(config, add_pooling_layer=True).eval()
    # Random init gives LayerNorm weight 1 / bias 0 and zero biases: perturb them so the test sees
    # whether each is loaded into the right place.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    config.architectures = ["BertModel"]
    config.to_json_file(os.path.join(out_dir, "config.json"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    # The same weights under the "bert." prefix a BertForSequenceClassification checkpoint uses,
    # as torch.save writes it: the loader must strip the prefix and read the zip/pickle format.
    torch.save({"bert." + k: v for k, v in state.items()}, os.path.join(out_dir, "pytorch_model.bin"))
    texts = ["the movie was unbelievable !", "i love it", "a boring , bad film and a very bad plot",
             "the actors act greatly", "zzz"]
    from transformers import BertTokenizer
    tok = BertTokenizer(os.path.join(out_dir, "vocab.txt"), do_lower_case=True)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    expected = {
        "generator": "scripts/make_fixtures.py (transformers %s BertModel, random weights, seed 0)" % __import__("transformers").__version__,
        "texts": texts,
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "last_hidden_state": rounded(out.last_hidden_state),
        "pooler_output": rounded(out.pooler_output),
        "mean_pooled": rounded(mean_pool(out.last_hidden_state, batch["attention_mask"])),
        "hidden_size": config.hidden_size,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: scripts/fetch-model.sh's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--texts", nargs="*", help="TSV/text files to make extra wordpiece cases from (not committed)")
    ap.add_argument("--wordpiece-out", help="where --texts cases go")
    args = ap.parse_args()
    import tokenizers
    model = args.model or subprocess.check_output([os.path.join(ROOT, "scripts", "fetch-model.sh"), "--quiet"],
                                                  text=True).strip().splitlines()[-1]
    tokenizer_json = os.path.join(model, "tokenizer.json")

    if args.texts:
        texts = []
        for pattern in args.texts:
            for path in sorted(glob.glob(pattern)):
                with open(path, encoding="utf-8") as f:
                    texts += [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]
        out = args.wordpiece_out or "wordpiece_extra.json"
        with open(out, "w", encoding="utf-8") as f:
            json.dump(wordpiece_cases(tokenizer_json, texts, tokenizers.__version__), f, ensure_ascii=False)
        print(f"make_fixtures: {out}: {len(texts)} texts")
        return

    os.makedirs(args.out, exist_ok=True)
    texts = HANDWRITTEN + wordnet_sentences(260, seed=5) + random_strings(120, seed=7)
    path = os.path.join(args.out, "wordpiece_cases.json")
    write_lines_json(path, wordpiece_cases(tokenizer_json, texts, tokenizers.__version__))
    print(f"make_fixtures: {path}: {len(texts)} texts")

    sentences = ["an overlong , self-satisfied sequel that mistakes noise for wit .",
                 "A terrible, boring film: I walked out after twenty minutes!",
                 "Crème brûlée and naïve café owners in İstanbul.",
                 "東京 and 서울 are capitals",
                 "short",
                 "WordNet: a lexical database for English (Princeton University) " * 12]
    batch, hidden, pooled = reference_outputs(model, sentences, max_length=128)
    import transformers
    fixture = {
        "generator": "scripts/make_fixtures.py (transformers %s BertModel, eager attention, fp32)" % transformers.__version__,
        "model_sha256": sha256_file(os.path.join(model, "model.safetensors")),
        "max_length": 128,
        "texts": sentences,
        "input_ids": batch["input_ids"].tolist(),
        "hidden_size": hidden.shape[-1],
        "mean_pooled": rounded(pooled),
        "cls": rounded(hidden[:, 0]),
    }
    path = os.path.join(args.out, "minilm_pooled.json")
    with open(path, "w") as f:
        json.dump(fixture, f)
    print(f"make_fixtures: {path}")

    make_tiny_bert(os.path.join(args.out, "tiny-bert"))
    print(f"make_fixtures: {os.path.join(args.out, 'tiny-bert')}")


if __name__ == "__main__":
    main()
