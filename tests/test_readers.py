"""keytok_jax.pipeline.read: formats, flags, bad input (raise / skip), duplicates, streaming, counts."""
from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from conftest import SHARED, shared_or_skip
from keytok_jax.errors import CorpusError, SettingsError
from keytok_jax.pipeline.read import count_docs, detect_format, read_corpus
from keytok_jax.records import FLAG_EMPTY, FLAG_REPLACED, Doc, ReadStats

SCIFACT = SHARED / "data" / "scifact"


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_lines(path: Path, lines, *, newline="\n") -> Path:
    return write_bytes(path, "".join(l + newline for l in lines).encode("utf-8"))


def jl(*objs) -> list[str]:
    return [json.dumps(o) for o in objs]


def read_all(path, **kw) -> list[Doc]:
    return list(read_corpus(path, **kw))


def rejects(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text("utf-8").splitlines()] if path.exists() else []


# ------------------------------------------------------------------ formats


def test_jsonl_title_text_join_int_ids_and_sources(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", jl(
        {"_id": "a", "title": "T", "text": "body", "extra": [1]},
        {"_id": 7, "title": "", "text": "no title"},
        {"_id": "c", "text": "only text"},
        {"_id": "d", "title": "only title"},
        {"_id": "e", "title": None, "text": "null title"},
        {"_id": "f", "title": "   ", "text": "blank title"},
    ))
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert [(d.id, d.text, d.flags) for d in docs] == [
        ("a", "T body", 0), ("7", "no title", 0), ("c", "only text", 0), ("d", "only title", 0),
        ("e", "null title", 0), ("f", "blank title", 0)]
    assert [d.source for d in docs] == [f"{p}:{i}" for i in range(1, 7)]
    assert st == ReadStats(docs=6, lines=6)
    assert count_docs(p) == 6


def test_jsonl_custom_fields_json_suffix_blank_lines_crlf_bom(tmp_path):
    lines = jl({"docid": "x", "title": "ignored", "body": "B1"}, {"docid": 2, "body": "B2"})
    p = write_bytes(tmp_path / "c.json",
                    b"\xef\xbb\xbf" + (lines[0] + "\r\n\r\n   \n" + lines[1]).encode())  # no final newline
    st = ReadStats()
    docs = read_all(p, id_field="docid", text_fields=("body",), stats=st)
    assert [(d.id, d.text, d.source) for d in docs] == [("x", "B1", f"{p}:1"), ("2", "B2", f"{p}:4")]
    assert st.lines == 4 and st.docs == 2
    assert count_docs(p, id_field="docid", text_fields=("body",)) == 2
    assert [d.text for d in read_all(p, id_field="docid", text_fields="body")] == ["B1", "B2"]


def test_beir_directory_matches_scifact_first_document():
    corpus = shared_or_skip(SCIFACT / "corpus.jsonl")
    first = json.loads(corpus.open("rb").readline())
    assert first["_id"] == "4983"
    docs = read_corpus(SCIFACT)  # auto: a directory is BEIR
    doc = next(docs)
    docs.close()
    assert doc.id == "4983" and doc.flags == 0 and doc.source == f"{corpus}:1"
    assert doc.text.startswith(first["title"] + " " + first["text"][:50])
    assert doc.text == first["title"] + " " + first["text"]
    assert doc.text.startswith("Microstructural development of human newborn cerebral white matter "
                               "assessed in vivo by diffusion tensor magnetic resonance imaging. "
                               "Alterations of the architecture")


def test_beir_scifact_whole_corpus_and_count():
    shared_or_skip(SCIFACT / "corpus.jsonl")
    st = ReadStats()
    n = sum(1 for _ in read_corpus(SCIFACT, format="beir", stats=st))
    assert n == st.docs == st.lines == count_docs(SCIFACT) == 5183
    assert st.rejected == 0


def test_beir_directory_fake_and_missing_corpus(tmp_path):
    write_lines(tmp_path / "corpus.jsonl", jl({"_id": "1", "title": "A", "text": "b"}))
    assert [d.text for d in read_all(tmp_path)] == ["A b"]
    assert count_docs(tmp_path, format="beir") == 1
    (tmp_path / "sub").mkdir()
    with pytest.raises(CorpusError, match="without corpus.jsonl"):
        read_corpus(tmp_path / "sub")
    with pytest.raises(CorpusError, match="needs a BEIR dataset directory"):
        read_corpus(tmp_path / "corpus.jsonl", format="beir")


