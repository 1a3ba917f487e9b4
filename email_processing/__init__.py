"""The pure core of render-signal: bytes of an email → parsed email → delivery links → decision → webhook payload.

No I/O here apart from the injected R2 ``Offloader`` (``orchestrator.process_email``) and the ``process-email``
command (``cli``), which reads one file.
"""
