"""/docs and /redoc load every script and style from this installation, never a CDN."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_need_no_internet(client, path):
    page = client.get(path).content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets, page[:500]
    for asset in assets:
        assert not asset.startswith(("http://", "https://", "//")), asset
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200, asset