def test_tsv_without_header(tmp_path):
    p = write_lines(tmp_path / "c.tsv", ["d1\tfirst text", "d2\t", "d3\tthird \u2028 x"], newline="\r\n")
    docs = read_all(p)
    assert [(d.id, d.text, d.flags) for d in docs] == [
        ("d1", "first text", 0), ("d2", "", FLAG_EMPTY), ("d3", "third \u2028 x", 0)]
    assert count_docs(p) == 3


@pytest.mark.parametrize("header", ["id\ttext", "_id\ttext", "ID\tpassage", "\ufeffdocid\tcontents"])
def test_tsv_header_two_columns_detected_and_skipped(tmp_path, header):
    p = write_lines(tmp_path / "c.tsv", [header, "a\tA", "b\tB"])
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert [(d.id, d.text, d.source) for d in docs] == [("a", "A", f"{p}:2"), ("b", "B", f"{p}:3")]
    assert st.lines == 3 and st.docs == 2
    assert count_docs(p) == 2


def test_tsv_header_named_columns_title_text_order(tmp_path):
    # DPR layout: id, text, title -> title + text, like BEIR.
    p = write_lines(tmp_path / "c.tsv", ["id\ttext\ttitle", "1\tbody one\tTitle one", "2\tbody two\t"])
    assert [(d.id, d.text) for d in read_all(p)] == [("1", "Title one body one"), ("2", "body two")]
    assert [d.text for d in read_all(p, text_fields=("text",))] == ["body one", "body two"]
    assert count_docs(p) == 2
    bad = write_lines(tmp_path / "bad.tsv", ["id\tfoo\tbar", "1\ta\tb"])
    with pytest.raises(CorpusError, match=r"bad\.tsv:1: TSV header .* names none of the text fields"):
        read_all(bad)


def test_tsv_first_line_not_header(tmp_path):
    p = write_lines(tmp_path / "c.tsv", ["identity\ttext", "x\ty"])
    assert [d.id for d in read_all(p)] == ["identity", "x"]
    assert count_docs(p) == 2


def test_txt_line_numbers_blank_lines_kept(tmp_path):
    p = write_bytes(tmp_path / "c.txt", b"first\n\n   \r\nfourth\twith tab\nlast")
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert [(d.id, d.text, d.flags) for d in docs] == [
        ("1", "first", 0), ("2", "", FLAG_EMPTY), ("3", "   ", FLAG_EMPTY),
        ("4", "fourth\twith tab", 0), ("5", "last", 0)]
    assert st == ReadStats(docs=5, empty=2, lines=5)
    assert count_docs(p) == 5
    assert count_docs(write_bytes(tmp_path / "e.txt", b"")) == 0
    assert count_docs(write_bytes(tmp_path / "n.txt", b"a\n\n")) == 2 == len(read_all(tmp_path / "n.txt"))


def test_gzip_variants(tmp_path):
    for name, data, expect in [
        ("c.jsonl.gz", "\n".join(jl({"_id": "a", "text": "x"}, {"_id": "b", "text": "y"})), ["a", "b"]),
        ("c.tsv.gz", "id\ttext\na\tx\nb\ty\n", ["a", "b"]),
        ("c.txt.gz", "x\ny\n", ["1", "2"]),
    ]:
        p = tmp_path / name
        with gzip.open(p, "wb") as f:
            f.write(data.encode())
        assert [d.id for d in read_all(p)] == expect
        assert count_docs(p) == 2


def test_detect_format(tmp_path):
    assert detect_format(tmp_path) == "beir"
    for name, fmt in [("a.jsonl", "jsonl"), ("a.JSON", "jsonl"), ("a.tsv", "tsv"), ("a.txt", "txt"),
                      ("a.parquet", "parquet"), ("a.jsonl.gz", "jsonl"), ("a.txt.gz", "txt")]:
        assert detect_format(tmp_path / name) == fmt
    with pytest.raises(CorpusError, match="cannot tell"):
        detect_format(tmp_path / "a.csv")
    p = write_lines(tmp_path / "data.dat", ["hello"])
    assert [d.text for d in read_all(p, format="txt")] == ["hello"]
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="format must be"):
        read_corpus(p, format="csv")


