"""Render the Evidently dashboard of a workspace project to a PNG with headless Chromium (for docs/).

    python monitoring/render_dashboard.py --workspace artifacts/evidently --out docs/dashboard.png
    python monitoring/render_dashboard.py --workspace artifacts/evidently --out docs/dashboard_runs.png --page reports

Starts ``evidently ui`` on a free loopback port, screenshots the project page and stops the server.
Needs Debian's ``chromium``; it draws the charts only with SwiftShader (``--use-angle=swiftshader
--enable-unsafe-swiftshader``), and the background-networking flags keep it from calling out.
"""
import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="artifacts/evidently")
    ap.add_argument("--project", default="rgalign-rec dev")
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--size", default="1400,3000")
    ap.add_argument("--wait-ms", type=int, default=60000, help="virtual time for the page to draw its charts")
    ap.add_argument("--page", choices=["dashboard", "reports"], default="dashboard",
                    help="the dashboard, or the list of named runs (snapshots) with their tags")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get install chromium")
    from monitoring.workspace import _ws
    found = _ws(a.workspace).search_project(a.project)
    if not found:
        sys.exit(f"no project {a.project!r} in {a.workspace}: publish to it first (rgalign monitor ab|drift --workspace)")
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", a.workspace,
                           "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("evidently ui did not start")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        page = "/reports" if a.page == "reports" else ""
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                            "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--no-first-run", "--disable-quic", f"--user-data-dir={profile}",
                            "--hide-scrollbars", f"--window-size={a.size}", f"--virtual-time-budget={a.wait_ms}",
                            f"--screenshot={Path(a.out).resolve()}", f"{url}/projects/{found[0].id}{page}"],
                           check=True, capture_output=True, timeout=180)
        print(f"written {a.out} ({Path(a.out).stat().st_size:,} bytes) from {url}/projects/{found[0].id}")
    finally:
        ui.terminate()
        ui.wait(30)


if __name__ == "__main__":
    main()
