#!/usr/bin/env python3
"""ctest docs_links: every reference from the project to its own documentation resolves.

Checked, relative to the repository root given as the only argument:
  1. README.md and docs/*.md: each relative markdown link [text](path#anchor) names an existing
     file or directory, and an anchor names a heading of the target (GitHub's slugs).
  2. Comments and text in include/, tests/, examples/, cmake/, benchmarks/, scripts/ and the top
     CMakeLists.txt: each docs/NAME.md names an existing file; a citation `docs/NAME.md "Section"`
     (or `README.md "Section"`) names a heading containing Section (case-insensitive); a bare
     NAME.md citation of a docs page must say docs/NAME.md.
  3. Nowhere in those files, README.md or docs/: a path into the team's notes outside the
     repository (../shared, shared/docs), which users do not have.
Standard library only. Exit status 1 and one line per problem when something does not resolve.
"""
import os
import re
import sys

CODE_DIRS = ("include", "tests", "examples", "cmake", "benchmarks", "scripts")
SKIP_DIRS = {".git", ".venv", "build", "out", "data", "__pycache__", "fixtures", "findings"}
OUTSIDE = re.compile(r"\.\./shared|shared/docs")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) or ![alt](target), target without spaces; an optional "title" is allowed.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# docs/NAME.md, optionally followed by a quoted section: docs/x.md "Section" or docs/x.md: "Section".
# Not inside a path or a string literal ("results.md" is a file a program writes).
DOC_CITATION = re.compile(r"(?<![\w./'\"-])((?:docs/)?[\w.-]+\.md)\b(?::?\s*\"([^\"\n]+)\")?")


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None


def markdown_lines(text):
    """The lines of a markdown text outside fenced code blocks, as (line number, line)."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


_headings = {}


def headings(path):
    """The heading texts of a markdown file and their anchors (duplicates numbered as GitHub does)."""
    if path not in _headings:
        texts, anchors, seen = [], set(), {}
        for _, line in markdown_lines(read_text(path) or ""):
            m = HEADING.match(line)
            if not m:
                continue
            texts.append(m.group(2))
            base = slug(m.group(2))
            count = seen.get(base, 0)
            anchors.add(base if count == 0 else "%s-%d" % (base, count))
            seen[base] = count + 1
        _headings[path] = (texts, anchors)
    return _headings[path]


def check_markdown(root, rel, problems):
    path = os.path.join(root, rel)
    text = read_text(path)
    for number, line in markdown_lines(text):
        if OUTSIDE.search(line):
            problems.append("%s:%d: refers outside the repository: %s" % (rel, number, line.strip()))
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            if file_part:
                if file_part.startswith("/"):
                    problems.append("%s:%d: absolute link %s; use a path relative to %s" % (rel, number, target, rel))
                    continue
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if os.path.relpath(resolved, root).split(os.sep)[0] == "..":
                    problems.append("%s:%d: link %s leaves the repository" % (rel, number, target))
                    continue
                if not os.path.exists(resolved):
                    problems.append("%s:%d: link %s: no such file %s" % (rel, number, target,
                                                                        os.path.relpath(resolved, root)))
                    continue
            else:
                resolved = path
            if anchor and resolved.endswith(".md"):
                if anchor not in headings(resolved)[1]:
                    problems.append("%s:%d: link %s: %s has no heading with the anchor #%s" %
                                    (rel, number, target, os.path.relpath(resolved, root), anchor))


def check_citations(root, rel, problems):
    text = read_text(os.path.join(root, rel))
    if text is None:
        return
    for number, line in enumerate(text.splitlines(), 1):
        if OUTSIDE.search(line):
            problems.append("%s:%d: refers outside the repository: %s" % (rel, number, line.strip()))
        for m in DOC_CITATION.finditer(line):
            name, section = m.group(1), m.group(2)
            if name.startswith("docs/"):
                target = name
            elif os.path.exists(os.path.join(root, "docs", name)) and not os.path.exists(os.path.join(root, name)):
                problems.append("%s:%d: cites %s; write docs/%s" % (rel, number, name, name))
                continue
            elif section is not None:
                target = name  # README.md "Section": relative to the root
            else:
                continue  # a file name the code writes or reads (results.md, TABLE.md, ...)
            path = os.path.join(root, target)
            if not os.path.isfile(path):
                problems.append("%s:%d: cites %s, which does not exist" % (rel, number, target))
                continue
            if section is not None:
                wanted = section.strip().lower()
                if not any(wanted in h.lower() for h in headings(path)[0]):
                    problems.append('%s:%d: cites %s "%s": no heading of %s contains "%s"' %
                                    (rel, number, target, section, target, section))


def files_under(root, top):
    for directory, dirs, files in os.walk(os.path.join(root, top)):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("build"))
        for name in sorted(files):
            path = os.path.join(directory, name)
            if os.path.getsize(path) <= 1 << 20:
                yield os.path.relpath(path, root)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_doc_links.py REPOSITORY_ROOT")
    root = os.path.abspath(sys.argv[1])
    problems = []
    docs = sorted(os.path.join("docs", n) for n in os.listdir(os.path.join(root, "docs")) if n.endswith(".md"))
    markdown = ["README.md"] + docs
    for rel in markdown:
        check_markdown(root, rel, problems)
    this = os.path.relpath(os.path.abspath(__file__), root)  # its own docstring shows the patterns
    code = ["CMakeLists.txt"] + [rel for top in CODE_DIRS for rel in files_under(root, top) if rel != this]
    for rel in code:
        check_citations(root, rel, problems)
    for line in problems:
        print(line)
    print("docs_links: %d markdown files, %d code files checked, %d problem(s)" %
          (len(markdown), len(code), len(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