# ------------------------------------------------------------------ parquet


def test_parquet_batches_columns_nulls_and_count(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 2500  # several record batches and row groups
    table = pa.table({
        "_id": pa.array([f"p{i}" for i in range(n)]),
        "title": pa.array([None if i % 3 == 0 else f"T{i}" for i in range(n)]),
        "text": pa.array(["" if i == 5 else f"body {i}" for i in range(n)]),
        "other": pa.array(list(range(n))),
    })
    p = tmp_path / "c.parquet"
    pq.write_table(table, p, row_group_size=1000)
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert len(docs) == n == count_docs(p) == st.docs == st.lines
    assert (docs[0].id, docs[0].text, docs[0].source) == ("p0", "body 0", f"{p}:1")
    assert (docs[1].text, docs[5].text, docs[5].flags, docs[6].text) == ("T1 body 1", "T5", 0, "body 6")
    assert docs[-1].source == f"{p}:{n}"

    # int ids, binary text with invalid UTF-8, empty text, only some text columns present
    q = tmp_path / "d.parquet"
    pq.write_table(pa.table({"docid": pa.array([3, 4, 5], pa.int64()),
                             "body": pa.array([b"ok", b"bad \xff byte", b"  "], pa.binary())}), q)
    docs = read_all(q, id_field="docid", text_fields=("title", "body"))
    assert [(d.id, d.text, d.flags) for d in docs] == [
        ("3", "ok", 0), ("4", "bad \ufffd byte", FLAG_REPLACED), ("5", "", FLAG_EMPTY)]


def test_parquet_bad_input(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"_id": pa.array(["a", None, "", "d"]), "text": ["A", "B", "C", "D"]}), p)
    with pytest.raises(CorpusError, match=r"c\.parquet:2 \(row 2\): id column '_id' is null"):
        read_all(p)
    rej = tmp_path / "rej.jsonl"
    st = ReadStats()
    assert [d.id for d in read_all(p, on_error="skip", rejects_path=rej, stats=st)] == ["a", "d"]
    assert st.rejected == 2 and st.docs == 2
    r = rejects(rej)
    assert [x["source"] for x in r] == [f"{p}:2", f"{p}:3"]
    assert json.loads(r[0]["line"]) == {"_id": None, "text": "B"}
    assert "empty id" in r[1]["error"]

    pq.write_table(pa.table({"id": ["a"], "text": ["A"]}), p)
    with pytest.raises(CorpusError, match=r"c\.parquet: no id column '_id'"):
        read_corpus(p)
    pq.write_table(pa.table({"_id": ["a"], "body": ["A"]}), p)
    with pytest.raises(CorpusError, match="none of the text columns"):
        read_corpus(p)
    pq.write_table(pa.table({"_id": ["a"], "text": [1.5]}), p)
    with pytest.raises(CorpusError, match="text column 'text' must be string"):
        read_corpus(p)
    pq.write_table(pa.table({"_id": ["a", "b", "a"], "text": ["x", "y", "z"]}), p)
    with pytest.raises(CorpusError, match=r"c\.parquet:3: duplicate id 'a', first seen at .*c\.parquet:1"):
        read_all(p)


# ------------------------------------------------------------------ decoding and flags


