#pragma once
// Canned IMAP texts, shared by the flow and its tests.
#include <string_view>

namespace xo::protocol::imap::responses {

inline constexpr std::string_view capabilities = "IMAP4rev1 SASL-IR LITERAL+ ID IDLE AUTH=PLAIN AUTH=LOGIN";
inline constexpr std::string_view continue_literal = "+ Ready for literal data\r\n";
inline constexpr std::string_view auth_failed = "NO [AUTHENTICATIONFAILED] Authentication failed";
inline constexpr std::string_view auth_temporary =
    "NO [UNAVAILABLE] Temporary authentication failure, try again later";
inline constexpr std::string_view auth_contact_admin =
    "NO [CONTACTADMIN] Login is not possible at the moment, contact your administrator";
inline constexpr std::string_view upstream_unavailable =
    "NO [UNAVAILABLE] Mail server unavailable, try again later";
inline constexpr std::string_view upstream_refused =
    "NO [AUTHORIZATIONFAILED] The mail server refused the login";
inline constexpr std::string_view sasl_username = "+ VXNlcm5hbWU6\r\n";  // "Username:"
inline constexpr std::string_view sasl_password = "+ UGFzc3dvcmQ6\r\n";  // "Password:"
inline constexpr std::string_view sasl_empty = "+ \r\n";
// Private tags for the proxy's own upstream commands; never seen by the client.
inline constexpr std::string_view tag_starttls = "xo1";
inline constexpr std::string_view tag_capability = "xo2";
inline constexpr std::string_view tag_authenticate = "xo3";

}  // namespace xo::protocol::imap::responses
