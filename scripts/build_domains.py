"""Rebuild the bundled demo corpora in ``domains/`` from Debian packages.

The three domains are samples of human-written text that installs by package name:

- ``literature``: Jane Austen's six novels, Debian ``r-cran-janeaustenr`` (an R lazy-load
  database; read with the PyPI package ``rdata``, which the project itself does not need);
- ``cs``: the Python 3.11 documentation, Debian ``python3.11-doc`` (Sphinx HTML);
- ``bio``: Gene Ontology term definitions, Debian ``r-bioc-go.db`` (SQLite, table ``go_term``).

Get the packages without installing them, then run this script with a Python that has ``rdata``::

    apt-get update
    mkdir -p /tmp/pkgs && cd /tmp/pkgs
    apt-get download r-cran-janeaustenr python3.11-doc r-bioc-go.db
    for f in *.deb; do dpkg-deb -x "$f" /tmp/pkgs/root; done
    python3 -m venv /tmp/rdata-venv && /tmp/rdata-venv/bin/pip install rdata
    /tmp/rdata-venv/bin/python scripts/build_domains.py --packages /tmp/pkgs/root

Output (deterministic for the same packages, target size and seed): one
``domains/<name>/<name>.txt.gz`` per domain, UTF-8, one document per paragraph or entry,
documents separated by exactly one blank line; and ``domains/<name>/card.toml``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import re
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

AUSTEN_DIR = "usr/lib/R/site-library/janeaustenr/data"
PYDOC_DIR = "usr/share/doc/python3.11/html"
GO_SQLITE = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"

# Parts of the Python docs that are prose written for readers; "What's New", the C API and the
# generated indexes are left out (changelog lists and symbol tables, not explanations).
PYDOC_PARTS = ("tutorial", "reference", "library", "howto", "faq", "using", "glossary.html")

MIN_WORDS = 6  # drops headings, chapter titles and table cells that are not prose
MAX_CODE_LINES = 12  # "small code lines": longer listings are dropped
MAX_CODE_CHARS = 600


@dataclass(frozen=True)
class Source:
    """One package a domain is built from."""

    package: str
    version: str
    file: str


@dataclass(frozen=True)
class DomainSpec:
    """What the card says about a domain besides its sizes."""

    name: str
    description: str
    licence: str
    attribution: str
    sources: tuple[Source, ...]


def debian_version(root: Path, package: str) -> str:
    """The package version, read from the first line of its extracted Debian changelog."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    with gzip.open(changelog, "rt", encoding="utf-8") as fh:
        first = fh.readline()
    match = re.match(r"\S+ \(([^)]+)\)", first)
    if match is None:
        raise ValueError(f"cannot read the version from {changelog}")
    return match.group(1)


def clean_prose(text: str) -> str:
    """Collapse all whitespace (line breaks included) to single spaces."""
    return " ".join(text.split())


# --- literature -------------------------------------------------------------------------------


# Chapter and volume headings are not prose; neither is the title page before the first chapter.
# Short paragraphs of dialogue ("Yes, sir.") are kept: they are how the novels are written.
AUSTEN_HEADING = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume) [IVXLC\d]+\.?$")
AUSTEN_END = frozenset({"Finis", "FINIS", "THE END"})


def read_rdb_object(rdb: bytes, offset: int, length: int) -> object:
    """One object of an R lazy-load database: 4-byte length, then zlib-compressed XDR."""
    import rdata  # only the build needs it; see the module docstring

    chunk = rdb[offset : offset + length]
    (size,) = struct.unpack(">I", chunk[:4])
    body = zlib.decompress(chunk[4:])
    assert len(body) == size, "truncated lazy-load entry"
    return rdata.conversion.convert(rdata.parser.parse_data(body))


def book_paragraphs(lines: list[str]) -> Iterator[str]:
    """Paragraphs of one novel (lines joined), from its first chapter heading on."""
    started = False
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line)
            continue
        if not paragraph:
            continue
        text = clean_prose(" ".join(paragraph))
        paragraph = []
        if AUSTEN_HEADING.match(text):
            started = True
        elif started and text not in AUSTEN_END and text != text.upper():
            yield text


def austen_documents(root: Path) -> Iterator[str]:
    """Paragraphs of the six novels, in the package's order (book by book)."""
    import rdata

    data = root / AUSTEN_DIR
    index = rdata.read_rds(data / "Rdata.rdx")["variables"]
    rdb = (data / "Rdata.rdb").read_bytes()
    for book in sorted(index, key=lambda name: int(index[name][0])):
        offset, length = (int(v) for v in index[book])
        yield from book_paragraphs([str(line) for line in read_rdb_object(rdb, offset, length)])


