#pragma once
// The relay after login: bytes both ways, untouched, until both directions have ended.
// When one side stops sending, the other side's sending direction is shut down (half-close, plain
// TCP only). When the upstream stops, the session is over; when the client stops, relaying toward
// it goes on until the upstream has been quiet for half_close_quiet (at most half_close_grace). One idle deadline covers both
// directions (IMAP IDLE may be silent for 29 minutes: RFC 3501 §5.4 asks for >= 30).
#include "proxy/mail_stream.hpp"

#include <cstdint>
#include <vector>

namespace xo::proxy {

struct relay_result {
  std::uint64_t client_to_upstream = 0;
  std::uint64_t upstream_to_client = 0;
  std::string end;  // "client closed", "upstream closed", "idle timeout", ...
};

struct relay_options {
  std::chrono::seconds idle_timeout{1800};
  std::chrono::seconds half_close_grace{60};
  std::chrono::seconds half_close_quiet{5};
};

awaitable<relay_result> relay(mail_stream& client, mail_stream& upstream,
                              std::string client_leftover, std::string upstream_leftover,
                              relay_options opt);

// The SMTP relay with sender safety: every MAIL FROM checked against `allowed_senders`
// (protocol/smtp/sender_filter.hpp). Slower than relay(): used only for accounts with
// allowed_from. refused_senders counts the MAIL commands it turned away.
struct filtered_result : relay_result {
  std::uint64_t refused_senders = 0;
};
awaitable<filtered_result> relay_smtp_filtered(mail_stream& client, mail_stream& upstream,
                                               std::string client_leftover,
                                               std::string upstream_leftover,
                                               std::vector<std::string> allowed_senders,
                                               relay_options opt);

}  // namespace xo::proxy