def test_invalid_utf8_replaced_and_flagged(tmp_path):
    lines = [
        b'{"_id": "a", "text": "caf\xe9 ok"}',  # latin-1 byte in the text
        b'{"_id": "b", "text": "real \xef\xbf\xbd replacement char"}',  # valid U+FFFD: not flagged
        b'{"_id": "c", "note": "\xff", "text": "clean text"}',  # bad byte in an ignored field only
        b'{"_id": "d", "text": "lone \\ud800 surrogate"}',  # escape -> lone surrogate
        b'{"_id": "e", "text": "trunc \xe2\x82"}',
    ]
    p = write_bytes(tmp_path / "c.jsonl", b"\n".join(lines) + b"\n")
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert [(d.id, d.text, d.flags) for d in docs] == [
        ("a", "caf\ufffd ok", FLAG_REPLACED),
        ("b", "real \ufffd replacement char", 0),
        ("c", "clean text", 0),
        ("d", "lone \ufffd surrogate", FLAG_REPLACED),
        ("e", "trunc \ufffd", FLAG_REPLACED),
    ]
    assert st.replaced == 3 and st.replacements == 4 and st.docs == 5

    t = write_bytes(tmp_path / "c.txt", b"ok\nbad \xc3\x28 x\n\xff\n")
    docs = read_all(t)
    assert [(d.text, d.flags) for d in docs] == [
        ("ok", 0), ("bad \ufffd( x", FLAG_REPLACED), ("\ufffd", FLAG_REPLACED)]
    v = write_bytes(tmp_path / "c.tsv", b"i\tfine\xff\nj\tno\xfe\n")
    assert [(d.id, d.text, d.flags) for d in read_all(v)] == [
        ("i", "fine\ufffd", FLAG_REPLACED), ("j", "no\ufffd", FLAG_REPLACED)]


def test_empty_and_whitespace_texts_kept_and_flagged(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", jl(
        {"_id": "1", "title": "", "text": ""},
        {"_id": "2", "text": " \t\u3000 "},
        {"_id": "3", "title": None, "text": None},
        {"_id": "4", "text": "x"},
    ))
    st = ReadStats()
    docs = read_all(p, stats=st)
    assert [(d.id, d.flags) for d in docs] == [("1", FLAG_EMPTY), ("2", FLAG_EMPTY), ("3", FLAG_EMPTY), ("4", 0)]
    assert [d.text for d in docs] == ["", "", "", "x"]
    assert st.empty == 3 and st.docs == 4 and st.rejected == 0


# ------------------------------------------------------------------ bad input


BAD_JSONL = [
    ('{"_id": "x", "text": ', "malformed JSON"),
    ('["_id", "text"]', "not a JSON object"),
    ('{"id": "x", "text": "t"}', "missing id field '_id'"),
    ('{"_id": "x", "body": "t"}', "none of the text fields"),
    ('{"_id": "x", "text": 5}', "text field 'text' must be a string"),
    ('{"_id": "x", "title": ["a"], "text": "t"}', "text field 'title' must be a string"),
    ('{"_id": 1.5, "text": "t"}', "must be a string or an integer"),
    ('{"_id": null, "text": "t"}', "is null"),
    ('{"_id": true, "text": "t"}', "must be a string or an integer"),
    ('{"_id": "", "text": "t"}', "empty id"),
]


@pytest.mark.parametrize("line,problem", BAD_JSONL)
def test_jsonl_bad_line_raise(tmp_path, line, problem):
    p = write_lines(tmp_path / "corpus.jsonl", [*jl({"_id": "ok1", "text": "a"}, {"_id": "ok2", "text": "b"}), line])
    it = read_corpus(p)
    assert [next(it).id, next(it).id] == ["ok1", "ok2"]
    with pytest.raises(CorpusError) as e:
        next(it)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: ") and "corpus.jsonl:3" in msg and problem in msg


def test_jsonl_bad_lines_skip(tmp_path):
    good = jl({"_id": "g0", "text": "zero"})
    bad = [line for line, _ in BAD_JSONL] + ['{"_id": "long", "text": ' + "x" * 3000]
    p = write_bytes(tmp_path / "c.jsonl", ("\n".join(good + bad + jl({"_id": "g1", "text": "one"})) + "\n").encode()
                    + b'{"_id": "g\xff", "nope": 1}\n')
    rej = tmp_path / "rejects.jsonl"
    rej.write_text('{"previous": "run"}\n')  # append mode keeps it
    st = ReadStats()
    docs = read_all(p, on_error="skip", rejects_path=rej, stats=st)
    assert [d.id for d in docs] == ["g0", "g1"]
    nbad = len(bad) + 1
    assert st == ReadStats(docs=2, rejected=nbad, lines=2 + nbad, replacements=1)
    r = rejects(rej)
    assert r[0] == {"previous": "run"}
    r = r[1:]
    assert len(r) == nbad
    assert [x["source"] for x in r] == [f"{p}:{i}" for i in range(2, 2 + len(bad))] + [f"{p}:{len(bad) + 3}"]
    for x, (line, problem) in zip(r, BAD_JSONL):
        assert x["line"] == line and problem in x["error"] and set(x) == {"source", "error", "line"}
    assert len(r[len(BAD_JSONL)]["line"]) == 1000 and "malformed JSON" in r[len(BAD_JSONL)]["error"]
    assert r[-1]["line"] == '{"_id": "g\ufffd", "nope": 1}'
    assert count_docs(p) == 2 + nbad  # counts rejected lines too: documented upper bound


