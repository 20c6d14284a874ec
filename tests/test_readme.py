"""The README's API example runs as written (with fewer epochs and posterior draws)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"```python\n(import pertpyro\n.*?)```", text, flags=re.S).group(1)
    fast = block.replace("max_epochs=100", "max_epochs=2").replace("n_samples=100", "n_samples=3")
    fast = fast.replace('model.ate("STAT1", responders=True)', 'model.ate("STAT1", responders=True, n_samples=3)')
    fast = fast.replace("adata_train=train)", "adata_train=train, predict_kwargs={'n_samples': 2}, iwelbo=False)")
    fast = fast.replace('do={"perturbation": "control"})', 'do={"perturbation": "control"}, n_samples=2)')
    fast = fast.replace("seed=0)  # Lightning", "seed=0, progress_bar=False)  # Lightning")
    assert fast != block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(fast, "README.md", "exec"), namespace)
    assert set(namespace["ate"].columns) == {"perturbation", "gene", "mean", "lower", "upper"}
    assert namespace["cf"].n_obs == 100
    assert (tmp_path / "ate.png").exists()
    assert namespace["model"].is_trained
    assert {"probability", "hit"} <= set(namespace["hits"].columns)
    assert {"method", "pearson_all"} <= set(namespace["table"].columns)
    assert (tmp_path / "runs" / "demo").is_dir()
