"""Corpus sources: which files a domain reads, and how each one splits into documents, streamed.

Layouts (``lineage domain add --documents``):

- text files (``.txt``, ``.txt.gz``): ``blank-line`` (documents separated by blank lines, the
  bundled corpora's format), ``line`` (one document per line), ``file`` (the whole file is one
  document). ``auto`` (the default) looks at the first MiB of each text file and reports what
  it chose and why: blank-line when blank lines cut the text into blocks of at most
  ``MAX_BLOCK_LINES`` lines on average, else one document per line.
- records, one document each, the text in ``text_field`` (dotted for nested fields,
  ``meta.body``): ``jsonl`` (``.jsonl``, ``.jsonl.gz``), ``parquet`` (``.parquet``), ``arrow``
  (``.arrow``: Arrow IPC, stream or file format). A folder written by Hugging Face
  ``datasets``' ``save_to_disk`` (``state.json`` + ``data-*.arrow``, Arrow IPC streams) is read
  in its own file order, and a ``DatasetDict`` folder (``dataset_dict.json``) split by split,
  with pyarrow alone: ``datasets`` is not needed.

A text layout says how text files split and leaves record files to their format; a record
layout reads every file in that format (e.g. ``--documents jsonl`` for ``.json`` files).
Everything streams: a line, a JSON record or an Arrow record batch at a time (``file`` holds
its one document). ``progress`` callbacks get the bytes of the source files consumed.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lineage.corpora.profiles import iter_documents
from lineage.errors import LineageError

TEXT_LAYOUTS = ("blank-line", "line", "file")
RECORD_LAYOUTS = ("jsonl", "parquet", "arrow")
LAYOUTS = ("auto", *TEXT_LAYOUTS, *RECORD_LAYOUTS)
SUFFIXES = {  # longest first when matched
    ".jsonl.gz": "jsonl",
    ".txt.gz": "text",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".arrow": "arrow",
    ".txt": "text",
}
DETECT_CHARS = 1 << 20  # auto-detection reads this much of a text file
MAX_BLOCK_LINES = 50  # blank-line blocks longer than this on average read as one doc per line
BLANK_LINES = re.compile(r"\n\s*\n")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Source:
    """One file to read: its format (text, jsonl, parquet, arrow) and the folder of the
    Hugging Face dataset it belongs to, if any."""

    path: Path
    format: str
    dataset: Path | None = None


@dataclass(frozen=True)
class Layout:
    """How one file was read, and why (what auto-detection saw, or that it was given)."""

    layout: str
    reason: str


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((f for s, f in SUFFIXES.items() if name.endswith(s)), None)


def expand_sources(sources: Sequence[str | Path], documents: str = "auto") -> list[Source]:
    """Files, folders (searched recursively; Hugging Face dataset folders in their own order)
    and globs -> the files to read, each once, in a stable order."""
    if documents not in LAYOUTS:
        raise LineageError(f"--documents must be one of {', '.join(LAYOUTS)}, not {documents!r}")
    found: list[Source] = []
    for source in sources:
        text = str(source)
        if any(c in text for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise LineageError(f"{text}: the pattern matches no file")
            for match in matches:
                found += _walk(match) if match.is_dir() else _explicit(match, documents)
            continue
        path = Path(text).expanduser()
        if not path.exists():
            raise LineageError(f"{path}: no such file or folder")
        found += _walk(path) if path.is_dir() else _explicit(path, documents)
    unique: dict[Path, Source] = {}
    for found_source in found:  # each file once, where it is first named
        unique.setdefault(found_source.path, found_source)
    if not unique:
        kinds = ", ".join(SUFFIXES)
        raise LineageError(f"no text files in {', '.join(map(str, sources))} ({kinds})")
    return list(unique.values())


def _explicit(path: Path, documents: str) -> list[Source]:
    """A file named directly: its suffix's format, or the format a record layout forces."""
    fmt = documents if documents in RECORD_LAYOUTS else file_format(path)
    if fmt is None and documents in TEXT_LAYOUTS:
        fmt = "text"  # `--documents line notes.md`: the user says it is text
    if fmt is None:
        raise LineageError(
            f"{path}: unsupported file type (supported: {', '.join(SUFFIXES)}; "
            "or say how to read it with --documents)"
        )
    return [Source(path.resolve(), fmt)]


