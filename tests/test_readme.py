"""The README's Python examples run as written (the README stays true)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README should show the API and how to read the IR"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the example's values are real: the gradient has the weight's shape, the IR is printed text
    assert namespace["w"].grad.shape == (8, 3)
    assert namespace["lowered"].as_text().startswith("graph(")
