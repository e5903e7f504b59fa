#!/usr/bin/env python3
"""Bounded soak, short form (issue 8): about 1,800 IMAP/POP3/SMTP sessions through one proxy in a
warm-up and three rounds (logins, SELECT + FETCH, IDLE, POP3 RETR, SMTP submission, STARTTLS and
implicit TLS, abrupt cuts before and after login and in the middle of transfers, wrong passwords
and unknown logins), then: the proxy's open descriptors are back exactly to the baseline taken
after the warm-up, and its RSS grew by less than soak.RSS_BOUND_KIB. The load engine and the
verdict are in soak.py; scripts/soak.sh runs the long form (5 minutes, its own test bed).

No timing assertion: the rounds are counted in sessions, and every wait is a bounded poll. Takes
about 60-90 s on 2 cores (the proxy's half-close wait, up to 60 s, for sessions cut after login
is waited out once, at the end). Keeps within the shared test bed's Dovecot/Postfix process limits
(concurrency CONCURRENCY, lingering cuts only in part of round 1).

    XOAUTH_PROXY_BIN=build/xoauth-proxy XOAUTH_TESTBED_DIR=DIR python3 tests/integration/test_soak.py -v
"""
from __future__ import annotations

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import soak  # noqa: E402

CONCURRENCY = 80
WARMUP_SESSIONS = 300
ROUND_SESSIONS = 500
LINGER_SESSIONS = 250   # of round 1: the only sessions that may leave the proxy in its half-close wait
ROUND_TIME_CAP = 600    # seconds: a safety cap on a round, far above its usual 15-20 s


class SoakShort(unittest.TestCase):
    def test_fds_and_rss_back_to_baseline_after_rounds(self):
        t0 = time.monotonic()
        with soak.Soak(CONCURRENCY) as s:
            w = s.round("warm-up", ROUND_TIME_CAP, max_sessions=WARMUP_SESSIONS, linger_sessions=0, idle=True)
            self.assertEqual(w["active"], 0, "the proxy did not go idle after the warm-up")
            s.round("1", ROUND_TIME_CAP, max_sessions=ROUND_SESSIONS, linger_sessions=LINGER_SESSIONS, idle=False)
            s.round("2", ROUND_TIME_CAP, max_sessions=ROUND_SESSIONS, linger_sessions=0, idle=False)
            s.round("3", ROUND_TIME_CAP, max_sessions=ROUND_SESSIONS, linger_sessions=0, idle=False)
            final = s.final()
            v, text = soak.report(s)
            s.keep_workdir = s.keep_workdir or not v["pass"]
        print(f"\n{text}\n" + "\n".join(s.cleanup_notes)
              + f"\n[soak: {v['sessions']} sessions in {time.monotonic() - t0:.0f}s]", file=sys.stderr)

        errors = [e for r in s.rows for e in r["error_texts"]]
        self.assertEqual(v["errors"], 0, "unexpected session errors:\n" + "\n".join(errors[:20]))
        self.assertEqual(v["locked_out"], 0, "a correct password was refused as locked out")
        self.assertEqual(v["sessions"], WARMUP_SESSIONS + 3 * ROUND_SESSIONS)
        base = s.baseline
        for r in s.rows[1:]:
            self.assertEqual(r["fds"], base["fds"] + 2 * r["active"],
                             f"after round {r['label']}: {r['fds']} descriptors with {r['active']} sessions "
                             f"still active, baseline {base['fds']}\n{text}")
        self.assertEqual(final["active"], 0, f"sessions still active at the end\n{text}")
        self.assertEqual(final["fds"], base["fds"], f"descriptors not back to the baseline\n{text}")
        if not s.sanitized:  # under AddressSanitizer RSS says nothing; LeakSanitizer reports at exit
            self.assertLessEqual(final["rss_kib"] - base["rss_kib"], soak.RSS_BOUND_KIB,
                                 f"RSS grew by more than {soak.RSS_BOUND_KIB} KiB after the warm-up\n{text}")
        self.assertTrue(v["pass"], text)


if __name__ == "__main__":
    harness.testbed_info()  # attach to (or start) the test bed before the test's own timing
    unittest.main()
