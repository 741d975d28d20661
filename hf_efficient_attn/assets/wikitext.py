"""Plain prose from MediaWiki markup: what a reader sees of an article's body, without its apparatus.

Templates, tables, references, files, categories, math and comments are dropped; links keep their
label; headings keep their title on a line of its own; list markers go. Everything from the first
back-matter section ("See also", "References", ...) on is cut. The result is the raw-text style of
WikiText-103: real sentences, with the odd leftover where a template stood inside one.
"""

from __future__ import annotations

import html
import re

BACK_MATTER = {
    "see also", "references", "notes", "footnotes", "further reading", "external links", "bibliography",
    "sources", "citations", "notes and references", "works cited", "primary sources", "secondary sources",
}
"""Section titles from which an article's remaining text is lists of sources and links, not prose."""

_DROPPED_ELEMENTS = re.compile(
    r"<(ref|math|gallery|timeline|syntaxhighlight|source|score|imagemap|chem|hiero|code|pre)\b[^>]*?/>"
    r"|<(ref|math|gallery|timeline|syntaxhighlight|source|score|imagemap|chem|hiero|code|pre)\b.*?</\2\s*>",
    re.DOTALL | re.IGNORECASE,
)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_NON_ARTICLE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|wikipedia|wp|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]")
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$")


def _drop_nested(text: str, opening: str, closing: str) -> str:
    """Remove every ``opening … closing`` span, nested ones included (templates, tables)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(opening, i):
            depth, i = depth + 1, i + len(opening)
        elif depth and text.startswith(closing, i):
            depth, i = depth - 1, i + len(closing)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def _resolve_links(text: str) -> str:
    """``[[target|label]]`` → label, ``[[target]]`` → target; file, category and interwiki links vanish."""
    out, i = [], 0
    while (start := text.find("[[", i)) != -1:
        out.append(text[i:start])
        depth, j = 0, start
        while j < len(text):
            if text.startswith("[[", j):
                depth, j = depth + 1, j + 2
            elif text.startswith("]]", j):
                depth, j = depth - 1, j + 2
                if depth == 0:
                    break
            else:
                j += 1
        inner = text[start + 2 : j - 2]
        if not _NON_ARTICLE_LINK.match(inner):
            out.append(_resolve_links(inner.split("|")[-1]) if "[[" in inner else inner.split("|")[-1])
        i = j
    out.append(text[i:])
    return "".join(out)


def wiki_to_text(markup: str) -> str:
    """The prose of one article's MediaWiki ``markup`` (see the module docstring)."""
    text = _COMMENT.sub("", markup)
    text = _DROPPED_ELEMENTS.sub("", text)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    text = _resolve_links(text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = re.sub(r"'{2,}", "", text)
    text = html.unescape(text).replace("\xa0", " ")

    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if heading := _HEADING.match(line):
            title = heading.group(2).strip()
            if title.lower() in BACK_MATTER:
                break
            lines += ["", title]
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        if line.startswith(("|", "!", "__")):
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)
        line = re.sub(r"\s+([,.;:])", r"\1", line)
        lines.append(re.sub(r"\s{2,}", " ", line).strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
