"""heimdall_kms.providers.aws.aliases beyond moto: ListAliases answers in pages (moto answers a
key's aliases in one), so the pages are given here, as AWS sends them."""

from __future__ import annotations

from typing import Any

from heimdall_kms.providers.aws.aliases import version_alias_of

ALIAS = "alias/heimdall-pii"


class Pages:
    """``call`` answering ListAliases from the given pages, following ``Marker``."""

    def __init__(self, *pages: list[str]) -> None:
        self.pages = pages
        self.markers: list[object] = []

    def __call__(self, operation: str, **params: Any) -> dict[str, Any]:
        assert operation == "ListAliases"
        assert params["KeyId"] == "key-1"
        self.markers.append(params.get("Marker"))
        index = len(self.markers) - 1
        page: dict[str, Any] = {"Aliases": [{"AliasName": n} for n in self.pages[index]]}
        if index + 1 < len(self.pages):
            page.update(Truncated=True, NextMarker=f"m{index + 1}")
        return page


class TestVersionAliasOf:
    def test_reads_the_next_page_until_the_version_alias(self) -> None:
        """The version alias on a later page is found, each page asked with its marker."""
        call = Pages(["alias/other"], [f"{ALIAS}/v3"], [f"{ALIAS}/v4"])
        assert version_alias_of(call, ALIAS, "key-1") == 3
        assert call.markers == [None, "m1"]  # the third page is never read

    def test_none_when_no_page_has_one(self) -> None:
        """Aliases of other names, or that only look like a version, are not versions."""
        call = Pages([ALIAS, f"{ALIAS}/v0"], [f"{ALIAS}/v1x", f"{ALIAS}-old/v2"])
        assert version_alias_of(call, ALIAS, "key-1") is None
        assert call.markers == [None, "m1"]

    def test_a_truncated_page_without_a_marker_ends_the_listing(self) -> None:
        """A page that says Truncated but gives no NextMarker is the last one read."""

        def call(operation: str, **params: Any) -> dict[str, Any]:
            assert "Marker" not in params
            return {"Aliases": [], "Truncated": True}

        assert version_alias_of(call, ALIAS, "key-1") is None
