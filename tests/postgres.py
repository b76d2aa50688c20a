"""A throwaway PostgreSQL server on a Unix socket, for the tests and for CI.

    python tests/postgres.py available    # exit code 0 when initdb and pg_ctl are installed
    python tests/postgres.py start DIR    # initdb and start a server in DIR; prints its URL
    python tests/postgres.py stop DIR     # stop it (DIR can then be removed)

The server runs as the `postgres` user when this runs as root (PostgreSQL refuses root), listens
on no TCP port, trusts local connections, and holds one empty database, rigl_test.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

DATABASE = "rigl_test"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin; None without."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(folders[-1]) if folders and (Path(folders[-1]) / "initdb").exists() else None


def as_server_user(*command: str) -> list[str]:
    """The command as the postgres user when this process is root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def run(*command: str) -> None:
    result = subprocess.run(as_server_user(*command), capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def url(folder: Path) -> str:
    return f"postgresql+psycopg2://postgres@/{DATABASE}?host={Path(folder).resolve() / 'socket'}"


def start(folder: Path) -> str:
    """initdb (once) and start the server of FOLDER; its URL. FOLDER is made readable by the server."""
    folder, bin_dir = Path(folder).resolve(), binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's initdb is not installed")
    fresh = not (folder / "data").exists()
    (folder / "socket").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        folder.chmod(0o755)
        shutil.chown(folder / "socket", "postgres")
    if fresh:
        run(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w",
        "-o", f"-k {folder / 'socket'} -c listen_addresses='' -F", "start")
    if fresh:
        run(str(bin_dir / "createdb"), "-h", str(folder / "socket"), "-U", "postgres", DATABASE)
    return url(folder)


def stop(folder: Path) -> None:
    """Stop the server of FOLDER (fast: open connections are cut)."""
    run(str(binaries() / "pg_ctl"), "-D", str(Path(folder).resolve() / "data"), "-m", "fast", "-w", "stop")


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[-1])
    if action == "available":
        sys.exit(0 if binaries() is not None else 1)
    if action == "start":
        print(start(where))
    else:
        stop(where)
