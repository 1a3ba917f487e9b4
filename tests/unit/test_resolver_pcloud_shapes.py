"""Pure parsing of the pCloud resolver: result codes, folder contents, expiry dates and the EU API (no socket)."""

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.resolution import ResolutionStatus
from services.resolvers.base import ResolverError
from services.resolvers.pcloud import api_base, expiry_seconds, folder_files, result_status


@pytest.mark.parametrize("code, status", [(0, None), (7001, ResolutionStatus.NOT_FOUND),
                                          (7002, ResolutionStatus.NOT_FOUND), (2009, ResolutionStatus.NOT_FOUND),
                                          (7004, ResolutionStatus.EXPIRED), (7005, ResolutionStatus.LIMIT_REACHED),
                                          (7006, ResolutionStatus.LIMIT_REACHED)])
def test_documented_result_codes_map_to_statuses(code, status):
    assert result_status({"result": code}) is status


@pytest.mark.parametrize("answer, reason", [({"result": 4000}, "rate_limited"), ({"result": 5000}, "provider_error"),
                                            ({"result": 9999}, "invalid_answer"), ({}, "invalid_answer"),
                                            ([], "invalid_answer")])
def test_transient_unknown_and_malformed_answers_raise(answer, reason):
    with pytest.raises(ResolverError) as caught:
        result_status(answer)
    assert caught.value.reason == reason


def test_folder_contents_are_flattened_depth_first():
    folder = {"isfolder": True, "contents": [{"name": "a"}, {"isfolder": True, "contents": [{"name": "b"}]},
                                             {"name": "c"}]}

    assert [item["name"] for item in folder_files(folder)] == ["a", "b", "c"]


def test_the_expiry_is_pclouds_rfc_2822_date_in_epoch_seconds():
    assert expiry_seconds("Thu, 03 Oct 2013 01:06:49 +0000") == 1380762409.0
    assert expiry_seconds("soon") is None and expiry_seconds(None) is None


def test_eu_links_use_the_eu_api_while_the_base_is_the_default():
    default = ProviderConfig("pcloud", endpoint=ProviderEndpoint("https://api.pcloud.com"))
    fake = ProviderConfig("pcloud", endpoint=ProviderEndpoint("http://127.0.0.1:9", allow_insecure=True))

    assert api_base("https://e.pcloud.link/publink/show?code=x", default) == "https://eapi.pcloud.com"
    assert api_base("https://u.pcloud.link/publink/show?code=x", default) == "https://api.pcloud.com"
    assert api_base("https://e.pcloud.link/publink/show?code=x", fake) == "http://127.0.0.1:9"