# --- cs ---------------------------------------------------------------------------------------


class SphinxText(HTMLParser):
    """Blocks of text from the main body of a Sphinx page: ("prose" | "code" | "sig", text)."""

    BLOCKS = frozenset(
        {"p", "pre", "dt", "dd", "li", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "div"}
    )
    SKIP = frozenset({"script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self._main_depth = 0  # > 0 inside <div role="main">
        self._skip_depth = 0  # > 0 inside a permalink anchor or a script
        self._kind: list[str] = []
        self._buffer: list[str] = []

    def _flush(self) -> None:
        text = "".join(self._buffer)
        self._buffer = []
        kind = self._kind[-1] if self._kind else "prose"
        if text.strip():
            self.blocks.append((kind, text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if self._main_depth == 0:
            if tag == "div" and attr.get("role") == "main":
                self._main_depth = 1
            return
        if tag == "div":
            self._main_depth += 1
        if self._skip_depth or tag in self.SKIP or "headerlink" in (attr.get("class") or ""):
            self._skip_depth += tag != "br"
            return
        if tag in self.BLOCKS:
            self._flush()
            kind = {"pre": "code", "dt": "sig"}.get(tag, "prose")
            self._kind.append("heading" if tag[0] == "h" and tag[1:].isdigit() else kind)

    def handle_endtag(self, tag: str) -> None:
        if self._main_depth == 0:
            return
        if self._skip_depth:
            self._skip_depth -= 1
        elif tag in self.BLOCKS:
            self._flush()
            if self._kind:
                self._kind.pop()
        if tag == "div":
            self._main_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._main_depth and not self._skip_depth:
            self._buffer.append(data)


def small_code(text: str) -> str | None:
    """A short listing without blank lines, or None when it is too long to keep."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines() if line.strip()]
    if len(lines) > MAX_CODE_LINES or sum(map(len, lines)) > MAX_CODE_CHARS:
        return None
    return "\n".join(lines)


def page_documents(blocks: list[tuple[str, str]]) -> Iterator[str]:
    """Prose paragraphs; a signature prefixes the paragraph after it, small code follows it."""
    current: str | None = None
    signature = ""
    for kind, text in blocks:
        if kind == "code":
            code = small_code(text)
            if code and current is not None:
                current += "\n" + code
            continue
        if current is not None:
            yield current
            current = None
        if kind == "heading":
            signature = ""
        elif kind == "sig":
            signature = clean_prose(text) + " "
        elif len(text.split()) >= MIN_WORDS:
            current, signature = signature + clean_prose(text), ""
    if current is not None:
        yield current


def pydoc_documents(root: Path) -> Iterator[str]:
    """Documents of the selected parts of the Python docs, pages in sorted path order."""
    html = root / PYDOC_DIR
    pages: list[Path] = []
    for part in PYDOC_PARTS:
        path = html / part
        pages.extend(sorted(path.rglob("*.html")) if path.is_dir() else [path])
    for page in pages:
        parser = SphinxText()
        parser.feed(page.read_text(encoding="utf-8"))
        parser.close()
        yield from page_documents(parser.blocks)


# --- bio --------------------------------------------------------------------------------------

# Curators write most GO definitions by hand; the "regulation of X" family is generated from one
# template ("Any process that modulates the frequency, rate or extent of X"), so it is left out.
GO_TEMPLATED = re.compile(r"^(positive |negative )?regulation of ")


def go_documents(root: Path) -> Iterator[str]:
    """``term: definition`` for every GO term with a hand-written definition, by GO id."""
    uri = f"file:{root / GO_SQLITE}?mode=ro"
    with sqlite3.connect(uri, uri=True) as con:
        rows = con.execute(
            "SELECT term, definition FROM go_term WHERE definition IS NOT NULL ORDER BY go_id"
        ).fetchall()
    for term, definition in rows:
        if not GO_TEMPLATED.match(term):
            yield f"{clean_prose(term)}: {clean_prose(definition)}"


# --- sampling and writing ---------------------------------------------------------------------


def sample_documents(docs: list[str], target_bytes: int, seed: int) -> list[str]:
    """A seeded random subset of about ``target_bytes`` UTF-8 bytes, kept in source order."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    total = 0
    for i in order:
        if total >= target_bytes:
            break
        chosen.append(i)
        total += len(docs[i].encode("utf-8")) + 2  # the blank line that separates documents
    return [docs[i] for i in sorted(chosen)]


def write_corpus(path: Path, docs: list[str]) -> bytes:
    """Write gzip (mtime 0, no file name, so the bytes are reproducible); return the text."""
    assert all(d and "\n\n" not in d for d in docs), "a document must not contain a blank line"
    text = ("\n\n".join(docs) + "\n").encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(text)
    return text


def toml_str(value: str) -> str:
    """A TOML basic string (JSON-style escapes are valid TOML for these characters)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def card_toml(spec: DomainSpec, text: bytes, n_docs: int, gz_bytes: int, build_args: str) -> str:
    """The domain card: what it is, where it came from, under which licence, how big."""
    lines = [
        f"name = {toml_str(spec.name)}",
        f"description = {toml_str(spec.description)}",
        f"licence = {toml_str(spec.licence)}",
        f"attribution = {toml_str(spec.attribution)}",
        f"file = {toml_str(spec.name + '.txt.gz')}",
        'format = "UTF-8 text, gzip; one document per paragraph, separated by one blank line"',
        f"built_by = {toml_str('scripts/build_domains.py ' + build_args)}",
        "",
        "[sizes]",
        f"bytes = {len(text)}",
        f"gzip_bytes = {gz_bytes}",
        f"documents = {n_docs}",
        f"sha256 = {toml_str(hashlib.sha256(text).hexdigest())}",
    ]
    for src in spec.sources:
        lines += [
            "",
            "[[sources]]",
            f"package = {toml_str(src.package)}",
            f"version = {toml_str(src.version)}",
            f"file = {toml_str(src.file)}",
        ]
    return "\n".join(lines) + "\n"


def domain_specs(root: Path) -> dict[str, tuple[DomainSpec, Callable[[Path], Iterator[str]]]]:
    """The three domains, each with the function that reads its documents."""

    def src(package: str, file: str) -> tuple[Source, ...]:
        return (Source(package, debian_version(root, package), file),)

    return {
        "literature": (
            DomainSpec(
                "literature",
                "Paragraphs of Jane Austen's six novels (1811-1817): the general domain.",
                "Public domain (the novels); the janeaustenr package is MIT-licensed.",
                "Jane Austen; text as packaged by Julia Silge in the R package janeaustenr.",
                src("r-cran-janeaustenr", f"/{AUSTEN_DIR}/Rdata.rdb"),
            ),
            austen_documents,
        ),
        "cs": (
            DomainSpec(
                "cs",
                "Paragraphs of the Python 3.11 documentation (tutorial, language and library "
                "reference, HOWTOs, FAQ, glossary, setup), with short code examples.",
                "PSF License Agreement for Python 3.11 (documentation included).",
                "Copyright 2001-2023 Python Software Foundation; All Rights Reserved.",
                src("python3.11-doc", f"/{PYDOC_DIR}/"),
            ),
            pydoc_documents,
        ),
        "bio": (
            DomainSpec(
                "bio",
                "Gene Ontology term definitions ('term: definition'), the templated "
                "'regulation of' family left out.",
                "Gene Ontology data: CC BY 4.0; the GO.db package is Artistic-2.0.",
                "Gene Ontology Consortium (go-basic.obo, 2022-07-01) via Bioconductor GO.db.",
                src("r-bioc-go.db", f"/{GO_SQLITE}"),
            ),
            go_documents,
        ),
    }


def build(root: Path, out: Path, target_mb: float, seed: int, names: list[str]) -> None:
    """Build the named domains under ``out`` and print their sizes."""
    specs = domain_specs(root)
    for name in names:
        spec, read = specs[name]
        docs = sample_documents(list(read(root)), int(target_mb * 1_000_000), seed)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        corpus = folder / f"{name}.txt.gz"
        text = write_corpus(corpus, docs)
        gz_bytes = corpus.stat().st_size
        build_args = f"--target-mb {target_mb:g} --seed {seed}"
        card = card_toml(spec, text, len(docs), gz_bytes, build_args)
        (folder / "card.toml").write_text(card, encoding="utf-8")
        print(f"{name}: {len(docs)} documents, {len(text) / 1e6:.2f} MB ({gz_bytes / 1e6:.2f} gz)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--packages", type=Path, required=True, help="root the .deb files were extracted into"
    )
    parser.add_argument("--out", type=Path, default=Path("domains"), help="where domains live")
    parser.add_argument("--target-mb", type=float, default=1.5, help="text size per domain, MB")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    parser.add_argument(
        "--only", nargs="*", default=["literature", "cs", "bio"], help="domains to build"
    )
    args = parser.parse_args()
    build(args.packages, args.out, args.target_mb, args.seed, args.only)


if __name__ == "__main__":
    main()
