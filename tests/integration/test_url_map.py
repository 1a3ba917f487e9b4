"""The URL map (issue 16): no redirect is ever built from the request's ``Host``, the routes answer where they live.

Werkzeug merges repeated slashes by default and answers ``GET /api//status`` with a 308 to
``http://<Host header>/api/status``: with a forged ``Host`` that is an open redirect. The app switches merging off.
"""

import pytest

TOKEN = "status-tok-Url-1"


@pytest.fixture
def client(make_app):
    return make_app({"STATUS_API_TOKEN": TOKEN}).test_client()


def get(client, path: str, headers: dict[str, str]):
    """GET ``path`` as the server sees it (the test client would read a leading ``//`` as a host)."""
    return client.get("/", headers=headers, environ_overrides={"PATH_INFO": path, "RAW_URI": path,
                                                               "REQUEST_URI": path})


@pytest.mark.parametrize("path", ["/api//status", "//api/status", "/api/status//", "/api///status", "//health",
                                  "/health//", "//metrics", "/metrics//", "//", "///"])
def test_repeated_slashes_never_redirect_to_the_forged_host(client, path):
    # Given a request with repeated slashes and a forged Host
    response = get(client, path, {"Host": "evil.example", "X-API-Key": TOKEN})
    # Then no redirect is answered, and nothing in the answer points at that host
    assert not 300 <= response.status_code < 400, (path, response.status_code, response.headers.get("Location"))
    assert "Location" not in response.headers
    assert "evil.example" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api//status", "/api///status", "/api/status//", "/health//"])
def test_repeated_slashes_inside_a_path_are_not_found(client, path):
    # (Leading slashes are stripped by Werkzeug's router before matching: ``//health`` is ``/health``.)
    assert get(client, path, {"Host": "evil.example", "X-API-Key": TOKEN}).status_code == 404


def test_a_trailing_slash_on_a_route_without_one_is_not_found_rather_than_redirected(client):
    response = get(client, "/api/status/", {"Host": "evil.example", "X-API-Key": TOKEN})
    assert response.status_code == 404
    assert "Location" not in response.headers


@pytest.mark.parametrize("path, headers", [
    ("/health", {}),
    ("/api/status", {"X-API-Key": TOKEN}),
    ("/metrics", {"X-API-Key": TOKEN}),
    ("/", {"Authorization": "Basic dXNlcjpzdGF0dXMtdG9rLVVybC0x"}),  # user:status-tok-Url-1
])
def test_every_route_still_answers_at_its_own_path(client, path, headers):
    response = get(client, path, {"Host": "evil.example", **headers})
    assert response.status_code == 200, (path, response.status_code)
    assert "Location" not in response.headers
