"""Peak RSS of the Gunicorn worker that processes, through the IMAP path, one email with a 30 MB HTML part and a
20 MB attachment, against its idle RSS (issue 6 item 5: target < 60 MB above idle), and the processing time.

What runs (127.0.0.1, free ports, stopped by PID in ``finally`` even on Ctrl-C/SIGTERM): a real Dovecot (the
service reads it over IMAPS, IDLE on), a real webhook receiver in this process, and the service under a real
Gunicorn master with ONE worker (4 threads), SQLite state, ``harness.pipeline.service_env`` timings.

Steps: start; deliver one small warm-up email (modules imported, lease held, first cycle done); sample the worker's
RSS (psutil, every 10 ms, in a thread of this process) for 1 s: idle RSS = the median; APPEND the big email
(multipart/mixed: text/html of 30 MB decoded, base64, one Dropbox link near the top; application/octet-stream of
20 MB, base64; ~67 MB on the wire) over a plain IMAP session; keep sampling until the webhook arrives.
Peak = the highest sample from before the APPEND until the webhook. Processing time = webhook received − APPEND
finished (the APPEND of 67 MB itself is timed separately; Dovecot announces the message only once it is stored).

    .venv/bin/python -m bench.bench_big_email [--html-mb 30] [--attachment-mb 20]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import sys
import threading
import time
import uuid

from bench.bench_latency import Harness, result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MB = 1024 * 1024
LINK = "https://www.dropbox.com/scl/fi/bigmail0123456789abcd/Newsletter%20Assets.zip?rlkey=bigkey0123456789abcdefghi&dl=0"


def big_email(html_mb: int, attachment_mb: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    words = ("files", "ready", "newsletter", "render", "final", "download", "weekly", "digest", "offer", "news")
    row = ('<tr><td style="padding:8px"><p class="c{n}">{text}</p><div><span>{text}</span></div></td></tr>\n')
    rows = ['<html><head><title>Big newsletter</title></head><body><table width="600">\n',
            f'<tr><td><p>Your files:</p><a href="{LINK.replace("&", "&amp;")}">Download</a></td></tr>\n']
    size = sum(map(len, rows))
    n = 0
    while size < html_mb * MB - 30:
        text = " ".join(rng.choice(words) for _ in range(12))
        line = row.format(n=n % 7, text=text)
        rows.append(line)
        size += len(line)
        n += 1
    rows.append("</table></body></html>\n")
    html = "".join(rows).encode()[: html_mb * MB]
    attachment = rng.randbytes(attachment_mb * MB)
    boundary = "=_bench_" + uuid.uuid4().hex
    head = (f"From: Newsletter <news@example.com>\r\nTo: bot@example.com\r\nSubject: Big newsletter\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@bench.example>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n').encode()
    html_part = (f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
                 f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
    att_part = (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream; name=assets.bin\r\n"
                f'Content-Disposition: attachment; filename="assets.bin"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
    return b"".join([head, html_part, base64.encodebytes(html).replace(b"\n", b"\r\n"), att_part,
                     base64.encodebytes(attachment).replace(b"\n", b"\r\n"), f"\r\n--{boundary}--\r\n".encode()])


class RssSampler:
    """RSS of one process every ``interval`` seconds, in a daemon thread; samples are (time.time(), rss bytes)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.process.memory_info().rss))
            except Exception:  # the process went away
                return
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html-mb", type=int, default=30)
    parser.add_argument("--attachment-mb", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    from harness.mail import make_email
    from harness.pipeline import service_env

    raw = big_email(args.html_mb, args.attachment_mb)
    print(f"big email: text/html {args.html_mb} MB + attachment {args.attachment_mb} MB (both base64), "
          f"{len(raw) / MB:.1f} MB on the wire; real Gunicorn service, 1 worker x 4 threads, IMAPS, SQLite")
    try:
        with Harness() as h:
            dovecot = h.dovecot()
            account = dovecot.new_account("big")
            receiver = h.receiver()
            env = service_env(account, receiver, state_dir=h.tempdir("big-state-"), IMAP_USE_IDLE="true",
                              EMAIL_POLLING_INTERVAL_SECONDS="30")
            service = h.service(env, workers=1, threads=4)
            (worker_pid,) = service.worker_pids()
            import psutil

            fresh_rss = psutil.Process(worker_pid).memory_info().rss
            appender = dovecot.client(account.user, tls=False, timeout=60)
            h.on_close("imap appender", appender.logout)
            appender.append("INBOX", make_email())
            receiver.wait_for(1, timeout=60)
            time.sleep(1.0)

            sampler = RssSampler(worker_pid).start()
            h.on_close("rss sampler", sampler.stop)
            time.sleep(1.0)
            idle = statistics.median(rss for _, rss in sampler.samples)
            t_append = time.time()
            appender.append("INBOX", raw)
            t_appended = time.time()
            events = receiver.wait_for(2, timeout=args.timeout)
            received_at = events[-1]["received_at"]
            time.sleep(0.05)
            sampler.stop()
            payload = events[-1]["json"] or {}
            window = [rss for at, rss in sampler.samples if at >= t_append - 1.0]
            peak = max(window)
            after = sampler.samples[-1][1]
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130

    delta = (peak - idle) / MB
    processing = received_at - t_appended
    links = [link.get("provider") for link in payload.get("delivery_links") or []]
    print(f"  worker RSS right after start       {fresh_rss / MB:7.1f} MB")
    print(f"  worker RSS idle (after warm-up)    {idle / MB:7.1f} MB   (median of 1 s of 10 ms samples)")
    print(f"  worker RSS peak                    {peak / MB:7.1f} MB   ({len(window)} samples)")
    print(f"  peak − idle                        {delta:7.1f} MB   (target < 60 MB)")
    print(f"  worker RSS after the webhook       {after / MB:7.1f} MB")
    print(f"  APPEND of the big email            {t_appended - t_append:7.2f} s")
    print(f"  APPEND finished → webhook          {processing:7.2f} s")
    print(f"  webhook: links {links}, email_content {len(payload.get('email_content') or '')} chars, "
          f"truncated {payload.get('email_content_truncated')}")
    result("big_email_rss_delta", round(delta, 1), "MB", idle_mb=round(idle / MB, 1), peak_mb=round(peak / MB, 1),
           processing_s=round(processing, 3), append_s=round(t_appended - t_append, 3),
           wire_mb=round(len(raw) / MB, 1))
    result("big_email_processing", round(processing, 3), "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
