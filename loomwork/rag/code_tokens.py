"""Identifier-preserving tokens: the commands, options, paths, settings and identifiers in
a text, kept whole (`--no-cache-dir`, `os.path.join`, `pg_hba.conf`, `max_connections`).

Postgres full text splits such tokens (the English parser and stemmer turn
`max_connections` into `max` and `connect`), so a query for one matches every chunk that
mentions its parts. These tokens are added to the chunk's `tsv` whole and unstemmed
(`array_to_tsvector`), each prefixed with `code:` so that no English lexeme can equal
one, and matched exactly; `query.py` weighs both kinds of term by IDF. (One column and
its GIN index serve both: no migration, and chunks stored before get their code tokens
when their document is ingested again.)
"""

from __future__ import annotations

import re

__all__ = ["CODE_PREFIX", "code_lexemes", "code_tokens"]

CODE_PREFIX = "code:"

# Candidates: runs of characters other than whitespace, quotes, brackets and commas.
_CANDIDATE = re.compile(r"[^\s\"'`()\[\]{}<>,;|]+")
_EDGE = ".:;!?*&"  # stripped from both ends (a sentence's full stop, a trailing colon)
_INNER = re.compile(r"[A-Za-z0-9][_./=:\\$%@+-]+[A-Za-z0-9%]")  # a joiner between word chars
_OPTION = re.compile(r"^--?[A-Za-z][\w-]*(=.+)?$")
_PATH_OR_COMMAND = re.compile(r"^(~|\.{0,2})/\S|^\.[A-Za-z]|^\\[A-Za-z]")  # ~/.x, /etc, .x, \x
_LETTER = re.compile(r"[A-Za-z]")
MAX_TOKEN = 100


def _is_code(token: str) -> bool:
    return bool(
        2 <= len(token) <= MAX_TOKEN
        and _LETTER.search(token)
        and (_OPTION.match(token) or _PATH_OR_COMMAND.match(token) or _INNER.search(token))
    )


def _clean(token: str) -> str:
    # A leading dot is a dotfile's (`.pgpass`); a trailing one ends a sentence.
    return token.lstrip(_EDGE.replace(".", "")).rstrip(_EDGE)


def code_tokens(text: str, *, lowered: bool = True) -> list[str]:
    """The distinct identifier-like tokens of `text`, each also lowercased, in first-seen
    order: options (`-Fc`, `--jobs=4`), paths (`~/.pgpass`), backslash commands (`\\watch`)
    and words joined by `_ . / = : - \\ $ % @ +` (`pg_dump`, `max_connections=100`,
    `os.path.join`); with each side of an `=` and a path's last part when they are such
    tokens too. Plain words are left to the English full text. Stored chunks keep both
    forms (`lowered`); a query's tokens are taken as written, so a lowercase one matches any
    case and one with capitals only itself (`-C` is not `-c`)."""
    seen: dict[str, None] = {}
    for match in _CANDIDATE.finditer(text):
        token = _clean(match.group())
        if not _is_code(token):
            continue
        parts = [token]
        if "=" in token.strip("="):
            parts.extend(_clean(p) for p in token.split("="))
        if "/" in token.rstrip("/"):
            parts.append(token.rstrip("/").rsplit("/", 1)[1])
        for part in parts:
            if part is token or _is_code(part):
                seen.setdefault(part)
                if lowered:
                    seen.setdefault(part.lower())
    return list(seen)


def code_lexemes(text: str, *, lowered: bool = True) -> list[str]:
    """`code_tokens(text)` as the lexemes stored in (and searched for in) a chunk's `tsv`."""
    return [CODE_PREFIX + token for token in code_tokens(text, lowered=lowered)]
