"""Small helpers shared by the tests."""
import hashlib
from pathlib import Path


def tree_digest(root: Path) -> str:
    """Hash of every file's relative path and content below ``root`` (symlinks followed)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
