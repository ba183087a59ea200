"""Code tokens: commands, options, paths, settings and identifiers kept whole for full-text
search, and the rerank guard that keeps a passage holding them in the top k."""

from __future__ import annotations

from loomwork.rag.code_tokens import code_tokens
from loomwork.rag.models import Chunk, ScoredChunk
from loomwork.rag.rerank import keep_exact_matches


def test_commands_options_paths_and_identifiers_stay_whole() -> None:
    text = (
        "Run git rebase -i, or pip install --no-cache-dir. Join paths with os.path.join(a, b);"
        " set max_connections=100 in postgresql.conf, list hosts in pg_hba.conf and"
        " passwords in ~/.pgpass. pg_dump -Fc mydb > db.sql; in psql, \\watch 2."
    )
    tokens = code_tokens(text)
    for token in [
        "-i",
        "--no-cache-dir",
        "os.path.join",
        "max_connections=100",
        "max_connections",  # one side of `=`, as a question names it
        "postgresql.conf",
        "pg_hba.conf",
        "~/.pgpass",
        ".pgpass",  # a path's last part
        "pg_dump",
        "-Fc",
        "-fc",  # lowercased too
        "db.sql",
        "\\watch",
    ]:
        assert token in tokens, token
    # Plain words, numbers and punctuation are left to the English full text.
    for word in ["Run", "git", "rebase", "paths", "100", "mydb", "2", ">", "in"]:
        assert word not in tokens, word


def test_sentence_punctuation_is_not_part_of_a_token() -> None:
    assert code_tokens("Edit pg_hba.conf. Then run pg_ctl reload: done") == [
        "pg_hba.conf",
        "pg_ctl",
    ]


def passage(id: str, text: str) -> ScoredChunk:
    return ScoredChunk(chunk=Chunk(id=id, document_id=id, position=0, text=text), score=0.5)


def test_rerank_keeps_the_exact_match_in_the_top_k() -> None:
    exact = passage("exact", "pg_restore -c --clean: drop the objects before restoring them.")
    others = [passage(f"p{i}", f"Restoring a backup, part {i}.") for i in range(4)]
    first_stage = [others[0], exact, *others[1:]]
    # A reranker judging meaning put the exact passage last.
    reranked = [*others, exact]
    kept = keep_exact_matches("what does pg_restore --clean do", first_stage, reranked, 3)
    assert [c.chunk.id for c in kept] == ["p0", "p1", "exact", "p2", "p3"]
    # Outside the first stage's top k it was not promised a place; without code tokens in
    # the query there is nothing exact to keep.
    assert keep_exact_matches("pg_restore --clean", [*others, exact], reranked, 3) == reranked
    assert keep_exact_matches("how to restore", first_stage, reranked, 3) == reranked
