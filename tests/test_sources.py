"""Corpus sources: text layouts stated or detected (and said why), JSON Lines with nested
fields, Parquet and Arrow folders, Hugging Face ``save_to_disk`` datasets written by the real
``datasets`` library and read back with pyarrow alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineage.corpora.domains import add_domain, domain_texts
from lineage.corpora.sources import detect_layout, expand_sources, read_documents
from lineage.errors import LineageError
from lineage.workspace import Workspace

# Long one-line documents, as in a one-document-per-line legal or web corpus.
LINES = [
    f"Section {i}. The lessee shall pay the rent for the premises at number {i} on the first "
    f"day of each month, and the lessor shall keep the roof and the walls of house {i} in repair."
    for i in range(120)
]


def test_one_document_per_line_is_detected_and_said(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "legal.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    layout = detect_layout(path)
    assert layout.layout == "line"
    assert "no blank lines" in layout.reason and "120 lines" in layout.reason
    _, report = add_domain(ws, "legal", [path])
    assert report.documents == 120 and report.layouts[0][1].layout == "line"
    assert report.valid_documents >= 12  # floor: min(50, a tenth of 120)
    assert report.train_documents + report.valid_documents == 120
    assert set(domain_texts(ws, "legal", "train")) | set(domain_texts(ws, "legal", "valid")) == set(
        LINES
    )


def test_blank_line_paragraphs_are_detected(tmp_path: Path) -> None:
    # a hard-wrapped text: paragraphs of three lines, separated by blank lines
    paragraphs = [f"line one of {i}\nline two of {i}\nline three of {i}" for i in range(40)]
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    layout = detect_layout(path)
    assert layout.layout == "blank-line" and "40 blocks of 3.0 lines" in layout.reason
    assert list(read_documents(path)) == paragraphs
    # the user can say otherwise: one document per line, or the whole file as one
    assert len(list(read_documents(path, documents="line"))) == 120
    (whole,) = read_documents(path, documents="file")
    assert whole.count("line one") == 40


def test_stated_layout_applies_to_text_and_leaves_records_alone(
    ws: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "a record"}) + "\n", encoding="utf-8")
    _, report = add_domain(ws, "x", [tmp_path], documents="file", valid_every=2)
    assert report.documents == 2  # a.txt is one document, b.jsonl one record
    assert {lay.layout for _, lay in report.layouts} == {"file", "jsonl"}
    assert report.layouts[0][1].reason == "as given"
    # a record layout reads any file in its format
    (tmp_path / "c.json").write_text(json.dumps({"text": "json lines"}) + "\n", encoding="utf-8")
    assert list(read_documents(tmp_path / "c.json", documents="jsonl")) == ["json lines"]
    with pytest.raises(LineageError, match="--documents"):
        expand_sources([tmp_path / "c.json"])
    with pytest.raises(LineageError, match="--documents must be one of"):
        expand_sources([tmp_path / "c.json"], documents="paragraph")


def test_jsonl_nested_text_field(tmp_path: Path) -> None:
    path = tmp_path / "nested.jsonl"
    records = [
        {"meta": {"body": "the first body", "lang": "en"}},
        {"meta": {"body": None}},  # null: skipped
        {"meta.body": "a literal dotted key wins", "meta": {"body": "not this"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert list(read_documents(path, text_field="meta.body")) == [
        "the first body",
        "a literal dotted key wins",
    ]
    path.write_text(json.dumps({"meta": {"title": "no body"}}) + "\n", encoding="utf-8")
    with pytest.raises(LineageError, match=r"nested\.jsonl:1: no string field 'meta\.body'"):
        list(read_documents(path, text_field="meta.body"))


def test_parquet_folder_with_a_struct_column(ws: Workspace, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "parquet"
    folder.mkdir()
    for part in range(3):
        bodies = [f"part {part} document {i} about rivers and lakes" for i in range(40)]
        meta = pa.array([{"body": b, "year": 2000 + i} for i, b in enumerate(bodies)])
        pq.write_table(pa.table({"id": range(40), "meta": meta}), folder / f"p{part}.parquet")
    _, report = add_domain(ws, "rivers", [folder], text_field="meta.body")
    assert report.documents == 120 and len(report.files) == 3
    with pytest.raises(
        LineageError, match=r"no column 'meta\.text' \(columns: \['id', 'meta\.body'"
    ):
        add_domain(ws, "bad", [folder], text_field="meta.text")
    with pytest.raises(LineageError, match="holds int64, not text"):
        add_domain(ws, "bad", [folder], text_field="id")
    assert [d.name for d in ws.registry.domains()] == ["rivers"]


def test_arrow_ipc_stream_and_file(tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table({"text": ["one arrow document", "two arrow documents"]})
    for name, new in (("stream.arrow", pa.ipc.new_stream), ("file.arrow", pa.ipc.new_file)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, new(sink, table.schema) as writer:
            writer.write_table(table)
    for name in ("stream.arrow", "file.arrow"):
        assert list(read_documents(tmp_path / name)) == table["text"].to_pylist()
    (tmp_path / "broken.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(LineageError, match="not an Arrow IPC file"):
        list(read_documents(tmp_path / "broken.arrow"))


def test_hugging_face_save_to_disk_dataset_and_dataset_dict(ws: Workspace, tmp_path: Path) -> None:
    import datasets  # a dev dependency: tests write real folders; lineage reads them without it

    texts = [f"hugging face document {i} on proteins and cells" for i in range(300)]
    rows = {"meta": [{"body": t, "n": i} for i, t in enumerate(texts)], "id": list(range(300))}
    dataset = datasets.Dataset.from_dict(rows)
    dataset.save_to_disk(str(tmp_path / "ds"), max_shard_size="8KB")  # several data-*.arrow
    sources = expand_sources([tmp_path / "ds"])
    assert len(sources) > 1 and {s.format for s in sources} == {"arrow"}
    assert all(s.dataset == (tmp_path / "ds").resolve() for s in sources)
    read = [d for s in sources for d in read_documents(s.path, text_field="meta.body")]
    assert read == texts  # the dataset's own order, across its files
    _, report = add_domain(ws, "hf", [tmp_path / "ds"], text_field="meta.body")
    assert report.documents == 300
    assert set(domain_texts(ws, "hf", "train")) | set(domain_texts(ws, "hf", "valid")) == set(texts)

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts[:200]}),
            "test": datasets.Dataset.from_dict({"text": texts[200:]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    _, report = add_domain(ws, "hf-dict", [tmp_path / "dict"])
    assert report.documents == 300  # every split, in dataset_dict.json's order
    assert [Path(f).parent.name for f in report.files] == ["train", "test"]
    # a split alone is a dataset folder too
    _, report = add_domain(ws, "hf-train", [tmp_path / "dict" / "train"])
    assert report.documents == 200


def test_broken_dataset_folders_say_what_is_wrong(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "gone.arrow"}]}))
    with pytest.raises(LineageError, match=r"the dataset's file 'gone\.arrow' is missing"):
        expand_sources([folder])
    (folder / "state.json").write_text("{not json")
    with pytest.raises(LineageError, match="not a readable JSON file"):
        expand_sources([folder])
