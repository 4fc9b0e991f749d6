"""benchmarks/report.py: a script's --out replaces its own section of RESULTS.md and keeps the rest."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "report", Path(__file__).parents[1] / "benchmarks" / "report.py"
)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def test_write_section_replaces_only_its_markers(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\n## Other\nkeep me\n")
    report.write_section(page, "| a | 1 |", "bench")
    report.write_section(page, "| a | 2 |", "other-bench")
    report.write_section(page, "| a | 3 |\n", "bench")  # a second run replaces, never duplicates
    text = page.read_text()
    assert "keep me" in text and "| a | 1 |" not in text
    assert (
        text.count("<!-- bench:begin -->") == 1
        and "<!-- bench:begin -->\n| a | 3 |\n<!-- bench:end -->" in text
    )
    assert "<!-- other-bench:begin -->\n| a | 2 |\n<!-- other-bench:end -->" in text


def test_write_section_creates_a_missing_page(tmp_path):
    page = tmp_path / "new.md"
    report.write_section(page, "x", "k")
    assert (
        page.read_text().startswith("# Benchmark results")
        and "<!-- k:begin -->\nx\n<!-- k:end -->" in page.read_text()
    )
