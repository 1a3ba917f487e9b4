import pytest

pytestmark = pytest.mark.redis


def test_redis_fixture_serves_a_flushed_database(redis_url, redis_server):
    client = redis_server.client()
    assert client.dbsize() == 0
    client.set("k", "v")
    assert client.get("k") == "v"
    client.close()
