"""A real SMTP server (aiosmtpd) on loopback for freshet's e-mail tests.

Every accepted message is written, exactly as received, to `<n>.eml` in
`--dir`. The recipient's address picks the server's behaviour, so one server
serves every scenario:

- `bounce...@...`: 550 to RCPT (a permanent refusal);
- `greylist...@...`: 451 to the first attempt for that address, then accepted
  (a temporary refusal, as greylisting servers do);
- anything else: accepted.

With `--user` and `--password`, AUTH PLAIN/LOGIN with those is required.
With `--cert` and `--key`, STARTTLS is offered and required before MAIL.
Prints `listening on PORT` once it accepts connections, and exits when its
stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
import threading
import warnings
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.greylisted: set[str] = set()
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd's name)
        if address.startswith("bounce"):
            return "550 5.1.1 No such mailbox"
        if address.startswith("greylist") and address not in self.greylisted:
            self.greylisted.add(address)
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.count += 1
        path = self.folder / f"{self.count:06d}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(path)  # readers never see half a message
        return "250 Message accepted for delivery"


def authenticator(user: str, password: str):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
        # handled=False: aiosmtpd answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    handler = Handler(args.dir)
    auth = {}
    if args.user:
        # Plain-text AUTH on loopback is what the test is about; real servers want TLS first.
        auth = {"authenticator": authenticator(args.user, args.password or ""), "auth_require_tls": False, "auth_required": True}
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
        logging.getLogger("mail.log").setLevel(logging.ERROR)

    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        auth.update({"tls_context": context, "require_starttls": True})

    loop = asyncio.new_event_loop()
    # aiosmtpd's sessions schedule work on the current loop: make it this one.
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, hostname="freshet-test", **auth), "127.0.0.1", 0)
    )
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
    loop.run_forever()


if __name__ == "__main__":
    main()
