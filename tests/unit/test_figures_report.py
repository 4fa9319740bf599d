"""deltarad.report drives headless Chromium: it must see script errors and what is displayed."""

from __future__ import annotations

import base64

import pytest

from deltarad.report import find_chromium, inspect_report
from deltarad.runlog import UserError

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="chromium not installed (apt-get install chromium)"
)
# A 1x1 PNG, and a page shaped like Snakemake's report menu: Results -> category -> file table.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5f6"
        "45400000000049454e44ae426082"
    )
).decode()
PAGE = f"""<html><body>
<ul id="menu"><li>Results</li><li><a href="#" id="cat">1. Cohort</a></li></ul>
<div id="view"></div>
<script>
document.getElementById("cat").onclick = () => {{
  document.getElementById("view").innerHTML =
    '<table><tbody><tr><td>results/figures/ok.png</td>' +
    '<td><a iconname="eye" id="e1">v</a></td></tr>' +
    '<tr><td>results/figures/broken.png</td>' +
    '<td><a iconname="eye" id="e2">v</a></td></tr></tbody></table>';
  document.getElementById("e1").onclick = () => {{
    document.getElementById("view").insertAdjacentHTML("beforeend",
      '<img src="data:image/png;charset=utf8;filename=ok.png;base64,{PIXEL}">');
  }};
  document.getElementById("e2").onclick = () => {{
    document.getElementById("view").insertAdjacentHTML("beforeend",
      '<img src="data:image/png;charset=utf8;filename=broken.png;base64,AAAA">');
  }};
}};
console.error("a console error");
setTimeout(() => {{ throw new Error("an uncaught error"); }}, 0);
</script></body></html>"""


def test_inspect_report_sees_errors_categories_and_broken_images(tmp_path):
    html = tmp_path / "page.html"
    html.write_text(PAGE)
    page = inspect_report(html, screenshot=tmp_path / "shot.png")
    assert any("an uncaught error" in e for e in page.errors), page.errors
    assert page.console == ["a console error"]
    assert page.categories == ["1. Cohort"]
    assert page.shown("ok.png") and not page.shown("broken.png")
    assert (tmp_path / "shot.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(UserError, match="no such report file"):
        inspect_report(tmp_path / "missing.html")