def test_skip_needs_rejects_path_and_no_file_without_rejects(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", jl({"_id": "a", "text": "x"}))
    with pytest.raises(ValueError, match="rejects_path"):
        read_corpus(p, on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        read_corpus(p, on_error="ignore")
    rej = tmp_path / "rej.jsonl"
    assert len(read_all(p, on_error="skip", rejects_path=rej)) == 1
    assert not rej.exists()


@pytest.mark.parametrize("header", [None, "id\ttext"])
def test_tsv_bad_lines_raise_and_skip(tmp_path, header):
    rows = ["a\tA", "b\tB\textra", "no tabs here", "\tno id", "c\tC"]
    p = write_lines(tmp_path / "c.tsv", ([header] if header else []) + rows)
    off = 1 if header else 0
    with pytest.raises(CorpusError, match=rf"c\.tsv:{2 + off}: expected 2 tab-separated columns .*got 3"):
        read_all(p)
    rej = tmp_path / "rej.jsonl"
    st = ReadStats()
    assert [d.id for d in read_all(p, on_error="skip", rejects_path=rej, stats=st)] == ["a", "c"]
    assert st.rejected == 3 and st.docs == 2
    r = rejects(rej)
    assert [(x["source"], x["line"]) for x in r] == [
        (f"{p}:{2 + off}", "b\tB\textra"), (f"{p}:{3 + off}", "no tabs here"), (f"{p}:{4 + off}", "\tno id")]
    assert "got 1" in r[1]["error"] and "empty id" in r[2]["error"]


def test_tsv_three_column_header_column_count(tmp_path):
    p = write_lines(tmp_path / "c.tsv", ["_id\ttitle\ttext", "a\tT\tx", "b\tonly two"])
    with pytest.raises(CorpusError, match=r"c\.tsv:3: expected 3 tab-separated columns"):
        read_all(p)


@pytest.mark.parametrize("name,lines,second", [
    ("c.jsonl", jl({"_id": "dup", "text": "a"}, {"_id": "z", "text": "b"}, {"_id": "dup", "text": "c"}), 3),
    ("i.jsonl", jl({"_id": 12, "text": "a"}, {"_id": "12", "text": "b"}), 2),  # int and str ids collide
    ("c.tsv", ["id\ttext", "dup\ta", "x\tb", "y\tc", "dup\td"], 5),
])
def test_duplicate_ids_name_both_lines(tmp_path, name, lines, second):
    p = write_lines(tmp_path / name, lines)
    first = 2 if name.endswith(".tsv") else 1
    for kw in ({}, {"on_error": "skip", "rejects_path": tmp_path / "rej.jsonl"}):
        with pytest.raises(CorpusError) as e:
            read_all(p, **kw)
        msg = str(e.value)
        assert msg.startswith(f"{p}:{second}: duplicate id") and f"first seen at {p}:{first}" in msg
    assert not (tmp_path / "rej.jsonl").exists()


# ------------------------------------------------------------------ streaming


def _peak_while_consuming(it) -> tuple[int, int]:
    tracemalloc.start()
    try:
        n = 0
        for _ in it:
            n += 1
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_txt_200k_lines_bounded_memory(tmp_path):
    n = 200_000
    p = tmp_path / "big.txt"
    with open(p, "w") as f:
        for i in range(n):
            f.write(f"line {i} " + "lorem ipsum dolor sit amet " * 3 + "\n")
    assert p.stat().st_size > 15_000_000
    it = read_corpus(p)
    got, peak = _peak_while_consuming(it)
    assert got == n == count_docs(p)
    assert peak < 4_000_000, peak


def test_streaming_jsonl_keeps_only_the_duplicate_index(tmp_path):
    # Only the id digests (about 110 bytes per document) may grow, never the texts.
    n = 20_000
    p = tmp_path / "big.jsonl"
    body = "lorem ipsum dolor sit amet " * 75  # ~2 KB per line, ~40 MB in all
    with open(p, "w") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"doc-{i}", "title": f"T{i}", "text": body}) + "\n")
    size = p.stat().st_size
    assert size > 40_000_000
    st = ReadStats()
    got, peak = _peak_while_consuming(read_corpus(p, stats=st))
    assert got == n == st.docs
    assert peak < 4_000_000 + 200 * n, peak
    assert peak < size / 8, (peak, size)


