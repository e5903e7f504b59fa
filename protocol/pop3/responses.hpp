#pragma once
// Canned POP3 texts, shared by the flow and its tests. Single lines are given without their CRLF;
// multi-line responses (RFC 1939 §3) are complete, dot line included.
#include <string_view>

namespace xo::protocol::pop3::responses {

// No "<...@...>" timestamp: APOP is not offered (RFC 1939 §7).
inline constexpr std::string_view greeting = "+OK xoauth-proxy POP3 ready";

// CAPA (RFC 2449 §5). STLS (RFC 2595 §4) goes between head and tail when it is on offer.
inline constexpr std::string_view capa_head =
    "+OK Capability list follows\r\n"
    "USER\r\n"
    "SASL PLAIN LOGIN\r\n"
    "RESP-CODES\r\n"
    "AUTH-RESP-CODE\r\n"
    "PIPELINING\r\n";
inline constexpr std::string_view capa_stls = "STLS\r\n";
inline constexpr std::string_view capa_tail = "TOP\r\nUIDL\r\n.\r\n";
// Bare "AUTH": a mechanism probe some clients send (not in RFC 5034, answered like CAPA's SASL).
inline constexpr std::string_view auth_list =
    "+OK Supported mechanisms follow\r\nPLAIN\r\nLOGIN\r\n.\r\n";

inline constexpr std::string_view user_ok = "+OK Send your password";
inline constexpr std::string_view user_syntax = "-ERR USER expects a user name";
inline constexpr std::string_view pass_syntax = "-ERR PASS expects a password";
inline constexpr std::string_view user_first = "-ERR USER first";
inline constexpr std::string_view auth_syntax =
    "-ERR AUTH expects a mechanism and an optional initial response";
inline constexpr std::string_view unsupported_mechanism = "-ERR Unsupported mechanism";
inline constexpr std::string_view auth_cancelled = "-ERR Authentication cancelled";
inline constexpr std::string_view invalid_base64 = "-ERR Invalid base64 data";
inline constexpr std::string_view apop_refused = "-ERR APOP not supported";
inline constexpr std::string_view stls_begin = "+OK Begin TLS negotiation";
inline constexpr std::string_view stls_unavailable = "-ERR STLS not available";
inline constexpr std::string_view stls_active = "-ERR TLS is already active";
inline constexpr std::string_view stls_syntax = "-ERR STLS takes no arguments";
inline constexpr std::string_view stls_pipelined = "-ERR Data pipelined after STLS";
inline constexpr std::string_view bye = "+OK Bye";
inline constexpr std::string_view not_authenticated = "-ERR Not authenticated";
inline constexpr std::string_view line_too_long = "-ERR Line too long";
inline constexpr std::string_view too_many_bad_commands = "-ERR Too many invalid commands";

// SASL continuations (RFC 5034 §4).
inline constexpr std::string_view sasl_empty = "+ \r\n";
inline constexpr std::string_view sasl_username = "+ VXNlcm5hbWU6\r\n";  // "Username:"
inline constexpr std::string_view sasl_password = "+ UGFzc3dvcmQ6\r\n";  // "Password:"

// Login results, with RFC 2449 §8 / RFC 3206 response codes.
inline constexpr std::string_view auth_failed = "-ERR [AUTH] Authentication failed";
inline constexpr std::string_view auth_temporary =
    "-ERR [SYS/TEMP] Temporary authentication failure, try again later";
inline constexpr std::string_view auth_contact_admin =
    "-ERR [SYS/PERM] Login not possible, contact your administrator";
inline constexpr std::string_view upstream_unavailable =
    "-ERR [SYS/TEMP] Mail server unavailable, try again later";
inline constexpr std::string_view upstream_refused =
    "-ERR [AUTH] The mail server refused the login";
// For the admin log when the upstream refuses a token (Exchange Online, MS-XOAUTH2).
inline constexpr std::string_view upstream_refused_hint =
    "check that POP3 is enabled for the mailbox (Set-CASMailbox -PopEnabled $true), the "
    "POP.AccessAsApp (app-only) or POP.AccessAsUser.All (delegated) permission and admin consent, "
    "and for app-only access New-ServicePrincipal and Add-MailboxPermission -AccessRights "
    "FullAccess";
inline constexpr std::string_view too_many_failures =
    "-ERR [AUTH] Too many authentication failures";

// The proxy's own upstream commands (RFC 2595 §4, RFC 5034 §4). XOAUTH2 never goes as an
// initial response: POP3 command lines are limited to 255 octets (RFC 2449 §4).
inline constexpr std::string_view up_stls = "STLS\r\n";
inline constexpr std::string_view up_auth = "AUTH XOAUTH2\r\n";

}  // namespace xo::protocol::pop3::responses
