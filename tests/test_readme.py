"""The README's generated parts stay in step with the code."""

from pathlib import Path

from cad.pipeline.graph import stage_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_stage_table_is_the_graphs():
    assert stage_table() in README.read_text(), (
        "README's stage table differs from cad.pipeline.graph.stage_table(); paste its output"
    )


def test_readme_starts_with_the_two_setup_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    commands = [line for line in block if not line.startswith("#")]
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must run the README's second command verbatim"
