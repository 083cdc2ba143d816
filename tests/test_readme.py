"""Every Python snippet of the README runs as written, in a fresh interpreter, in an empty directory.

A snippet that cannot run here (it downloads pretrained weights, say) must say so in its first line with
`# not run by the tests:` and why."""
import os, re, subprocess, sys
from pathlib import Path
import pytest

README = Path(__file__).resolve().parent.parent/'README.md'
SKIP = '# not run by the tests:'

def snippets()->list:
    return re.findall(r'^```python\n(.*?)^```$', README.read_text(), flags=re.S | re.M)

def test_the_readme_has_snippets(): assert len(snippets()) >= 2

@pytest.mark.parametrize('i', range(len(snippets())))
def test_readme_snippet_runs(i, tmp_path):
    code = snippets()[i]
    if code.startswith(SKIP): pytest.skip(code.splitlines()[0])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), MPLBACKEND='Agg')
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"README snippet {i} failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
