"""Where the Istio dumps are (../shared/istio-dumps: reference data beside the repository, never
committed): $ISTIO_DUMPS, the folder beside this checkout, or this machine's shared folder (a
clone made elsewhere, e.g. by CI in /tmp, has no ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DUMPS = next((p for p in (Path(os.environ["ISTIO_DUMPS"]) if os.environ.get("ISTIO_DUMPS") else None,
                          REPO.parent / "shared" / "istio-dumps",
                          Path("/work/shared/istio-dumps"))
              if p is not None and p.is_dir()), REPO.parent / "shared" / "istio-dumps")
