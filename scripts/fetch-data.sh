#!/usr/bin/env bash
# Builds the fine-tuning demo's labelled text from Debian packages, without installing them:
# apt-get download + dpkg-deb -x into data/.cache/, then a fixed-seed split into data/<task>/*.tsv
# (text<TAB>label). Idempotent: a second run reuses the cache and rewrites identical files.
#
# Tasks (the data is not ours: it stays in data/, which git ignores; cite it when you publish):
#   polarity  Pang & Lee (2005) sentence polarity: 2,000 positive + 2,000 negative Rotten Tomatoes
#             snippets, the source SST-2 was built from; shipped by python3-pattern as
#             test/corpora/polarity-en-pang&lee2.csv. Split: 1,000 train / 500 dev / 1,000 test,
#             class-balanced, plus train_k16.tsv (16 per class, the papers' k-shot setting).
#   wordnet   WordNet 3.0 noun glosses (definitions without the quoted examples) labelled with their
#             lexicographer file, 8 classes (act animal artifact body food person plant substance);
#             from wordnet-base (Princeton WordNet licence). Same split sizes.
#   debian-descriptions  Debian package long descriptions, one package's joined into one line, for
#             finetune_lm --objective lm: read from what apt and dpkg already have (the Translation-en
#             lists apt keeps when its Acquire::Languages includes en, and /var/lib/dpkg/status for the
#             installed packages); nothing is downloaded, so the count depends on the machine. Split by a
#             seeded hash: 20% test, 10% dev, the rest train (text<TAB>package).
# Usage: scripts/fetch-data.sh [--out DIR] [--seed N]      (defaults: data/, 13)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/data"
seed=13
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "fetch-data.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

cache="$out/.cache"
mkdir -p "$cache/debs" "$cache/root"
pattern_csv="$cache/root/usr/share/doc/python3-pattern/test/corpora/polarity-en-pang&lee2.csv"
wordnet_dir="$cache/root/usr/share/wordnet"
lexnames_man="$cache/root/usr/share/man/man5/lexnames.5WN.gz"

fetch_pkg() {  # $1 = package, $2 = a file it must provide once extracted
  local pkg="$1" want="$2"
  [[ -e "$want" ]] && return 0
  if ! ls "$cache/debs/${pkg}"_*.deb >/dev/null 2>&1; then
    echo "fetch-data: downloading $pkg (apt-get download, not installed)"
    # apt-get download writes into the current directory; _apt cannot always read it, hence the
    # harmless "unsandboxed" warning when running as root.
    if ! (cd "$cache/debs" && apt-get download "$pkg" 2>/dev/null); then
      echo "fetch-data: apt-get download $pkg failed; refreshing the package lists once" >&2
      apt-get update -qq >/dev/null
      (cd "$cache/debs" && apt-get download "$pkg")
    fi
  fi
  dpkg-deb -x "$(ls "$cache/debs/${pkg}"_*.deb | head -n1)" "$cache/root"
  [[ -e "$want" ]] || { echo "fetch-data: $pkg does not contain $want" >&2; exit 1; }
}

fetch_pkg python3-pattern "$pattern_csv"
fetch_pkg wordnet-base "$wordnet_dir/data.noun"

python3 - "$out" "$seed" "$pattern_csv" "$wordnet_dir/data.noun" "$lexnames_man" <<'PY'
import csv, gzip, hashlib, os, re, sys

out, seed, pattern_csv, data_noun, lexnames_man = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]

def clean(text):
    # TSV cells: one line, no tabs; whitespace runs collapsed (the corpora pad punctuation with spaces).
    return re.sub(r"\s+", " ", text).strip()

def order_key(text):
    # A hash order instead of random.shuffle: identical on every Python version and platform.
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()

def split(by_label, sizes):
    """Class-balanced split: per label, hash-ordered texts go to test, dev, then train."""
    parts = {name: [] for name, _ in sizes}
    labels = sorted(by_label)
    for label in labels:
        texts = sorted(set(by_label[label]), key=order_key)
        start = 0
        for name, total in sizes:
            n = total // len(labels)
            if start + n > len(texts):
                sys.exit(f"fetch-data: label {label!r} has {len(texts)} texts, too few for the split")
            parts[name] += [(t, label) for t in texts[start:start + n]]
            start += n
    for name in parts:
        parts[name].sort(key=lambda row: order_key(row[0]))  # interleave the classes
    return parts

def write(task, parts, note):
    d = os.path.join(out, task)
    os.makedirs(d, exist_ok=True)
    for name, rows in parts.items():
        tmp = os.path.join(d, name + ".tsv.tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for text, label in rows:
                f.write(f"{text}\t{label}\n")
        os.replace(tmp, os.path.join(d, name + ".tsv"))
    with open(os.path.join(d, "SOURCE.txt"), "w", encoding="utf-8") as f:
        f.write(note)
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in parts.items())
    labels = sorted({label for rows in parts.values() for _, label in rows})
    print(f"fetch-data: {d}: {counts}; labels: {' '.join(labels)}")

def k_shot(train, k):
    seen, rows = {}, []
    for text, label in train:  # train is already hash-ordered
        if seen.get(label, 0) < k:
            seen[label] = seen.get(label, 0) + 1
            rows.append((text, label))
    return rows

