"""The README's first examples, run as a newcomer runs them: the ten lines, and the command line section
with its mymodels.py."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(section: str, lang: str) -> str:
    """The first ```lang block after the heading ``section``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"```{lang}\n", text.index(section)) + len(lang) + 4
    return text[start:text.index("```", start)]


def test_ten_lines(capsys):
    ns = {}
    exec(_block("## Ten lines", "python"), ns)
    assert ns["report"].ok and ns["report"].environment["dtype"] == "float64"  # "float64 by default"
    assert capsys.readouterr().out.startswith("torchbp.audit: OK")


def test_command_line_section_as_written(tmp_path):
    (tmp_path / "mymodels.py").write_text(_block("## Command line", "python"))
    env = dict(os.environ, GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"))
    commands = [line.split("#")[0].strip() for line in _block("## Command line", "bash").splitlines()]
    # the two audits, their comparison and the float32 audit with a Markdown summary (the last two lines
    # need a second machine's report, and describe this one)
    outputs = []
    for command in commands[:4]:
        argv = shlex.split(command.replace("$GITHUB_STEP_SUMMARY", env["GITHUB_STEP_SUMMARY"]))
        assert argv[0] == "torchbp"
        r = subprocess.run([sys.executable, "-m", "torchbp", *argv[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
        outputs.append(r.stdout)
    assert outputs[2].startswith("torchbp compare: same (bitwise)")  # two runs, one model, one report
    assert (tmp_path / "report.md").read_text().startswith("### ")
    assert (tmp_path / "summary.md").read_text().startswith("### ")
