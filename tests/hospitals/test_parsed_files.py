from pathlib import Path

import pytest

from hospitals.parsed_files import ParsedFiles


class CountingParse:
    """Parses a file into its text, counting the parses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.path.read_text()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text("id,age\na,40\n")
    return path


def test_an_unchanged_file_is_parsed_once(data: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(data)

    first = files.parsed(data, "schema", parse)
    second = files.parsed(data, "schema", parse)

    assert first is second
    assert parse.calls == 1


def test_a_file_rewritten_to_the_same_size_is_parsed_again(data: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(data)
    files.parsed(data, "schema", parse)

    data.write_text("id,age\nb,41\n")  # same size, written at once: timestamps may not move

    assert files.parsed(data, "schema", parse) == "id,age\nb,41\n"
    assert parse.calls == 2


def test_other_arguments_replace_what_the_path_kept(data: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(data)

    files.parsed(data, "snapshot 1", parse)
    files.parsed(data, "snapshot 2", parse)
    files.parsed(data, "snapshot 1", parse)

    assert parse.calls == 3  # snapshot 1's result was dropped when snapshot 2's came


def test_a_failed_parse_keeps_nothing(data: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(data)
    files.parsed(data, "schema", parse)

    def failing() -> str:
        raise ValueError("bad cell")

    with pytest.raises(ValueError, match="bad cell"):
        files.parsed(data, "other schema", failing)
    files.parsed(data, "schema", parse)

    assert parse.calls == 2


def test_a_file_written_during_the_parse_is_parsed_again(data: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(data)

    def parse_then_write() -> str:
        text = parse()
        data.write_text("id,age\nc,42\n")
        return text

    files.parsed(data, "schema", parse_then_write)
    assert files.parsed(data, "schema", parse) == "id,age\nc,42\n"
    assert parse.calls == 2


def test_a_missing_file_is_never_kept(tmp_path: Path) -> None:
    files: ParsedFiles[str] = ParsedFiles()
    parse = CountingParse(tmp_path / "gone.csv")

    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            files.parsed(parse.path, "schema", parse)

    assert parse.calls == 2
