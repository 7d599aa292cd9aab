"""``import cogview`` is light: inference loads no data preparation, shard writer or data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("cogview.data.prepare", "cogview.data.shards", "cogview.datasets")


def _loaded_after(code: str) -> list[str]:
    """The cogview modules of HEAVY (or inside them) loaded after running ``code`` in a fresh interpreter."""
    loaded = f"sorted(m for m in sys.modules if m.startswith({HEAVY!r}))"
    probe = f"import json, sys\n{code}\nprint(json.dumps({loaded}))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_cogview_and_the_pipeline_load_no_data_preparation() -> None:
    assert _loaded_after("import cogview, cogview.pipeline") == []
    assert _loaded_after("from cogview.generation import TextToImage") == []


def test_the_lazy_names_still_resolve() -> None:
    code = (
        "import cogview, cogview.data\n"
        "from cogview.data import TokenShards, default_vocab, prepare, sequence_length\n"
        "from cogview.data.prepare import DEFAULT_SR_WINDOW, LAYOUT_OVERHEAD\n"
        "from cogview.data.sequences import DEFAULT_SR_WINDOW as W, LAYOUT_OVERHEAD as O\n"
        "from cogview.tokenizers.vocab import default_vocab as v\n"
        "assert callable(prepare) and cogview.data.prepare is prepare and default_vocab is v\n"
        "assert (DEFAULT_SR_WINDOW, LAYOUT_OVERHEAD) == (W, O)\n"
        "assert cogview.datasets.load is not None and 'shapes' in cogview.datasets.DATASET_NAMES\n"
    )
    assert set(_loaded_after(code)) >= set(HEAVY)


def _openmp_settings(env_extra: dict[str, str]) -> tuple[str, str]:
    """(OMP_WAIT_POLICY, GOMP_SPINCOUNT) after ``import cogview`` in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    code = "import cogview, os, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    policy, spin = run.stdout.strip().splitlines()[-1].split()
    return policy, spin


def test_openmp_spins_briefly_unless_the_user_chose() -> None:
    # The default spin count made generation 3.6-5x slower beside another busy program
    # (benchmarks/thread_contention.py); the user's own settings are kept.
    assert _openmp_settings({}) == ("None", "10000")
    assert _openmp_settings({"GOMP_SPINCOUNT": "5"}) == ("None", "5")
    assert _openmp_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == ("ACTIVE", "None")
