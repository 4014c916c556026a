"""README's generated tables must be what the code generates now."""

from benchmarks.update_readme import README, SECTIONS, render


def test_presets_table_in_readme_is_current():
    text = README.read_text()
    assert render(text, {"presets": SECTIONS["presets"]}) == text, "run python benchmarks/update_readme.py"


def test_performance_section_in_readme_is_current():
    text = README.read_text()
    assert render(text, {"performance": SECTIONS["performance"]}) == text, "run python benchmarks/update_readme.py"


def test_training_results_in_readme_are_current():
    text = README.read_text()
    assert render(text, {"train_results": SECTIONS["train_results"]}) == text, "run python benchmarks/update_readme.py"


def test_stream_numbers_in_docs_come_from_the_results_file():
    from benchmarks.update_readme import PAGES, STREAMING_DOC

    text = STREAMING_DOC.read_text()
    assert render(text, PAGES[STREAMING_DOC]) == text, "run python benchmarks/update_readme.py"
    for page in (STREAMING_DOC, README):
        assert "was not in the package" not in page.read_text() and "20.8 poses/s" not in page.read_text()