# ------------------------------------------------------------------ ids with invalid bytes


def test_id_with_invalid_bytes_refused_naming_the_line(tmp_path):
    lines = [
        b'{"_id": "ok", "text": "fine"}',
        b'{"_id": "real \xef\xbf\xbd char", "text": "a valid U+FFFD in an id is kept"}',
        b'{"_id": "esc \\udc80", "text": "a surrogate escape in an id is kept as is"}',
        b'{"_id": "bad\xff", "text": "clean text"}',
        b'{"_id": "after", "text": "x"}',
    ]
    p = write_bytes(tmp_path / "c.jsonl", b"\n".join(lines) + b"\n")
    with pytest.raises(CorpusError) as e:
        read_all(p)
    assert str(e.value) == (f"{p}:4: id 'bad\ufffd' holds invalid UTF-8 bytes (shown as U+FFFD); "
                            "ids are never altered, so fix the input's encoding")
    rej = tmp_path / "rej.jsonl"
    st = ReadStats()
    docs = read_all(p, on_error="skip", rejects_path=rej, stats=st)
    assert [d.id for d in docs] == ["ok", "real \ufffd char", "esc \udc80", "after"]
    assert [d.flags for d in docs] == [0, 0, 0, 0]
    assert st.rejected == 1 and st.docs == 4
    (r,) = rejects(rej)
    assert r["source"] == f"{p}:4" and "invalid UTF-8 bytes" in r["error"]
    assert r["line"] == '{"_id": "bad\ufffd", "text": "clean text"}'

    # an integer id cannot hold bad bytes; bad bytes elsewhere on its line do not refuse it
    q = write_bytes(tmp_path / "i.jsonl", b'{"_id": 5, "text": "t\xff"}\n')
    assert [(d.id, d.text, d.flags) for d in read_all(q)] == [("5", "t\ufffd", FLAG_REPLACED)]

    t = write_bytes(tmp_path / "c.tsv", b"a\tA\xff\nb\xfe\tB\n")
    with pytest.raises(CorpusError, match=r"c\.tsv:2: id 'b\ufffd' holds invalid UTF-8 bytes"):
        read_all(t)
    rej2 = tmp_path / "rej2.jsonl"
    assert [(d.id, d.flags) for d in read_all(t, on_error="skip", rejects_path=rej2)] == [
        ("a", FLAG_REPLACED)]
    assert [x["source"] for x in rejects(rej2)] == [f"{t}:2"]


def test_parquet_id_with_invalid_bytes_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "c.parquet"
    ids = pa.array([b"a", b"b\xff"], pa.binary()).view(pa.string())  # a string column, bad bytes
    pq.write_table(pa.table({"_id": ids, "text": ["A", "B"]}), p)
    with pytest.raises(CorpusError, match=r"c\.parquet:2 \(row 2\): id 'b\ufffd' holds invalid UTF-8"):
        read_all(p)
    rej = tmp_path / "rej.jsonl"
    assert [d.id for d in read_all(p, on_error="skip", rejects_path=rej)] == ["a"]
    assert [x["source"] for x in rejects(rej)] == [f"{p}:2"]


# ------------------------------------------------------------------ files that are not UTF-8