def _walk(folder: Path) -> list[Source]:
    """Supported files under ``folder``, sorted; dataset folders contribute their own files."""
    if (folder / "dataset_dict.json").is_file():
        return [s for split in _dict_splits(folder) for s in _dataset(folder / split)]
    if (folder / "state.json").is_file():
        return _dataset(folder)
    out: list[Source] = []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            out += _walk(child)
        elif child.is_file() and (fmt := file_format(child)):
            out.append(Source(child.resolve(), fmt))
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LineageError(f"{path}: not a readable JSON file ({exc})") from exc


def _dict_splits(folder: Path) -> list[str]:
    splits = _read_json(folder / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise LineageError(f"{folder / 'dataset_dict.json'}: no list of splits")
    return splits


def _dataset(folder: Path) -> list[Source]:
    """The Arrow files of a ``save_to_disk`` folder, in ``state.json``'s order."""
    files = _read_json(folder / "state.json").get("_data_files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise LineageError(f"{folder / 'state.json'}: no _data_files (not a saved dataset?)")
    out = []
    for entry in files:
        path = folder / str(entry.get("filename", ""))
        if not path.is_file():
            raise LineageError(f"{folder}: the dataset's file {path.name!r} is missing")
        out.append(Source(path.resolve(), "arrow", folder.resolve()))
    return out


# ---- text layouts ------------------------------------------------------------------------


class _Counted(io.RawIOBase):
    """A binary file that reports the bytes read from it (for the progress bar)."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self.raw, self.progress = raw, progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if self.progress is not None and n:
            self.progress(n)
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_text(path: Path, progress: Progress | None = None) -> IO[str]:
    """A text reader over ``path`` (gzip by suffix), strict UTF-8, universal newlines."""
    raw: IO[bytes] = io.BufferedReader(_Counted(path.open("rb"), progress))
    if path.name.lower().endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def detect_layout(path: Path) -> Layout:
    """blank-line or line for a text file, from its first ``DETECT_CHARS`` characters."""
    with reading(path), open_text(path) as fh:
        sample = fh.read(DETECT_CHARS)
    lines = sample.split("\n")
    if len(sample) == DETECT_CHARS and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    blank = [not line.strip() for line in lines]
    n_text = blank.count(False)
    if n_text == 0:
        return Layout("blank-line", "no text")
    blocks = sum(1 for i, b in enumerate(blank) if not b and (i == 0 or blank[i - 1]))
    per_block = n_text / blocks
    chars = sum(len(line) for line, b in zip(lines, blank, strict=True) if not b) / n_text
    seen = f"{n_text:,} lines of {chars:.0f} characters on average"
    if blocks > 1 and per_block <= MAX_BLOCK_LINES:
        return Layout(
            "blank-line",
            f"blank lines separate {blocks:,} blocks of {per_block:.1f} lines ({seen})",
        )
    gaps = "no blank lines" if blocks == 1 else f"{per_block:.0f} lines between blank lines"
    return Layout("line", f"{gaps}; {seen}")


def normalise(document: str) -> str:
    """Strip, turn CR/CRLF into LF and fold inner blank lines, so a document survives the
    blank-line shard format."""
    if "\r" in document:
        document = document.replace("\r\n", "\n").replace("\r", "\n")
    document = document.strip()
    return BLANK_LINES.sub("\n", document) if "\n" in document else document


def _lines(fh: Iterable[str]) -> Iterator[str]:
    for line in fh:
        if line.strip():
            yield line.rstrip("\n")


def read_text(path: Path, layout: str, progress: Progress | None = None) -> Iterator[str]:
    with open_text(path, progress) as fh:
        if layout == "blank-line":
            yield from iter_documents(fh)
        elif layout == "line":
            yield from _lines(fh)
        else:  # file
            yield fh.read()


# ---- records -----------------------------------------------------------------------------


def _field(record: Any, path: str) -> Any:
    """``record[path]``, or the nested value a dotted path names (a literal key wins)."""
    if isinstance(record, dict) and path in record:
        return record[path]
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def read_jsonl(path: Path, text_field: str, progress: Progress | None = None) -> Iterator[str]:
    """The ``text_field`` of every JSON object, a line at a time; null values are skipped."""
    with open_text(path, progress) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LineageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            value = _field(record, text_field)
            if isinstance(value, str):
                yield value
            elif value is not None:
                raise LineageError(f"{path}:{lineno}: no string field {text_field!r}")


def _column_path(schema: Any, text_field: str, path: Path) -> list[str]:
    """The column and struct fields that ``text_field`` names in an Arrow schema."""
    import pyarrow as pa

    parts = [text_field] if text_field in schema.names else text_field.split(".")
    kind: Any = schema
    for i, part in enumerate(parts):
        names = kind.names if i == 0 else [f.name for f in kind]
        if part not in names:
            raise LineageError(f"{path}: no column {text_field!r} (columns: {_names(schema)})")
        kind = schema.field(part).type if i == 0 else kind.field(part).type
        if i < len(parts) - 1 and not pa.types.is_struct(kind):
            raise LineageError(f"{path}: {'.'.join(parts[: i + 1])!r} is {kind}, not a struct")
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if not any(is_text(kind) for is_text in text):
        raise LineageError(f"{path}: column {text_field!r} holds {kind}, not text")
    return parts


def _names(schema: Any) -> list[str]:
    """Column names, struct fields spelled with dots."""
    import pyarrow as pa

    def walk(prefix: str, kind: Any) -> Iterator[str]:
        if pa.types.is_struct(kind):
            for f in kind:
                yield from walk(f"{prefix}.{f.name}", f.type)
        else:
            yield prefix

    return [n for f in schema for n in walk(f.name, f.type)]


def _batch_texts(batch: Any, parts: list[str]) -> Iterator[str]:
    column = batch.column(parts[0])
    for part in parts[1:]:
        column = column.field(part)
    for value in column.to_pylist():
        if value is not None:
            yield value


def read_parquet(path: Path, text_field: str, progress: Progress | None = None) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise LineageError(f"{path}: not a readable Parquet file ({exc})") from exc
    parts = _column_path(parquet.schema_arrow, text_field, path)
    size, rows = path.stat().st_size, max(parquet.metadata.num_rows, 1)
    for batch in parquet.iter_batches(columns=[parts[0]], batch_size=1024):
        yield from _batch_texts(batch, parts)
        if progress is not None:
            progress(size * batch.num_rows // rows)


def _arrow_batches(path: Path) -> Iterator[Any]:
    """Record batches of an Arrow IPC stream (what ``save_to_disk`` writes) or IPC file, read
    from a plain file (not memory-mapped: a batch's pages are freed once it is done)."""
    import pyarrow as pa

    with pa.OSFile(str(path), "rb") as fh:
        try:
            reader: Any = pa.ipc.open_stream(fh)
        except pa.ArrowInvalid:
            fh.seek(0)
            try:
                reader = pa.ipc.open_file(fh)
            except pa.ArrowInvalid as exc:
                raise LineageError(f"{path}: not an Arrow IPC file ({exc})") from exc
            yield reader.schema
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        yield reader.schema
        yield from reader


def read_arrow(path: Path, text_field: str, progress: Progress | None = None) -> Iterator[str]:
    batches = _arrow_batches(path)
    parts = _column_path(next(batches), text_field, path)
    for batch in batches:
        yield from _batch_texts(batch, parts)
        if progress is not None:
            progress(batch.nbytes)


def read_source(
    source: Source,
    layout: str,
    *,
    text_field: str = "text",
    progress: Progress | None = None,
) -> Iterator[str]:
    """The documents of one source file; non-UTF-8 bytes and bad records raise LineageError."""
    path = source.path
    with reading(path):
        if source.format == "text":
            yield from read_text(path, layout, progress)
        elif source.format == "jsonl":
            yield from read_jsonl(path, text_field, progress)
        elif source.format == "parquet":
            yield from read_parquet(path, text_field, progress)
        else:
            yield from read_arrow(path, text_field, progress)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn decoding and I/O errors while reading ``path`` into one clear LineageError."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise LineageError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
            "of a read block); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from exc
    except (OSError, EOFError) as exc:
        raise LineageError(f"{path}: cannot read ({exc})") from exc


def layout_of(source: Source, documents: str) -> Layout:
    """How ``source`` is read under ``--documents documents``, and why."""
    if source.format != "text":
        return Layout(source.format, "by its format")
    if documents in TEXT_LAYOUTS:
        return Layout(documents, "as given")
    return detect_layout(source.path)


def read_documents(
    path: Path, *, text_field: str = "text", documents: str = "auto"
) -> Iterator[str]:
    """The documents of one file (text detected as blank-line or line, .jsonl, .parquet,
    .arrow), for callers outside ``domain add`` (the router, tests)."""
    (source,) = _explicit(Path(path), documents)
    yield from read_source(source, layout_of(source, documents).layout, text_field=text_field)
