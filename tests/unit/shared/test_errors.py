import pytest

from shared.errors import (
    InvalidInput,
    QueueFull,
    UnsupportedSize,
    UpstreamBadResponse,
    error_body,
    error_from_body,
    http_status_for,
)


def test_each_error_maps_to_its_documented_status():
    import shared.errors as errors

    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.SdserveError):
            doc = cls.__doc__ or ""
            if doc[:3].isdigit():
                assert http_status_for(cls("x")) == int(doc[:3]), name


def test_body_shape():
    assert error_body("t", "m") == {"error": {"type": "t", "message": "m"}}
    assert error_body("t", "m", "steps")["error"]["param"] == "steps"


def test_stage_error_is_translated_back_and_names_the_stage():
    body = error_body("unsupported_size", "size 1x1 is not served", "size")
    error = error_from_body(422, body, stage="diffusion")
    assert isinstance(error, UnsupportedSize)
    assert error.param == "size"
    assert error.message.startswith("diffusion stage:")
    full = error_from_body(503, error_body("queue_full", "busy"), stage="decoder")
    assert isinstance(full, QueueFull) and full.headers()["Retry-After"]


@pytest.mark.parametrize("body", [None, "oops", {"error": "x"}, {"detail": "Not Found"}])
def test_garbage_from_a_stage_is_a_bad_upstream_response(body):
    assert isinstance(error_from_body(500, body, stage="decoder"), UpstreamBadResponse)
    assert isinstance(error_from_body(400, body, stage="decoder"), UpstreamBadResponse)


def test_unknown_type_keeps_the_client_or_server_side():
    assert isinstance(error_from_body(400, error_body("weird", "m"), stage="s"), InvalidInput)
    assert isinstance(
        error_from_body(500, error_body("weird", "m"), stage="s"), UpstreamBadResponse
    )
