"""`cad score` start-up stays lean: the scoring path must not pull in training-only
libraries (scikit-learn brings pandas along and costs seconds per start)."""

from __future__ import annotations

import subprocess
import sys


def test_scoring_imports_no_training_only_libraries() -> None:
    code = (
        "import sys, cad.scoring.api, cad.scoring.run, cad.scoring.stream; "
        "print(sorted(m for m in ('sklearn', 'imblearn', 'pandas', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
