"""README's generated tables must be what the code generates now."""

from benchmarks.update_readme import README, SECTIONS, render


def test_presets_table_in_readme_is_current():
    text = README.read_text()
    assert render(text, {"presets": SECTIONS["presets"]}) == text, "run python benchmarks/update_readme.py"


def test_performance_section_in_readme_is_current():
    text = README.read_text()
    assert render(text, {"performance": SECTIONS["performance"]}) == text, "run python benchmarks/update_readme.py"
