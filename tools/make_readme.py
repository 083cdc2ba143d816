"""Write README.md from nbs/index.ipynb (Quarto, which `nbdev-readme` needs, cannot be installed here).
Markdown cells are copied; code cells become ```python blocks without their `#|` directives; cells marked
`#| hide` are left out. `--check` exits 1 if README.md is out of date."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def cell_text(cell):
    src = ''.join(cell['source'])
    if cell['cell_type'] == 'markdown': return src
    lines = src.splitlines()
    if any(l.strip() in ('#| hide', '#|hide') for l in lines): return None
    code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
    return f'```python\n{code}\n```' if code else None

def readme_text():
    nb = json.loads((root/'nbs'/'index.ipynb').read_text())
    parts = [t for t in map(cell_text, nb['cells']) if t]
    return '\n\n'.join(parts).strip() + '\n'

if __name__ == '__main__':
    text, readme = readme_text(), root/'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text: sys.exit('README.md is out of date: run `python tools/make_readme.py`')
    else: readme.write_text(text)
