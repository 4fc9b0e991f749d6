"""Writing a benchmark's section into a markdown page (imported as ``report``: the scripts' own folder is on
sys.path), so that ``--out benchmarks/RESULTS.md`` replaces that script's section and leaves the rest alone."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, key: str) -> None:
    """Replace the section ``key`` of a markdown file (between its ``<!-- key:begin/end -->`` markers),
    or append it with its markers when the file has none (a missing file is created)."""
    begin, end_marker = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{section.rstrip()}\n{end_marker}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end_marker in text:
        start = text.index(begin)
        end = text.index(end_marker) + len(end_marker)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
