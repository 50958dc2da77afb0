#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd), loopback only.

usage: smtp_sink.py MAILDIR PORT [CERT KEY]
Each stored message starts with X-Envelope-To and X-Received-At (epoch
seconds when the server accepted it) lines.
With CERT and KEY it offers STARTTLS and refuses mail without it. Every
accepted message is written to MAILDIR/<n>.eml with an X-Envelope-To line.
Prints "READY" when listening; runs until killed.
"""
import asyncio
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, maildir):
        self.maildir = maildir
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        name = os.path.join(self.maildir, "%06d-%d.eml" % (self.n, os.getpid()))
        tmp = name + ".tmp"
        with open(tmp, "wb") as f:
            f.write(("X-Envelope-To: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            f.write(("X-Received-At: %.6f\r\n" % time.time()).encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, name)
        return "250 OK"


def main():
    maildir, port = sys.argv[1], int(sys.argv[2])
    os.makedirs(maildir, exist_ok=True)
    kwargs = {}
    if len(sys.argv) > 4:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        kwargs = {"tls_context": ctx, "require_starttls": True}
    controller = Controller(Sink(maildir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
