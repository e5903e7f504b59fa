// xoauth-proxy: wiring only. Commands: run, check, authorize, hash-password.
#include "app/authorize.hpp"
#include "app/terminal.hpp"
#include "app/doctor.hpp"
#include "auth/client_auth.hpp"
#include "auth/password_hash.hpp"
#include "auth/token_store.hpp"
#include "common/log.hpp"
#include "config/loader.hpp"
#include "proxy/server.hpp"

#include <CLI/CLI.hpp>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

std::string default_config_path() {
  const char* env = std::getenv("XOAUTH_PROXY_CONFIG");
  return env && *env ? env : "";
}

void print_diagnostics(const xo::config::load_result& r, std::FILE* out) {
  for (const auto& d : r.errors) std::fprintf(out, "%s\n", d.to_string().c_str());
  for (const auto& d : r.warnings) std::fprintf(out, "warning: %s\n", d.to_string().c_str());
}

int cmd_check(const std::string& path) {
  auto r = xo::config::load_file(path);
  print_diagnostics(r, stdout);
  if (!r.ok()) {
    std::printf("%s: %zu error(s); configuration is invalid\n", path.c_str(), r.errors.size());
    return 1;
  }
  std::printf("%s", xo::config::describe(r.cfg).c_str());
  // What to register in Azure, per provider that has delegated accounts.
  const auto& px = r.cfg.proxy;
  std::string redirect = px.public_base_url;
  if (redirect.empty() && px.admin_address)
    redirect = "http://localhost:" + std::to_string(px.admin_address->port);
  int problems = 0;
  for (const auto& p : r.cfg.providers) {
    try {
      xo::auth::client_auth client{p};  // reads and checks a certificate credential
      (void)client;
    } catch (const std::exception& e) {
      std::printf("provider %s: %s\n", p.name.c_str(), e.what());
      ++problems;
    }
    bool delegated = false;
    for (const auto& a : r.cfg.accounts)
      delegated = delegated || (a.provider == p.name && a.flow ==
                                                           xo::config::flow_kind::authorization_code);
    if (delegated && !redirect.empty())
      std::printf("provider %s: register the redirect URI %s/sso/oauth_callback (platform "
                  "\"Web\") in its Azure app registration\n",
                  p.name.c_str(), redirect.c_str());
  }
  if (!px.token_key_file.empty()) {
    std::string why;
    if (!xo::auth::token_store::read_key_file(px.token_key_file, why)) {
      std::printf("token_key_file: %s\n", why.c_str());
      ++problems;
    }
  }
  if (problems) {
    std::printf("%s: %d problem(s); configuration is invalid\n", path.c_str(), problems);
    return 1;
  }
  std::printf("%s: configuration is valid\n", path.c_str());
  return 0;
}

int cmd_run(const std::string& path) {
  auto r = xo::config::load_file(path);
  if (!r.ok()) {
    print_diagnostics(r, stderr);
    std::fprintf(stderr, "%s: configuration is invalid, not starting\n", path.c_str());
    return 2;
  }
  const auto& cfg = r.cfg;
  xo::init_logging(cfg.proxy.format == xo::config::log_format::json ? xo::log_style::json
                                                                     : xo::log_style::text,
                   cfg.proxy.log_level);
  for (const auto& w : r.warnings) xo::logger("config")->warn("{}", w.to_string());
  xo::logger("proxy")->info("xoauth-proxy {} starting with {}", XOAUTH_VERSION, path);
  try {
    return xo::proxy::run_server(std::move(r.cfg));
  } catch (const std::exception& e) {
    xo::logger("proxy")->critical("cannot start: {}", e.what());
    return 1;
  }
}

int cmd_hash_password() {
  auto pw = xo::app::read_hidden_line(STDIN_FILENO, STDERR_FILENO, "Password: ");
  if (!pw) {
    std::fprintf(stderr, "hash-password: no password given on standard input\n");
    return 1;
  }
  std::printf("%s\n", xo::auth::hash_password(*pw).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  // TLS connections are driven by OpenSSL on the socket itself (proxy/mail_stream), whose writes
  // do not pass MSG_NOSIGNAL: a peer that went away must be an EPIPE error, not a dead process.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"xoauth-proxy: lets password-only IMAP/SMTP/POP3 clients reach mailboxes that "
               "accept only OAuth2 (Microsoft Exchange Online)"};
  app.set_version_flag("--version", std::string{"xoauth-proxy "} + XOAUTH_VERSION);
  app.require_subcommand(1);
  std::string config_path = default_config_path();
  auto add_config = [&](CLI::App* sub) {
    auto* opt = sub->add_option("-c,--config", config_path,
                                "configuration file (default: $XOAUTH_PROXY_CONFIG)");
    if (config_path.empty()) opt->required();
  };
  auto* run = app.add_subcommand("run", "run the proxy");
  add_config(run);
  auto* check = app.add_subcommand("check", "validate a configuration and print what it sets up; "
                                            "exit 0 when valid, 1 when not");
  add_config(check);
  xo::app::authorize_options auth_opt;
  auto* authorize = app.add_subcommand(
      "authorize",
      "authorize a delegated account once (authorization code in a browser, or --device): "
      "through the running proxy, or on its own when the proxy is stopped; exit 0 once "
      "authorized");
  add_config(authorize);
  authorize->add_option("account", auth_opt.account, "the [[account]] login to authorize")
      ->required();
  authorize->add_flag("--device", auth_opt.device,
                      "sign in with a device code (for a browser on another device)");
  authorize->add_option("--timeout", auth_opt.timeout_seconds,
                        "give up after this many seconds (default 900)")
      ->check(CLI::Range(1, 86400));
  authorize->add_option("--password-file", auth_opt.password_file,
                        "file holding the account's local password, when the token store is "
                        "keyed by it (no token_key_file) and the proxy is stopped");
  xo::app::doctor_options doctor_opt;
  auto* doctor = app.add_subcommand(
      "doctor",
      "check the configuration, the app registration, each account's token and a real upstream "
      "login per protocol, and say how to fix what fails; exit 0 when everything passed");
  add_config(doctor);
  doctor->add_option("account", doctor_opt.accounts, "logins to check (default: every [[account]])");
  doctor->add_flag("--json", doctor_opt.json, "print one JSON object for scripts");
  auto* hash = app.add_subcommand(
      "hash-password", "read a password from standard input and print its argon2id hash for "
                       "an [[account]] password_hash");
  CLI11_PARSE(app, argc, argv);
  if (*run) return cmd_run(config_path);
  if (*check) return cmd_check(config_path);
  if (*authorize) {
    auth_opt.config_path = config_path;
    return xo::app::cmd_authorize(auth_opt);
  }
  if (*doctor) {
    doctor_opt.config_path = config_path;
    return xo::app::cmd_doctor(doctor_opt);
  }
  if (*hash) return cmd_hash_password();
  return 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "xoauth-proxy: %s\n", e.what());
  return 1;
}