sizes = [("test", 1000), ("dev", 500), ("train", 1000)]

# --- polarity: "1"/"-1" in column 0, the sentence in column 1 (UTF-8 with a BOM) ---
by_label = {"negative": [], "positive": []}
with open(pattern_csv, encoding="utf-8-sig", newline="") as f:
    for row in csv.reader(f):
        if len(row) != 2 or row[0] not in ("1", "-1"):
            sys.exit(f"fetch-data: unexpected row in {pattern_csv}: {row[:2]!r}")
        by_label["positive" if row[0] == "1" else "negative"].append(clean(row[1]))
parts = split(by_label, sizes)
parts["train_k16"] = k_shot(parts["train"], 16)
write("polarity", parts,
      "Sentence polarity dataset v1.0 subset (Pang & Lee, ACL 2005, 'Seeing stars'), as shipped by the\n"
      "Debian package python3-pattern (test/corpora/polarity-en-pang&lee2.csv): 2,000 positive and\n"
      "2,000 negative Rotten Tomatoes snippets. Made by scripts/fetch-data.sh --seed %d.\n"
      "Labels: positive, negative.\n" % seed)

# --- wordnet: lexicographer file number (field 2 of a data.noun line) -> name, from lexnames(5WN) ---
lexnames = {}
with gzip.open(lexnames_man, "rt", encoding="utf-8", errors="replace") as f:
    for line in f:
        m = re.match(r"^(\d\d)\t(\S+)\s*\t", line)
        if m:
            lexnames[m.group(1)] = m.group(2)
wanted = ["act", "animal", "artifact", "body", "food", "person", "plant", "substance"]
by_label = {name: [] for name in wanted}
with open(data_noun, encoding="utf-8") as f:
    for line in f:
        if line.startswith("  "):  # licence header
            continue
        head, sep, gloss = line.partition(" | ")
        category = lexnames.get(head.split()[1], "")
        label = category.split(".", 1)[1] if category.startswith("noun.") else ""
        if sep and label in by_label:
            definition = clean(gloss.split('; "')[0].split(';"')[0])
            if len(definition.split()) >= 3:
                by_label[label].append(definition)
parts = split(by_label, sizes)
parts["train_k16"] = k_shot(parts["train"], 16)
write("wordnet", parts,
      "WordNet 3.0 noun definitions (Princeton University, WordNet licence) from the Debian package\n"
      "wordnet-base, labelled with their lexicographer file (noun.<label>, see lexnames(5WN)).\n"
      "Made by scripts/fetch-data.sh --seed %d. Labels: %s.\n" % (seed, " ".join(wanted)))
PY

# --- debian-descriptions: the long descriptions apt and dpkg hold locally -------------------------
python3 - "$out" "$seed" /var/lib/dpkg/status /var/lib/apt/lists/*Translation-en* <<'PY'
import hashlib, lzma, gzip, os, re, sys

out, seed, sources = sys.argv[1], int(sys.argv[2]), [p for p in sys.argv[3:] if os.path.isfile(p)]

def read(path):
    if path.endswith(".lz4"):
        return None  # apt's lz4 lists need the lz4 tool; the uncompressed and xz/gz ones are read below
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()

descriptions = {}
for path in sources:
    text = read(path)
    if text is None:
        continue
    for para in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)", para, re.M)
        desc = re.search(r"^Description(?:-en)?: .*\n((?: .*(?:\n|$))+)", para, re.M)
        if not name or not desc:
            continue
        # The extended description: continuation lines start with a space; " ." is a blank line.
        lines = [line[1:].strip() for line in desc.group(1).split("\n") if line.startswith(" ")]
        body = re.sub(r"\s+", " ", " ".join("" if line == "." else line for line in lines)).strip()
        if len(body.split()) >= 8:
            descriptions.setdefault(name.group(1), body)

texts = {}
for name, body in descriptions.items():  # packages of one source often share a description
    texts.setdefault(body, name)
rows = sorted(texts.items(), key=lambda row: hashlib.sha256(f"{seed}:{row[0]}".encode("utf-8")).hexdigest())
if len(rows) < 100:
    sys.exit(f"fetch-data: only {len(rows)} package descriptions found in {sources}; debian-descriptions needs 100")
n_test, n_dev = len(rows) // 5, len(rows) // 10
parts = {"test": rows[:n_test], "dev": rows[n_test:n_test + n_dev], "train": rows[n_test + n_dev:]}
d = os.path.join(out, "debian-descriptions")
os.makedirs(d, exist_ok=True)
for split, part in parts.items():
    tmp = os.path.join(d, split + ".tsv.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for body, name in part:
            f.write(f"{body}\t{name}\n")
    os.replace(tmp, os.path.join(d, split + ".tsv"))
with open(os.path.join(d, "SOURCE.txt"), "w", encoding="utf-8") as f:
    f.write("Debian package long descriptions (each package's copyright holders; Debian archive), read from\n"
            "this machine's apt lists and dpkg status by scripts/fetch-data.sh --seed %d: %s.\n"
            "One package's extended description per line, text<TAB>package.\n" % (seed, ", ".join(sources)))
print(f"fetch-data: {d}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()) + f" (from {len(sources)} files)")
PY
