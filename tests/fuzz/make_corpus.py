#!/usr/bin/env python3
"""Writes the hand-made seed inputs of tests/fuzz/corpus/<target>/seed-*.

Seeds are realistic sessions in each target's input layout (see the comment at the top of each
fuzz_*.cpp and flow_driver.hpp). Run it after changing a layout:  python3 tests/fuzz/make_corpus.py
Only files named seed-* are rewritten; inputs found by fuzzing (named by their SHA-1) stay.
"""
import base64
import json
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

C, U = "client", "upstream"


def b64(b):
    return base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()


def plain(user, password, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


def chunk_bytes(peer, data):
    """Chunk headers (fuzz_common.hpp): bit 7 peer, bits 0-5 length-1, bit 6 = x64."""
    out = bytearray()
    up = 0x80 if peer == U else 0
    while data:
        if len(data) >= 64:
            k = min(len(data) // 64, 64)
            n = k * 64
            out.append(up | 0x40 | (k - 1))
        else:
            n = len(data)
            out.append(up | (n - 1))
        out += data[:n]
        data = data[n:]
    return bytes(out)


def chunks(events, split=None):
    """events: [(peer, text)]; one read per event (split further into `split`-byte reads)."""
    out = bytearray()
    for peer, text in events:
        data = text.encode("latin-1") if isinstance(text, str) else text
        if split:
            for i in range(0, len(data), split):
                out += chunk_bytes(peer, data[i:i + split])
        else:
            out += chunk_bytes(peer, data)
    return bytes(out)


def flow(flags, events, outcomes=0, fail_at=0, split=None):
    return bytes([flags, outcomes, fail_at]) + chunks(events, split)


# flow_driver.hpp flags
STARTTLS, CLIENT_TLS, UP_STARTTLS, ANON, SMALL, SENDERS, LOWFAIL, LONGTOKEN = (
    1, 2, 4, 8, 16, 32, 64, 128)
# outcomes, 2 bits per login: 0 ok, 1 bad_credentials, 2 temporary, 3 contact_admin
BAD_THEN_OK = 0b0001
TEMP_THEN_ADMIN_THEN_OK = 0b001110

corpus = {}


def seed(target, name, data):
    corpus.setdefault(target, {})[name] = data


# ---------------------------------------------------------------- IMAP flow
IMAP_GREETING_CAPS = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=XOAUTH2] Dovecot ready.\r\n"
IMAP_OK = "xo3 OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE SORT THREAD=REFERENCES LITERAL+] Logged in\r\n"
imap = [
    ("login-atoms", 0, [(C, "a1 CAPABILITY\r\n"), (C, "a2 LOGIN scanner@contoso.com s3cret\r\n"),
                        (U, IMAP_GREETING_CAPS), (U, IMAP_OK), (C, "a3 SELECT INBOX\r\n")]),
    ("login-pipelined", 0, [(C, "a1 LOGIN scanner@contoso.com s3cret\r\na2 SELECT INBOX\r\na3 FETCH 1 BODY[]\r\n"),
                            (U, IMAP_GREETING_CAPS + IMAP_OK + "* 3 EXISTS\r\n")]),
    ("login-quoted", 0, [(C, 'a1 LOGIN "scanner@contoso.com" "pa ss\\"word\\\\"\r\n'),
                         (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("login-sync-literals", 0, [(C, "a1 LOGIN {19}\r\n"), (C, "scanner@contoso.com {8}\r\n"),
                                (C, "p@ss w0r\r\n"), (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("login-literal-plus", 0, [(C, "a1 LOGIN {19+}\r\nscanner@contoso.com {6+}\r\nsecret\r\n"),
                               (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("login-utf8", 0, [(C, "a1 LOGIN {12+}\r\nj\xc3\xbcrgen@x.de \"p\xc3\xa4ss\"\r\n"),
                       (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("auth-plain-ir", 0, [(C, "a1 AUTHENTICATE PLAIN " + plain("scanner@contoso.com", "s3cret") + "\r\n"),
                          (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("auth-plain-authzid", 0, [(C, "a1 AUTHENTICATE PLAIN " + plain("scanner@contoso.com", "s3cret", "shared@contoso.com") + "\r\n"),
                               (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("auth-plain-continuation", 0, [(C, "a1 AUTHENTICATE PLAIN\r\n"), (C, plain("scanner@contoso.com", "s3cret") + "\r\n"),
                                    (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("auth-plain-empty-ir", 0, [(C, "a1 AUTHENTICATE PLAIN =\r\n"), (C, "a2 LOGOUT\r\n")]),
    ("auth-login", 0, [(C, "a1 authenticate login\r\n"), (C, b64("scanner@contoso.com") + "\r\n"),
                       (C, b64("s3cret") + "\r\n"), (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("auth-cancel", 0, [(C, "a1 AUTHENTICATE LOGIN\r\n"), (C, "*\r\n"), (C, "a2 AUTHENTICATE CRAM-MD5\r\n"),
                        (C, "a3 AUTHENTICATE PLAIN !!!notbase64\r\n"), (C, "a4 LOGOUT\r\n")]),
    ("no-caps-in-greeting", 0, [(C, "a1 LOGIN u p\r\n"), (U, "* OK IMAP4rev1 Service Ready\r\n"),
                                (U, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nxo2 OK CAPABILITY completed\r\n"),
                                (U, "+ \r\n"), (U, "xo3 OK AUTHENTICATE completed.\r\n")]),
    ("upstream-starttls", UP_STARTTLS, [(C, "a1 LOGIN u p\r\n"), (U, "* OK The Microsoft Exchange IMAP4 service is ready.\r\n"),
                                        (U, "xo1 OK Begin TLS negotiation now.\r\n"),
                                        (U, "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID\r\nxo2 OK CAPABILITY completed.\r\n"),
                                        (U, "xo3 OK AUTHENTICATE completed.\r\n")]),
    ("upstream-starttls-injection", UP_STARTTLS, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
                                                  (U, "xo1 OK Begin TLS\r\n* CAPABILITY evil\r\n")]),
    ("client-starttls", STARTTLS, [(C, "a1 CAPABILITY\r\n"), (C, "a2 STARTTLS\r\n"), (C, "a3 CAPABILITY\r\n"),
                                   (C, "a4 LOGIN u p\r\n"), (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("client-starttls-pipelined", STARTTLS, [(C, "a1 STARTTLS\r\na2 LOGIN u p\r\n")]),
    ("client-starttls-implicit", STARTTLS | CLIENT_TLS, [(C, "a1 STARTTLS\r\na2 NOOP\r\na3 LOGOUT\r\n")]),
    ("token-rejected", 0, [(C, "a1 LOGIN u p\r\n"), (U, IMAP_GREETING_CAPS),
                           (U, "xo3 NO AUTHENTICATE failed.\r\n"), (C, "a2 LOGIN u p\r\n"),
                           (U, IMAP_GREETING_CAPS), (U, IMAP_OK)]),
    ("error-challenge", 0, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
                            (U, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nxo2 OK done\r\n"), (U, "+ \r\n"),
                            (U, "+ " + b64('{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}') + "\r\n"),
                            (U, "xo3 NO [AUTHENTICATIONFAILED] AUTHENTICATE failed.\r\n"), (C, "a2 LOGOUT\r\n")]),
    ("untagged-during-auth", 0, [(C, "a1 LOGIN u p\r\n"), (U, IMAP_GREETING_CAPS),
                                 (U, "* CAPABILITY IMAP4rev1 IDLE\r\n* OK [ALERT] hello\r\nxo3 OK done\r\n* 1 EXISTS\r\n")]),
    ("greeting-bye", 0, [(C, "a1 LOGIN u p\r\n"), (U, "* BYE too busy\r\n"), (C, "a2 LOGIN u p\r\n"),
                         (U, "garbage\r\n")]),
    ("outcomes-bad-then-ok", 0, [(C, "a1 LOGIN u wrong\r\n"), (C, "a2 LOGIN u right\r\n"),
                                 (U, IMAP_GREETING_CAPS), (U, IMAP_OK)], BAD_THEN_OK),
    ("outcomes-temp-admin", LOWFAIL, [(C, "a1 LOGIN u p\r\na2 LOGIN u p\r\na3 LOGIN u p\r\n")],
     TEMP_THEN_ADMIN_THEN_OK),
    ("commands", 0, [(C, "a1 NOOP\r\na2 ID (\"name\" \"scanner\" \"version\" \"1.0\")\r\na3 CAPABILITY\r\n"
                        "a4 SELECT INBOX\r\n* BAD\r\n+ tag\r\n\r\nx\r\na5 LOGIN\r\na6 LOGIN (a) b\r\na7 LOGOUT\r\n")]),
    ("bad-syntax", 0, [(C, "a1 LOGIN \"unterminated\r\na2 LOGIN \"bad\\escape\" x\r\na3 LOGIN {abc}\r\n"
                          "a4 LOGIN {5}x\r\na5 LOGIN a\rb c\r\na6 LOGIN {2+}\r\n\0\0\r\n")]),
    ("too-many-bad", 0, [(C, "x\r\n" * 12)]),
    ("long-line", 0, [(C, "a1 LOGIN " + "u" * 9000 + " p\r\n")]),
    ("small-limits", SMALL, [(C, "a1 LOGIN {100}\r\n"), (C, "a2 LOGIN {100+}\r\n" + "x" * 100 + "\r\n"),
                             (C, "a3 LOGIN " + "u" * 80 + " p\r\n")]),
    ("small-limits-upstream", SMALL, [(C, "a1 LOGIN u p\r\n"), (U, "* OK " + "x" * 100 + "\r\n")]),
    ("long-token", LONGTOKEN, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
                               (U, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nxo2 OK done\r\n"), (U, "+\r\n"),
                               (U, IMAP_OK)]),
    ("client-eof", 0, [(C, "a1 NOOP\r\n")]),
    ("upstream-eof", 0, [(C, "a1 LOGIN u p\r\na2 LOGOUT\r\n"), (U, "* OK ready\r\n")]),
]
for name, flags, ev, *rest in imap:
    outcomes = rest[0] if rest else 0
    seed("fuzz_imap_flow", name, flow(flags, ev, outcomes))
seed("fuzz_imap_flow", "login-bytewise", flow(0, [(C, "a1 LOGIN {3}\r\nabc {3}\r\ndef\r\n"),
                                                  (U, IMAP_GREETING_CAPS), (U, IMAP_OK)], split=1))
for i in (1, 2, 3, 4, 5):
    seed("fuzz_imap_flow", f"fail-at-{i}", flow(UP_STARTTLS, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
                                                             (U, "xo1 OK go\r\n"), (U, "* CAPABILITY X\r\nxo2 OK\r\n"),
                                                             (U, IMAP_OK)], fail_at=i))

# ---------------------------------------------------------------- SMTP flow
SMTP_GREET = "220 mail.contoso.test ESMTP Postfix\r\n"
SMTP_EHLO_PRE = ("250-mail.contoso.test\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n"
                 "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
SMTP_TLS = "220 2.0.0 Ready to start TLS\r\n"
SMTP_EHLO_TLS = ("250-mail.contoso.test Hello [10.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n"
                 "250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n"
                 "250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n")
SMTP_UP = [(U, SMTP_GREET), (U, SMTP_EHLO_PRE), (U, SMTP_TLS), (U, SMTP_EHLO_TLS)]
SMTP_OK = "235 2.7.0 Authentication successful\r\n"
S = UP_STARTTLS
smtp = [
    ("auth-plain-ir", S, SMTP_UP + [(C, "EHLO scanner.local\r\n"), (C, "AUTH PLAIN " + plain("scanner@contoso.com", "s3cret") + "\r\n"),
                                    (U, SMTP_OK), (C, "MAIL FROM:<scanner@contoso.com>\r\n")]),
    ("auth-plain-pipelined", S, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"),
                                           (U, SMTP_OK + "250 2.1.0 Ok\r\n")]),
    ("auth-plain-continuation", S, SMTP_UP + [(C, "EHLO x\r\n"), (C, "AUTH PLAIN\r\n"), (C, plain("u", "p") + "\r\n"), (U, SMTP_OK)]),
    ("auth-login", S, SMTP_UP + [(C, "ehlo x\r\n"), (C, "auth login\r\n"), (C, b64("scanner@contoso.com") + "\r\n"),
                                 (C, b64("s3cret") + "\r\n"), (U, SMTP_OK)]),
    ("auth-login-ir", S, SMTP_UP + [(C, "EHLO x\r\nAUTH LOGIN " + b64("u") + "\r\n" + b64("p") + "\r\n"), (U, SMTP_OK)]),
    ("auth-cancel-and-errors", S, SMTP_UP + [(C, "AUTH PLAIN\r\nEHLO\r\nHELO x\r\nAUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\nAUTH\r\n"
                                                 "AUTH PLAIN =\r\nAUTH PLAIN !!!!\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 10 LAST\r\n"
                                                 "RSET\r\nNOOP\r\nHELP\r\nVRFY x\r\nXYZZY\r\nQUIT\r\n")]),
    ("continuation-long-token", S | LONGTOKEN, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"),
                                                          (U, "334 \r\n"), (U, SMTP_OK)]),
    ("error-challenge", S, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"),
                                      (U, "334 " + b64('{"status":"400","schemes":"Bearer","scope":"https://outlook.office365.com/.default"}') + "\r\n"),
                                      (U, "535 5.7.3 Authentication unsuccessful [SN4PR0201CA0005.namprd02.prod.outlook.com]\r\n"),
                                      (C, "AUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)]),
    ("smtp-auth-disabled", S, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"),
                                         (U, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n"),
                                         (C, "QUIT\r\n")]),
    ("temporary-454", S, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"),
                                    (U, "454 4.7.0 Temporary authentication failure\r\n"), (C, "QUIT\r\n")]),
    ("no-upstream-starttls", 0, [(U, SMTP_GREET), (U, SMTP_EHLO_TLS), (C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)]),
    ("upstream-no-starttls-offered", S, [(U, SMTP_GREET), (U, "250 mail\r\n"), (C, "EHLO x\r\n")]),
    ("upstream-starttls-refused", S, [(U, SMTP_GREET), (U, SMTP_EHLO_PRE), (U, "454 4.7.0 TLS not available\r\n")]),
    ("upstream-starttls-injection", S, [(U, SMTP_GREET), (U, SMTP_EHLO_PRE), (U, SMTP_TLS + "250 injected\r\n")]),
    ("upstream-greeting-554", S, [(U, "554 5.3.2 Service unavailable\r\n"), (C, "EHLO x\r\n")]),
    ("upstream-garbage", S, [(U, "HTTP/1.1 400 Bad Request\r\n")]),
    ("upstream-multiline-greeting", S, [(U, "220-mail.test ESMTP\r\n220-second line\r\n220 last\r\n"), (U, SMTP_EHLO_PRE),
                                        (U, SMTP_TLS), (U, SMTP_EHLO_TLS), (C, "EHLO x\r\n")]),
    ("client-starttls", S | STARTTLS, SMTP_UP + [(C, "EHLO x\r\n"), (C, "STARTTLS\r\n"), (C, "EHLO x\r\n"),
                                                 (C, "STARTTLS\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)]),
    ("client-starttls-pipelined", S | STARTTLS, SMTP_UP + [(C, "EHLO x\r\nSTARTTLS\r\nAUTH PLAIN " + plain("u", "p") + "\r\n")]),
    ("anonymous-mail", S | ANON, SMTP_UP + [(C, "EHLO printer\r\nMAIL FROM:<printer@contoso.com>\r\nRCPT TO:<a@b.c>\r\n"),
                                            (U, SMTP_OK + "250 2.1.0 Sender OK\r\n")]),
    ("anonymous-refused", S | ANON, SMTP_UP + [(C, "EHLO printer\r\nMAIL FROM:<p@c.com>\r\n"), (C, "MAIL FROM:<p@c.com>\r\n"),
                                               (U, "535 5.7.3 no\r\n"), (C, "MAIL FROM:<p@c.com>\r\n")], 0b0001),
    ("allowed-senders", S | SENDERS, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)]),
    ("outcomes", S | LOWFAIL, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\nAUTH PLAIN " + plain("u", "p") + "\r\n")],
     TEMP_THEN_ADMIN_THEN_OK),
    ("long-line", S, SMTP_UP + [(C, "EHLO " + "x" * 17000 + "\r\n")]),
    ("small-limits", S | SMALL, SMTP_UP + [(C, "AUTH PLAIN " + "A" * 100 + "\r\n")]),
    ("bare-lf", S, SMTP_UP + [(C, "EHLO x\nAUTH PLAIN " + plain("u", "p") + "\n"), (U, "235 ok\n")]),
    ("upstream-eof", S, [(U, SMTP_GREET)]),
]
for name, flags, ev, *rest in smtp:
    outcomes = rest[0] if rest else 0
    seed("fuzz_smtp_flow", name, flow(flags, ev, outcomes))
for i in (1, 2, 3, 4, 6):
    seed("fuzz_smtp_flow", f"fail-at-{i}", flow(S, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)], fail_at=i))
seed("fuzz_smtp_flow", "bytewise", flow(S, SMTP_UP + [(C, "EHLO x\r\nAUTH LOGIN\r\n" + b64("u") + "\r\n" + b64("p") + "\r\n"), (U, SMTP_OK)], split=1))

# ---------------------------------------------------------------- POP3 flow
POP_GREET = "+OK Dovecot ready.\r\n"
POP_OK = "+OK Logged in.\r\n"
pop3 = [
    ("user-pass", 0, [(C, "CAPA\r\n"), (C, "USER scanner@contoso.com\r\n"), (C, "PASS s3cret with spaces\r\n"),
                      (U, POP_GREET), (U, "+ \r\n"), (U, POP_OK), (C, "STAT\r\n")]),
    ("user-pass-pipelined", 0, [(C, "USER u\r\nPASS p\r\nSTAT\r\nLIST\r\nRETR 1\r\n"), (U, POP_GREET + "+ \r\n" + POP_OK)]),
    ("auth-plain-ir", 0, [(C, "AUTH PLAIN " + plain("scanner@contoso.com", "s3cret") + "\r\n"), (U, POP_GREET), (U, "+\r\n"), (U, POP_OK)]),
    ("auth-plain-continuation", 0, [(C, "AUTH PLAIN\r\n"), (C, plain("u", "p", "shared@contoso.com") + "\r\n"), (U, POP_GREET), (U, "+ \r\n"), (U, POP_OK)]),
    ("auth-login", 0, [(C, "AUTH LOGIN\r\n"), (C, b64("u") + "\r\n"), (C, b64("p") + "  \r\n"), (U, POP_GREET), (U, "+ \r\n"), (U, POP_OK)]),
    ("auth-login-ir", 0, [(C, "auth login " + b64("u") + "\r\n" + b64("p") + "\r\n"), (U, POP_GREET + "+ \r\n" + POP_OK)]),
    ("auth-list-cancel", 0, [(C, "AUTH\r\nAUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\nAUTH PLAIN a b\r\nAUTH PLAIN =\r\nAUTH LOGIN =\r\nAUTH PLAIN !!\r\nQUIT\r\n")]),
    ("commands", 0, [(C, "NOOP\r\nSTAT\r\nAPOP u 0123456789abcdef\r\nPASS x\r\nUSER\r\nUSER u\r\nPASS\r\nCAPA\r\nQUIT\r\n")]),
    ("client-stls", STARTTLS, [(C, "CAPA\r\n"), (C, "USER u\r\n"), (C, "STLS\r\n"), (C, "PASS p\r\n"), (C, "STLS\r\n"), (C, "USER u\r\nPASS p\r\n"),
                               (U, POP_GREET + "+ \r\n" + POP_OK)]),
    ("client-stls-pipelined", STARTTLS, [(C, "STLS\r\nUSER u\r\n")]),
    ("client-stls-args", STARTTLS, [(C, "STLS now\r\nQUIT\r\n")]),
    ("upstream-stls", UP_STARTTLS, [(C, "USER u\r\nPASS p\r\n"), (U, "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"),
                                    (U, "+OK Begin TLS negotiation\r\n"), (U, "+ \r\n"), (U, POP_OK)]),
    ("upstream-stls-injection", UP_STARTTLS, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "+OK Begin TLS\r\n+OK injected\r\n")]),
    ("token-rejected", 0, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "+ \r\n"),
                           (U, "+ " + b64('{"status":"401","schemes":"bearer"}') + "\r\n"),
                           (U, "-ERR [AUTH] Authentication failure.\r\n"), (C, "USER u\r\nPASS p\r\n"),
                           (U, POP_GREET + "+ \r\n" + POP_OK)]),
    ("in-use", 0, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "+ \r\n"), (U, "-ERR [IN-USE] Mailbox is locked\r\n"), (C, "QUIT\r\n")]),
    ("sys-temp", LOWFAIL, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "+ \r\n"), (U, "-ERR [SYS/TEMP] try later\r\n")]),
    ("upstream-refuses-auth", 0, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "-ERR unknown command\r\n"), (C, "QUIT\r\n")]),
    ("upstream-bad-greeting", 0, [(C, "USER u\r\nPASS p\r\n"), (U, "-ERR go away\r\n"), (C, "USER u\r\nPASS p\r\n"), (U, "* OK imap?\r\n")]),
    ("outcomes", LOWFAIL, [(C, "USER u\r\nPASS p\r\nUSER u\r\nPASS p\r\n")], TEMP_THEN_ADMIN_THEN_OK),
    ("bad-then-ok", 0, [(C, "USER u\r\nPASS wrong\r\nUSER u\r\nPASS right\r\n"), (U, POP_GREET + "+ \r\n" + POP_OK)], BAD_THEN_OK),
    ("too-many-bad", 0, [(C, "XYZ\r\n" * 12)]),
    ("long-line", 0, [(C, "USER " + "u" * 9000 + "\r\n")]),
    ("small-limits", SMALL, [(C, "USER " + "u" * 100 + "\r\n")]),
    ("small-limits-upstream", SMALL, [(C, "USER u\r\nPASS p\r\n"), (U, "+OK " + "x" * 100 + "\r\n")]),
    ("long-token", LONGTOKEN, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET + "+ \r\n" + POP_OK)]),
    ("bare-lf", 0, [(C, "USER u\nPASS p\n"), (U, "+OK hi\n+ \n+OK in\n")]),
]
for name, flags, ev, *rest in pop3:
    outcomes = rest[0] if rest else 0
    seed("fuzz_pop3_flow", name, flow(flags, ev, outcomes))
for i in (1, 2, 3, 4):
    seed("fuzz_pop3_flow", f"fail-at-{i}", flow(UP_STARTTLS, [(C, "USER u\r\nPASS p\r\n"), (U, POP_GREET), (U, "+OK go\r\n"), (U, "+ \r\n"), (U, POP_OK)], fail_at=i))
seed("fuzz_pop3_flow", "bytewise", flow(0, [(C, "AUTH PLAIN " + plain("u", "p") + "\r\n"), (U, POP_GREET + "+ \r\n" + POP_OK)], split=1))

# ---------------------------------------------------------------- IMAP lexer
lexer = {
    "login": "a1 LOGIN user pass\r\n",
    "quoted": 'a1 LOGIN "us\\"er" "p\\\\ass word"\r\n',
    "literals": "a1 LOGIN {4}\r\nuser {4}\r\npass\r\n",
    "literal-plus": "a1 LOGIN {4+}\r\nuser {4+}\r\npass\r\n",
    "literal-empty": "a1 LOGIN {0}\r\n {0+}\r\n\r\n",
    "literal-nul": "a1 LOGIN {3+}\r\na\0b x\r\na2 NOOP\r\n",
    "literal-too-large": "a1 LOGIN {99999999}\r\na2 LOGIN {99999999+}\r\nxx\r\n",
    "literal-bad": "a1 LOGIN {12a}\r\na2 LOGIN {5}x\r\na3 LOGIN {-1}\r\na4 LOGIN {18446744073709551616}\r\n",
    "authenticate-ir": "a1 AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
    "authenticate-lines": "a1 AUTHENTICATE LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\na2 NOOP\r\n",
    "authenticate-cancel": "a1 AUTHENTICATE PLAIN\r\n*\r\na2 LOGOUT\r\n",
    "id-parens": 'a1 ID ("name" "x" "version" NIL)\r\n',
    "pipelined": "a1 CAPABILITY\r\na2 NOOP\r\na3 STARTTLS\r\na4 LOGOUT\r\n",
    "bare-lf": "a1 NOOP\na2 LOGIN u p\n",
    "bare-cr": "a1 LOGIN u\rp\r\n",
    "bad-tags": "+ NOOP\r\n* NOOP\r\n\r\n a1\r\na1\r\na1 \r\n(x) NOOP\r\na%b NOOP\r\n",
    "bad-chars": 'a1 LOGIN u\x01 p\r\na2 LOGIN "a\\x" b\r\na3 LOGIN "unterminated\r\n',
    "eight-bit": "a1 LOGIN j\xfcrgen p\xe4ss\r\n",
    "long-line": "a1 LOGIN " + "x" * 70 + "\r\n",
}
for name, text in lexer.items():
    data = text.encode("latin-1")
    seed("fuzz_imap_lexer", name, bytes([0]) + chunks([(C, data)]))
    seed("fuzz_imap_lexer", name + "-small", bytes([1]) + chunks([(C, data)], split=7))

# ---------------------------------------------------------------- SMTP reply parser
replies = {
    "greeting": SMTP_GREET,
    "ehlo": SMTP_EHLO_TLS,
    "auth": "334 \r\n334 VXNlcm5hbWU6\r\n235 2.7.0 Authentication successful\r\n",
    "bare-code": "250\r\n354\r\n",
    "bare-lf": "250-a\n250 b\n",
    "errors": "535 5.7.3 Authentication unsuccessful\r\n454 4.7.0 Try again\r\n",
    "code-change": "250-a\r\n251 b\r\n",
    "malformed": "25 x\r\n",
    "bad-separator": "250_x\r\n",
    "not-smtp": "+OK POP3 ready\r\n",
    "six-hundred": "600 x\r\n",
    "long": "250-" + "x" * 5000 + "\r\n250 ok\r\n",
    "many-lines": "250-x\r\n" * 130 + "250 x\r\n",
}
for name, text in replies.items():
    data = text.encode()
    seed("fuzz_smtp_reply_parser", name, bytes([0]) + chunks([(U, data)]))
    # max_line 48, max_lines 4 (no line of exactly 48 characters: see crashes/README.md)
    seed("fuzz_smtp_reply_parser", name + "-small", bytes([0x80 | 0x40 | 40]) + chunks([(U, data)], split=5))

# ---------------------------------------------------------------- SMTP sender filter
tx_ok = "MAIL FROM:<scanner@contoso.com> SIZE=1234\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
body = "Subject: hi\r\n\r\n..leading dot\r\nMAIL FROM:<evil@x.y>\r\n.\r\n"
raw_sessions = {
    "allowed": [(C, tx_ok), (U, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"), (C, body), (U, "250 2.0.0 Ok: queued\r\n"),
                (C, "QUIT\r\n"), (U, "221 2.0.0 Bye\r\n")],
    "refused": [(C, "MAIL FROM:<boss@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n"), (U, "250 Ok\r\n503 need MAIL\r\n"),
                (U, "503 need RCPT\r\n"), (C, "RSET\r\nMAIL FROM:<x@fabrikam.com>\r\n"), (U, "250 Ok\r\n250 Ok\r\n")],
    "data-rejected": [(C, "MAIL FROM:<boss@contoso.com>\r\nDATA\r\nMAIL FROM:<evil@x.y>\r\n"), (U, "250 Ok\r\n554 no recipients\r\n250 Ok\r\n")],
    "bdat": [(C, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nBDAT 27 LAST\r\nMAIL FROM:<evil@evil.com>\r\n"),
             (U, "250 Ok\r\n250 Ok\r\n250 Ok queued\r\n")],
    "bdat-multi": [(C, "MAIL FROM:<a@fabrikam.com>\r\nBDAT 5\r\nhelloBDAT 0 LAST\r\n"), (U, "250 a\r\n250 b\r\n250 c\r\n")],
    "null-sender": [(C, "MAIL FROM:<>\r\nmail from: <Scanner@CONTOSO.com>\r\nMAIL FROM:scanner@contoso.com\r\n"), (U, "250 a\r\n250 b\r\n250 c\r\n")],
    "multiline-replies": [(C, "EHLO x\r\nMAIL FROM:<boss@x.com>\r\n"), (U, SMTP_EHLO_TLS + "250 ok\r\n")],
    "broken-upstream": [(C, "NOOP\r\n"), (U, "HTTP/1.1 200 OK\r\n")],
    "split-eod": [(C, tx_ok), (U, "250 a\r\n250 b\r\n354 go\r\n"), (C, "x\r"), (C, "\n."), (C, "\r"), (C, "\nQUIT\r\n"), (U, "250 q\r\n221 bye\r\n")],
}
for name, ev in raw_sessions.items():
    seed("fuzz_smtp_sender_filter", "raw-" + name, bytes([0]) + chunks(ev))
    seed("fuzz_smtp_sender_filter", "raw-" + name + "-bytewise", bytes([0]) + chunks(ev, split=1))
model_sessions = {
    "allowed": tx_ok + body + "QUIT\r\n",
    "refused": "MAIL FROM:<boss@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nRSET\r\nMAIL FROM:<x@fabrikam.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nhi\r\n.\r\n",
    "pipelined": "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nline\r\n.\r\nMAIL FROM:<evil@x.y>\r\nRSET\r\nQUIT\r\n",
    "bdat": "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nBDAT 27\r\nMAIL FROM:<evil@evil.com>\r\nBDAT 0 LAST\r\n",
    "empty-body": "MAIL FROM:<a@fabrikam.com>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n.\r\nQUIT\r\n",
    "dot-lines": "MAIL FROM:<a@fabrikam.com>\r\nDATA\r\n.\r\n..\r\n.x\r\n\r\n.\r\n",
    "case-and-params": "mail from:<SCANNER@contoso.COM> BODY=8BITMIME SMTPUTF8\r\nMail From: <x@FABRIKAM.COM>\r\n",
    "null-sender": "MAIL FROM:<>\r\nNOOP\r\n",
}
for name, text in model_sessions.items():
    for mode in (1, 3, 5, 7):
        seed("fuzz_smtp_sender_filter", f"model{mode}-{name}", bytes([mode, 0]) + chunks([(C, text)], split=13))
seed("fuzz_smtp_sender_filter", "model1-data-refused", bytes([1, 0xff]) + chunks([(C, model_sessions["pipelined"])]))

# ---------------------------------------------------------------- SASL / base64
sasl = {
    "plain": plain("scanner@contoso.com", "s3cret"),
    "plain-authzid": plain("u", "p", "shared@contoso.com"),
    "plain-empty-pass": b64("\0user\0"),
    "plain-three-nuls": b64("a\0b\0c\0d"),
    "plain-one-nul": b64("a\0b"),
    "plain-long": plain("u" * 1024, "p" * 1025),
    "padding-1": "YQ==", "padding-2": "YWI=", "no-padding": "YWJj",
    "bad-padding": "Y===", "pad-middle": "YQ==YQ==", "bad-length": "YWJ", "bad-char": "YW-j",
    "non-canonical": "YR==", "empty": "", "equals": "=",
    "binary": bytes(range(256)),
}
for name, v in sasl.items():
    seed("fuzz_sasl", name, v if isinstance(v, bytes) else v.encode())

# ---------------------------------------------------------------- token response
def token_input(status, body, flags=1, retry=0, request_id=None):
    head = bytes([flags | (4 if request_id else 0), status >> 8, status & 0xff, retry])
    if request_id:
        head += bytes([len(request_id)]) + request_id.encode()
    return head + (body.encode() if isinstance(body, str) else body)

ok_body = {"token_type": "Bearer", "scope": "https://outlook.office365.com/.default", "expires_in": 3599,
           "ext_expires_in": 3599, "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.sig"}
tokens = {
    "ok": token_input(200, json.dumps(ok_body)),
    "ok-refresh": token_input(200, json.dumps(dict(ok_body, refresh_token="0.AAAA-refresh", expires_in="3600"))),
    "ok-lowercase-bearer": token_input(200, json.dumps(dict(ok_body, token_type="bearer"))),
    "ok-no-expiry": token_input(200, json.dumps({k: v for k, v in ok_body.items() if k != "expires_in"})),
    "ok-huge-expiry": token_input(200, json.dumps(dict(ok_body, expires_in=10 ** 20))),
    "ok-negative-expiry": token_input(200, json.dumps(dict(ok_body, expires_in=-5))),
    "ok-float-expiry": token_input(200, json.dumps(dict(ok_body, expires_in=1.5))),
    "ok-mac": token_input(200, json.dumps(dict(ok_body, token_type="mac"))),
    "ok-empty-token": token_input(200, json.dumps(dict(ok_body, access_token=""))),
    "200-error": token_input(200, json.dumps({"error": "invalid_grant", "error_description": "AADSTS50126: bad"})),
    "invalid-client": token_input(401, json.dumps({
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: 1\r\nCorrelation ID: 2",
        "error_codes": [7000215], "timestamp": "2024-01-01 00:00:00Z",
        "trace_id": "0a1b2c3d-0000-1111-2222-333344445555", "correlation_id": "aaaa-bbbb"}), request_id="req-123"),
    "consent": token_input(400, json.dumps({"error": "invalid_grant", "error_description": "AADSTS65001: The user or administrator has not consented",
                                            "error_codes": [65001]})),
    "mfa": token_input(400, json.dumps({"error": "interaction_required", "error_codes": [50076], "suberror": "basic_action"})),
    "bad-scope": token_input(400, json.dumps({"error": "invalid_scope", "error_codes": ["x", 70011]})),
    "unknown-tenant": token_input(400, json.dumps({"error": "invalid_request", "error_codes": [90002]})),
    "throttled": token_input(429, "", flags=3, retry=4),
    "unavailable": token_input(503, "<html><body>Service Unavailable</body></html>", flags=3, retry=1, request_id="abc-def"),
    "gateway-json-array": token_input(502, "[1,2,3]"),
    "control-chars": token_input(400, json.dumps({"error": "bad\u0000word\u007f", "error_description": "line\u0001one\u001b[31m",
                                                  "trace_id": "\u0000<script>"})),
    "long-description": token_input(400, json.dumps({"error": "x", "error_description": "\u00e9" * 300})),
    "status-zero": token_input(0, "{}"),
    "status-999": token_input(999, "{}"),
    "not-json": token_input(200, "access_token=abc&token_type=Bearer"),
    "deep-json": token_input(200, "[" * 200 + "]" * 200),
    "timeout": bytes([0, 0, 0, 0]) + b"timeout",
    "cancelled": bytes([0, 0, 0, 0]) + b"cancelled",
    "network": bytes([0, 0, 0, 0]) + b"connect: Connection refused",
}
for name, v in tokens.items():
    seed("fuzz_token_response", name, v)

# ---------------------------------------------------------------- config
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
valid = f"""[proxy]
state_dir = "/var/lib/xoauth-proxy"
log_format = "json"
log_level = "info"
login_timeout = 20
idle_timeout = 3600

[[provider]]
name = "contoso"
tenant = "11111111-2222-3333-4444-555555555555"
client_id = "66666666-7777-8888-9999-000000000000"
client_secret = "inline-secret-value"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
tls = "none"
upstream = "outlook.office365.com:993"
upstream_tls = "implicit"

[[listener]]
protocol = "smtp"
listen = "[::1]:1587"
tls = "none"
upstream = "smtp.office365.com:587"
ehlo_name = "proxy.contoso.com"
anonymous_account = "printer@contoso.com"
allow_from = ["10.0.0.0/8", "::1/128"]

[[listener]]
protocol = "pop3"
listen = "127.0.0.1:1110"
upstream = "outlook.office365.com:995"

[[account]]
login = "scanner@contoso.com"
provider = "contoso"
flow = "client_credentials"
mailbox = "shared@contoso.com"
password_hash = "{HASH}"
allowed_from = ["scanner@contoso.com", "*@contoso.com"]

[[account]]
login = "*@contoso.com"
provider = "contoso"
password_hash = "{HASH}"
"""
configs = {
    "valid": valid,
    "valid-env": valid.replace('"inline-secret-value"', '"${XO_FUZZ_UNSET_VARIABLE}"'),
    "secret-file": valid.replace('client_secret = "inline-secret-value"', 'client_secret_file = "secret.txt"'),
    "both-secrets": valid.replace('client_secret = "inline-secret-value"', 'client_secret = "a"\nclient_secret_file = "b"'),
    "tls-files": valid.replace('tls = "none"\nupstream = "outlook.office365.com:993"',
                               'tls = "implicit"\ncert_file = "tls/cert.pem"\nkey_file = "/etc/xoauth-proxy/key.pem"\nupstream = "outlook.office365.com:993"'),
    "typos": valid.replace("listen =", "lisen =", 1).replace("protocol = \"pop3\"", "protocol = \"pop\""),
    "types": valid.replace("login_timeout = 20", "login_timeout = \"20\"").replace('tls = "none"', "tls = true", 1),
    "bad-values": valid.replace("127.0.0.1:1143", "127.0.0.1:99999").replace("[::1]:1587", "[::1:1587")
                       .replace("10.0.0.0/8", "10.0.0.0/33").replace(HASH, "$argon2id$broken", 1),
    "duplicates": valid + valid[valid.index("[[account]]"):],
    "unknown-provider": valid.replace('provider = "contoso"', 'provider = "fabrikam"', 1),
    "missing-sections": "[proxy]\nlog_level = \"debug\"\n",
    "syntax-error": "[[listener]\nprotocol = \"imap\n",
    "syntax-unicode": "a = \"\\uD800\"\nb = 'x\ny'\n",
    "inline-tables": "[[provider]]\nname = { x = 1 }\nscopes = [1, \"a\", [2]]\n[[listener]]\nprotocol = [\"imap\"]\n[[account]]\n",
    "dotted-keys": "proxy.log_level = \"info\"\nlistener = [{ protocol = \"imap\", listen = \"127.0.0.1:1\", upstream = \"h:1\" }]\naccount = []\n",
    "empty": "",
}
for name, text in configs.items():
    seed("fuzz_config", name, text.encode())


def main():
    for target, seeds in corpus.items():
        d = ROOT / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


# ---------------------------------------------------------------- fixed findings (regressions)
# Inputs that break an invariant until the bug is fixed. fuzz_replay does not run crashes/; once
# fixed, move the file into corpus/<target>/ (drop the "known-" prefix) so it stays fixed.
CRASHES = pathlib.Path(__file__).resolve().parent / "crashes"
known = {}


def crash(target, name, data):
    # Every finding so far is fixed: it is replayed as a seed so it stays fixed. A new, unfixed
    # finding goes to crashes/ with known(...) until its fix lands.
    seed(target, "regression-" + name, data)


def known_finding(target, name, data):
    known.setdefault(target, {})[name] = data


EVIL = "MAIL FROM:<evil@evil.com>\r\n"  # 27 bytes
crash("fuzz_smtp_sender_filter", "bdat-trailing-junk",
      bytes([1, 0]) + chunks([(C, "MAIL FROM:<scanner@contoso.com>\r\nBDAT 27 X\r\n" + EVIL)]))
crash("fuzz_smtp_sender_filter", "bdat-colon",
      bytes([1, 0]) + chunks([(C, "BDAT:27\r\n" + EVIL)]))
crash("fuzz_smtp_sender_filter", "bdat-size-suffix",
      bytes([1, 0]) + chunks([(C, "BDAT 27x\r\n" + EVIL)]))
crash("fuzz_smtp_sender_filter", "tab-after-verb",
      bytes([5, 0]) + chunks([(C, "MAIL\tFROM:<evil@evil.com>\r\n")]))
crash("fuzz_smtp_sender_filter", "leading-space",
      bytes([5, 0]) + chunks([(C, " MAIL FROM:<evil@evil.com>\r\n")]))
crash("fuzz_smtp_sender_filter", "bare-lf-end-of-data",
      bytes([3, 0]) + chunks([(C, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n"
                                  "x\n.\n" + EVIL + "RCPT TO:<a@b.c>\r\nDATA\r\nbody\r\n.\r\n")]))
# BDAT in a form a strict server refuses (then reads the chunk as commands): only the exact
# "BDAT" SP size [SP "LAST"] may be forwarded as a chunk.
crash("fuzz_smtp_sender_filter", "bdat-tab", bytes([1, 0]) + chunks([(C, "BDAT\t27\r\n" + EVIL)]))
crash("fuzz_smtp_sender_filter", "bdat-two-spaces", bytes([1, 0]) + chunks([(C, "BDAT  27\r\n" + EVIL)]))
crash("fuzz_smtp_sender_filter", "bdat-trailing-space", bytes([1, 0]) + chunks([(C, "BDAT 27 \r\n" + EVIL)]))
# White space as Postfix's ISSPACE sees it: also VT, FF and CR.
crash("fuzz_smtp_sender_filter", "ff-before-verb", bytes([5, 0]) + chunks([(C, "\x0cMAIL FROM:<evil@evil.com>\r\n")]))
crash("fuzz_smtp_sender_filter", "vt-after-verb", bytes([5, 0]) + chunks([(C, "MAIL\x0bFROM:<evil@evil.com>\r\n")]))
# A "." at a line start that is the last byte read in DATA (the filter must wait for the next one).
crash("fuzz_smtp_sender_filter", "data-dot-at-end-of-read",
      bytes([1, 0]) + chunks([(C, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nhello\r\n.")]))
# "DATA" ended by a bare LF: the body still starts at a line start (found by a 10-second run on
# 2026-11-28; the fuzzer's own input is kept as corpus/.../found-2026-11-28-bare-lf-between-commands).
crash("fuzz_smtp_sender_filter", "bare-lf-data-line-start",
      bytes([1, 0]) + chunks([(C, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\nDATA\n.\r\n" + EVIL)]))
crash("fuzz_imap_flow", "ok-before-continuation",
      flow(0, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
               (U, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nxo2 OK done\r\n"), (U, "xo3 OK no token needed\r\n")]))
crash("fuzz_imap_flow", "no-before-continuation",
      flow(0, [(C, "a1 LOGIN u p\r\n"), (U, "* OK ready\r\n"),
               (U, "* CAPABILITY IMAP4rev1\r\nxo2 OK done\r\n"), (U, "xo3 NO [CANNOT] mechanism not supported\r\n")]))
crash("fuzz_smtp_flow", "235-before-334",
      flow(S | LONGTOKEN, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"), (U, SMTP_OK)]))
crash("fuzz_smtp_flow", "535-before-334",
      flow(S | LONGTOKEN, SMTP_UP + [(C, "EHLO x\r\nAUTH PLAIN " + plain("u", "p") + "\r\n"),
                                     (U, "504 5.7.4 Unrecognized authentication type\r\n")]))
crash("fuzz_imap_lexer", "literal-plus-then-sync",
      bytes([0]) + chunks([(C, "a1 LOGIN {4+}\r\nuser {4}\r\n")]))
crash("fuzz_smtp_reply_parser", "cr-then-lf-at-max-line",
      bytes([0x80 | 0x40 | 8]) + chunks([(U, "250 " + "x" * 12 + "\r\n")]))
crash("fuzz_config", "toml-unreachable-u+fef7", "\ufef7".encode())


def write_known():
    for target, items in known.items():
        d = CRASHES / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("known-*"):
            old.unlink()
        for name, data in items.items():
            (d / f"known-{name}").write_bytes(data)
        print(f"crashes/{target}: {len(items)} known findings")


if __name__ == "__main__":
    main()
    write_known()
