"""Pure transform of the Box resolver: a shared link's /shared/static/ form (no socket)."""

import pytest

from services.resolvers.box import box_direct_url, is_box_sign_in


@pytest.mark.parametrize("url, direct", [
    ("https://app.box.com/s/kwio6b4ovt1264rnfbyqo1", "https://app.box.com/shared/static/kwio6b4ovt1264rnfbyqo1"),
    ("https://acme.app.box.com/s/kwio6b4ovt1264rnfbyqo1/",
     "https://acme.app.box.com/shared/static/kwio6b4ovt1264rnfbyqo1"),
    ("https://app.box.com/shared/static/kwio6b4ovt1264rnfbyqo1.pdf?x=1",
     "https://app.box.com/shared/static/kwio6b4ovt1264rnfbyqo1.pdf"),
    ("https://acme.app.box.com/v/quarterly-report", None),
    ("https://app.box.com/s/kwio6b4ovt1264rnfbyqo1/file/123456", None)])
def test_a_shared_link_has_its_static_form_and_other_shapes_none(url, direct):
    assert box_direct_url(url) == direct


@pytest.mark.parametrize("url, sign_in", [("https://account.box.com/login", True),
                                          ("https://app.box.com/login?redirect_url=%2Fs%2Fx", True),
                                          ("https://app.box.com/loginpage-of-a-share", False),
                                          ("https://public.boxcloud.com/d/1/x/download", False)])
def test_box_sign_in_pages_are_recognised(url, sign_in):
    assert is_box_sign_in(url) is sign_in
