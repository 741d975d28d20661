"""Evaluation data from local files and folders (or a Hub dataset) as a `datasets.Dataset` of a known layout.

The layout of each kind of data, the columns the evaluators read:

- ``text``: ``text``, one document per row.
- ``speech``: ``audio`` (a file path, ``{"path", "bytes"}`` or ``{"array", "sampling_rate"}``) and
  ``text``, the reference transcript.
- ``vision``: ``image`` and ``label`` (an integer; class names, when known, from a ``ClassLabel``).

Common alternative column names are renamed to these (``transcription``/``sentence`` to ``text``,
``img`` to ``image``, ``labels`` to ``label``); blank text documents are dropped. Sources `load_eval_data` accepts:

- a ``.json``, ``.jsonl``, ``.csv``, ``.parquet`` or ``.arrow`` file with the columns above;
- any other file of UTF-8 text, whatever its suffix (``.txt``, ``.md``, none): one document; a folder
  of ``.txt`` or ``.md`` files: one document each;
- a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: ``split`` is used);
- an audio folder: audio files and a ``metadata.csv`` with a header ``file_name,text`` and one row per
  file (``file_name`` relative to the folder), the layout of datasets' ``audiofolder``;
- an image folder: one subfolder per class, named after the class, holding its images (datasets'
  ``imagefolder`` layout);
- anything else that is not a path: a dataset name for ``datasets.load_dataset(name, split=split)``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EvalInputError
from .sources import looks_like_path

KINDS = ("text", "speech", "vision")
TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
COLUMN_ALIASES = {"transcription": "text", "sentence": "text", "img": "image", "labels": "label"}
AUDIO_METADATA = "metadata.csv"


@dataclass
class EvalData:
    """A dataset in the layout of its ``kind`` (see the module docstring), and where it came from."""

    dataset: Any
    kind: str
    source: str


def load_eval_data(source: Any, *, split: str = "test", max_samples: int | None = None) -> EvalData:
    """Load ``source`` (a path, a Hub dataset name, or a `datasets.Dataset`) and tell its kind.

    Raises `EvalInputError` for a path that does not exist, a layout this module does not know, a
    dataset without the columns of any kind, or one with no rows.
    """
    import datasets

    if isinstance(source, datasets.Dataset):
        dataset, name = source, f"<Dataset with {len(source)} rows>"
    else:
        dataset, name = _load(str(source), split), str(source)
    dataset = _standard_columns(dataset)
    kind = data_kind(dataset, name)
    if kind == "text":
        dataset = dataset.select([index for index, text in enumerate(dataset["text"]) if text and text.strip()])
    if len(dataset) == 0:
        raise EvalInputError(f"The data {name!r} has no samples (text data: no non-blank document); give at least one.")
    if max_samples is not None:
        if max_samples < 1:
            raise EvalInputError(f"max_samples must be >= 1, got {max_samples}.")
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return EvalData(dataset=dataset, kind=kind, source=name)


def data_kind(dataset, name: str) -> str:
    """``"speech"``, ``"vision"`` or ``"text"``, from the dataset's columns."""
    columns = set(dataset.column_names)
    if {"audio", "text"} <= columns:
        return "speech"
    if {"image", "label"} <= columns:
        return "vision"
    if "text" in columns:
        return "text"
    raise EvalInputError(
        f"The data {name!r} has columns {sorted(columns)}, which fit no task: text needs 'text', speech "
        "'audio' and 'text', vision 'image' and 'label'."
    )


def check_kind(data: EvalData, task: str, model_name: str) -> None:
    """Raise `EvalInputError` if ``data`` is not the kind of data that ``task`` evaluates."""
    if data.kind != task:
        wanted = {
            "text": "a text file, a folder of .txt files or a dataset with a 'text' column",
            "speech": f"an audio folder (audio files + {AUDIO_METADATA} with file_name,text) or a dataset with 'audio' and 'text'",
            "vision": "an image folder (one subfolder per class) or a dataset with 'image' and 'label'",
        }[task]
        raise EvalInputError(f"The data {data.source!r} is {data.kind} data, but the model {model_name!r} is a {task} model; give {wanted}.")


