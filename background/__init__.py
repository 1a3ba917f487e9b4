"""Background machinery of render-signal: the poller lease, the IMAP poller and the delivery loop."""
