#pragma once
// Canned SMTP replies (RFC 5321, RFC 4954 §6, RFC 3207, RFC 3463 enhanced codes).
#include <string_view>

namespace xo::protocol::smtp::responses {

inline constexpr std::string_view auth_ok = "235 2.7.0 Authentication successful\r\n";
inline constexpr std::string_view auth_failed = "535 5.7.8 Authentication credentials invalid\r\n";
inline constexpr std::string_view auth_temporary =
    "454 4.7.0 Temporary authentication failure, try again later\r\n";
inline constexpr std::string_view auth_contact_admin =
    "454 4.7.0 Login not possible at the moment, the administrator has been notified\r\n";
inline constexpr std::string_view upstream_unavailable =
    "454 4.7.0 Mail server unavailable, try again later\r\n";
inline constexpr std::string_view greeting_unavailable =
    "421 4.3.2 Mail server unavailable, try again later\r\n";
inline constexpr std::string_view auth_required = "530 5.7.0 Authentication required\r\n";
inline constexpr std::string_view auth_cancelled = "501 5.7.0 Authentication cancelled\r\n";
inline constexpr std::string_view bad_base64 = "501 5.5.2 Cannot decode base64 response\r\n";
inline constexpr std::string_view bad_mechanism = "504 5.5.4 Unrecognized authentication type\r\n";
inline constexpr std::string_view already_authenticated = "503 5.5.1 Already authenticated\r\n";
inline constexpr std::string_view tls_unavailable = "454 4.7.0 TLS not available\r\n";
inline constexpr std::string_view tls_ready = "220 2.0.0 Ready to start TLS\r\n";
inline constexpr std::string_view tls_pipelined =
    "554 5.5.1 Error: command pipelining after STARTTLS is not allowed\r\n";
inline constexpr std::string_view ok = "250 2.0.0 OK\r\n";
inline constexpr std::string_view bye = "221 2.0.0 Bye\r\n";
inline constexpr std::string_view help =
    "214 2.0.0 xoauth-proxy: EHLO, AUTH PLAIN or AUTH LOGIN, then mail as usual\r\n";
inline constexpr std::string_view unknown_command = "502 5.5.2 Command not recognized\r\n";
inline constexpr std::string_view not_implemented = "502 5.5.1 Command not implemented\r\n";
inline constexpr std::string_view syntax_error = "501 5.5.4 Syntax error in parameters\r\n";
inline constexpr std::string_view line_too_long = "500 5.5.6 Line too long\r\n";
inline constexpr std::string_view too_many_errors = "421 4.7.0 Too many errors, closing connection\r\n";
inline constexpr std::string_view too_many_failures =
    "421 4.7.0 Too many authentication failures, closing connection\r\n";
inline constexpr std::string_view username_prompt = "334 VXNlcm5hbWU6\r\n";  // "Username:"
inline constexpr std::string_view password_prompt = "334 UGFzc3dvcmQ6\r\n";  // "Password:"
inline constexpr std::string_view empty_prompt = "334 \r\n";

// Extensions relayed from the upstream EHLO (they survive a byte relay); everything else is
// either the proxy's own (AUTH, STARTTLS) or meaningless to a client of the proxy.
inline constexpr std::string_view relayed_extensions[] = {
    "SIZE", "8BITMIME", "PIPELINING", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES", "DSN",
    "BINARYMIME"};

}  // namespace xo::protocol::smtp::responses