def _load(source: str, split: str):
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        return _load_folder(path, split)
    if looks_like_path(source, TEXT_SUFFIXES + TABLE_SUFFIXES):
        raise EvalInputError(f"The data path {source!r} does not exist; give an existing file or folder.")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as error:  # any failure here means: not a dataset this machine can load
        raise EvalInputError(
            f"The data {source!r} is not a local file or folder, and loading it as a dataset named "
            f"{source!r} (split {split!r}) failed: {error}"
        ) from error


def _load_file(path: Path):
    """A table file by its suffix; any other file as one text document, if it is UTF-8 text."""
    import datasets

    readers = {
        ".json": datasets.Dataset.from_json,
        ".jsonl": datasets.Dataset.from_json,
        ".csv": datasets.Dataset.from_csv,
        ".parquet": datasets.Dataset.from_parquet,
        ".arrow": datasets.Dataset.from_file,
    }
    suffix = path.suffix.lower()
    if suffix in readers:
        return readers[suffix](str(path))
    try:
        text: str | None = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:  # NUL bytes decode as UTF-8, but no text file holds them
        raise EvalInputError(
            f"Cannot read data file {str(path)!r}: it is not UTF-8 text, nor a table file ({', '.join(TABLE_SUFFIXES)}). "
            "Give a text or table file, or a folder in a layout of hf_efficient_attn.eval.data."
        )
    return datasets.Dataset.from_dict({"text": [text]})


def _load_folder(path: Path, split: str):
    import datasets

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise EvalInputError(f"The dataset at {str(path)!r} has splits {sorted(loaded)}, not {split!r}; choose one of them.")
            loaded = loaded[split]
        return loaded
    if (path / AUDIO_METADATA).exists():
        return _audio_folder(path)
    files = sorted(child for child in path.iterdir() if child.is_file())
    subfolders = sorted(child for child in path.iterdir() if child.is_dir())
    if subfolders and not files:
        return _image_folder(path, subfolders)
    texts = [file for file in files if file.suffix.lower() in TEXT_SUFFIXES]
    if texts:
        return datasets.Dataset.from_dict({"text": [file.read_text(encoding="utf-8") for file in texts]})
    raise EvalInputError(
        f"The folder {str(path)!r} has no layout this command reads: a Dataset.save_to_disk folder, an audio folder "
        f"with {AUDIO_METADATA}, an image folder of class subfolders, or .txt documents."
    )


def _audio_folder(path: Path):
    import datasets

    with open(path / AUDIO_METADATA, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    header = set(rows[0]) if rows else set()
    text_column = next((name for name in ("text", "transcription") if name in header), None)
    if rows and ("file_name" not in header or text_column is None):
        raise EvalInputError(
            f"{str(path / AUDIO_METADATA)!r} has columns {sorted(header)}; it needs a header 'file_name,text'."
        )
    audio, text = [], []
    for row in rows:
        file = path / row["file_name"]
        if not file.is_file():
            raise EvalInputError(f"{str(path / AUDIO_METADATA)!r} lists {row['file_name']!r}, which is not a file in {str(path)!r}.")
        audio.append(str(file))
        text.append(row[text_column])
    return datasets.Dataset.from_dict({"audio": audio, "text": text})


def _image_folder(path: Path, subfolders: list[Path]):
    import datasets

    images, labels = [], []
    for label, folder in enumerate(subfolders):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(str(file))
                labels.append(label)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[folder.name for folder in subfolders])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _standard_columns(dataset):
    """Rename alias columns, and keep audio columns undecoded (`audio` reads them)."""
    import datasets

    renames = {
        name: COLUMN_ALIASES[name]
        for name in dataset.column_names
        if name in COLUMN_ALIASES and COLUMN_ALIASES[name] not in dataset.column_names
    }
    dataset = dataset.rename_columns(renames) if renames else dataset
    if isinstance(dataset.features.get("audio"), datasets.Audio):
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    return dataset
