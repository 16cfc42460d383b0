"""The client helper: live runs from any Python OpenTelemetry SDK setup.

    from tracehouse.client import LiveSpanProcessor, TextStream

    provider.add_span_processor(LiveSpanProcessor(OTLPSpanExporter(...)))
    stream = TextStream(OTLPLogExporter(...))
    stream.write("Let me look that up", channel="reasoning")

Needs `opentelemetry-sdk` (`pip install 'tracehouse[client]'`).
"""

from tracehouse.client.live import LiveSpanProcessor, TextStream

__all__ = ["LiveSpanProcessor", "TextStream"]
