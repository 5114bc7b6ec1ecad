from prometheus_client import generate_latest

from shared.metrics import ServiceMetrics, info_label


def test_a_stages_weights_are_a_plain_label_not_a_printed_dict():
    metrics = ServiceMetrics("text-encoder", list)
    metrics.set_info(
        {
            "service": "text-encoder",
            "family": "tiny",
            "weights": {"text_encoder": "embedded", "image_encoder": "random (seed 0)"},
        }
    )
    text = generate_latest(metrics.registry).decode()
    assert 'weights="text_encoder=embedded,image_encoder=random (seed 0)"' in text
    assert "{'" not in text
    assert info_label("embedded") == "embedded"
    assert info_label(["64x64", "128x128"]) == "64x64,128x128"