UTF16_CASES = [
    ("utf-16", "UTF-16 byte order mark FF FE", "iconv -f UTF-16 -t UTF-8"),       # BOM, little endian
    ("utf-16-be-bom", "UTF-16 byte order mark FE FF", "iconv -f UTF-16 -t UTF-8"),
    ("utf-16-le", "looks like UTF-16 (UTF-16LE, no byte order mark)", "iconv -f UTF-16LE -t UTF-8"),
    ("utf-16-be", "looks like UTF-16 (UTF-16BE, no byte order mark)", "iconv -f UTF-16BE -t UTF-8"),
    ("utf-32", "UTF-32 byte order mark FF FE 00 00", "iconv -f UTF-32 -t UTF-8"),
]


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding)


@pytest.mark.parametrize("encoding,what,hint", UTF16_CASES)
@pytest.mark.parametrize("name", ["c.jsonl", "c.tsv", "c.txt", "c.jsonl.gz"])
def test_utf16_file_gets_an_encoding_hint(tmp_path, encoding, what, hint, name):
    text = "".join(json.dumps({"_id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(3))
    if ".tsv" in name or ".txt" in name:
        text = "".join(f"d{i}\ttext {i}\n" for i in range(3))
    data = _encode(text, encoding)
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    for kw in ({}, {"on_error": "skip", "rejects_path": tmp_path / "rej.jsonl"}):
        with pytest.raises(CorpusError) as e:
            read_all(p, **kw)
        msg = str(e.value)
        assert msg.startswith(f"{p}:1: ") and what in msg, msg
        assert f"convert it to UTF-8, e.g. {hint} {p} > {p}.utf8" in msg
    assert not (tmp_path / "rej.jsonl").exists()


def test_no_encoding_hint_for_utf8_or_latin1(tmp_path):
    # Latin-1 is not guessed: its bytes are replaced and flagged as before; one NUL is not UTF-16.
    p = write_bytes(tmp_path / "c.txt", "caf\u00e9 cr\u00e8me\n".encode("latin-1") + b"nul \x00 here\n")
    assert [(d.text, d.flags) for d in read_all(p)] == [
        ("caf\ufffd cr\ufffdme", FLAG_REPLACED), ("nul \x00 here", 0)]


# ------------------------------------------------------------------ standard input


def _stdin(monkeypatch, data: bytes):
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return sys.stdin


@pytest.mark.parametrize("fmt,data,expected", [
    ("auto", b'{"_id": "a", "text": "A"}\n\n{"_id": "b", "title": "T", "text": "B"}\n',
     [("a", "A", "<stdin>:1"), ("b", "T B", "<stdin>:3")]),
    ("jsonl", b'{"_id": "a", "text": "A"}', [("a", "A", "<stdin>:1")]),
    ("tsv", b"id\ttext\nx\tX\n", [("x", "X", "<stdin>:2")]),
    ("txt", b"one\ntwo\n", [("1", "one", "<stdin>:1"), ("2", "two", "<stdin>:2")]),
])
def test_stdin_read_with_format(monkeypatch, fmt, data, expected):
    stdin = _stdin(monkeypatch, data)
    assert count_docs("-", format=fmt) is None  # standard input cannot be read twice
    docs = read_all("-", format=fmt)
    assert [(d.id, d.text, d.source) for d in docs] == expected
    assert not stdin.buffer.closed  # never closed by the reader


def test_stdin_errors_name_stdin(monkeypatch, tmp_path):
    _stdin(monkeypatch, b'{"_id": "a", "text": "A"}\n{"_id": "a", "text": "again"}\n')
    with pytest.raises(CorpusError, match="^<stdin>:2: duplicate id 'a', first seen at <stdin>:1"):
        read_all("-")
    _stdin(monkeypatch, "x\ty\n".encode("utf-16"))
    with pytest.raises(CorpusError, match=r"^<stdin>:1: .*UTF-16.*iconv -f UTF-16 -t UTF-8 FILE > FILE\.utf8"):
        read_all("-", format="tsv")
    for fmt in ("beir", "parquet"):
        with pytest.raises(SettingsError, match=f"format '{fmt}' needs a path"):
            read_corpus("-", format=fmt)
        with pytest.raises(SettingsError, match=f"format '{fmt}' needs a path"):
            count_docs("-", format=fmt)
