"""Fetch the real speech recordings the tests use: LibriVox utterances with transcripts and word
alignments from the PyPI source archive of `pocketsphinx` (its `test/data/librivox/`).

Run by `make setup` (`make test-media`); the archive is checked against its sha256 and only the
recordings, transcripts and alignments are kept, under `.cache/test-media/pocketsphinx-librivox/`
(written to a temporary folder, then renamed). Without network the tests that need them are skipped,
saying why. Usage: `python tests/data/fetch_test_media.py [--dest DIR]`.
"""

import argparse
import hashlib
import io
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEST = REPO / ".cache" / "test-media" / "pocketsphinx-librivox"
URL = ("https://files.pythonhosted.org/packages/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
       "pocketsphinx-5.1.1.tar.gz")
SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
MEMBER_DIR = "pocketsphinx-5.1.1/test/data/librivox/"
KEEP = (".wav", ".txt", ".json")


def fetch(dest: Path = DEST) -> Path:
    if dest.is_dir() and any(dest.glob("*.wav")):
        return dest
    with urllib.request.urlopen(URL, timeout=120) as r:
        data = r.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{URL}: sha256 {digest}, expected {SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                name = m.name
                if m.isfile() and name.startswith(MEMBER_DIR) and name.endswith(KEEP) and "/" not in name[len(MEMBER_DIR):] \
                        and not name.endswith((".phone.json", ".state.json")):
                    (tmp / Path(name).name).write_bytes(tar.extractfile(m).read())
        if not any(tmp.glob("*.wav")):
            raise RuntimeError(f"{URL}: no recording under {MEMBER_DIR}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=DEST)
    args = p.parse_args()
    try:
        out = fetch(args.dest)
    except Exception as exc:  # noqa: BLE001 - a command: one line and a non-zero exit
        print(f"error: could not fetch the test recordings: {exc}", file=sys.stderr)
        return 1
    print(f"test recordings: {out} ({len(list(out.glob('*.wav')))} wavs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
